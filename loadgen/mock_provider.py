"""A real HTTP mock inference provider, for tests, the demo and benchmarks.

One server plays any number of providers, told apart by the first path segment:

    POST /{provider}/v1/chat/completions   OpenAI chat completions
    POST /{provider}/v1/messages           Anthropic Messages
    POST /_mock/control                    script a provider's faults and latency
    GET  /_mock/log   GET /_mock/stats   POST /_mock/reset   GET /_mock/health

Everything is deterministic: usage and text follow from the prompt, jitter comes from a
seeded RNG per provider, and faults come either from the model name (`fault-429`,
`slow-250`, ...) or from `/_mock/control` (`every` N-th request of a provider). Each
served request is logged once, with the id the caller sent in `x-pb-request-id`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import signal
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from random import Random
from typing import Annotated, Literal, NamedTuple

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

Api = Literal["openai", "anthropic"]
Fault = Literal["429", "500", "503", "529", "timeout", "malformed", "400", "context", "quota", "huge_body", "huge_usage"]

# --- configuration ------------------------------------------------------------------


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    pass


class ProviderSettings(Base):
    """How one fake provider behaves. In `MockConfig.providers`, a None latency, jitter or
    hang means "use the server-wide value"; the settings a provider runs with (and that
    `/_mock/control` returns) always have them filled in."""

    latency_ms: float | None = None  # mean added latency
    jitter_ms: float | None = None  # uniform +/- around the mean
    hang_ms: int | None = None  # how long a `timeout` fault holds the request
    fault: Fault | None = None
    every: Annotated[int, Meta(ge=1)] = 1  # the fault hits every N-th request
    retry_after_s: Annotated[float, Meta(ge=0)] = 1.0  # sent with 429s
    ratelimit_remaining: int | None = None  # sent as x-ratelimit-remaining-requests


class MockConfig(Base):
    host: str = "127.0.0.1"
    port: int = 8900  # 0 picks a free port; MockServer.url reports the real one
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    hang_ms: int = 120_000
    seed: int = 0
    log_path: str | None = None  # also append the request log here, as JSON lines
    providers: dict[str, ProviderSettings] = {}


class Control(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /_mock/control. Fields left out keep their value; `fault: null` clears
    the fault, a null latency/jitter/hang returns to the server-wide value."""

    provider: str
    fault: Fault | None | UnsetType = UNSET
    every: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    retry_after_s: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    latency_ms: float | None | UnsetType = UNSET
    jitter_ms: float | None | UnsetType = UNSET
    hang_ms: int | None | UnsetType = UNSET
    ratelimit_remaining: int | None | UnsetType = UNSET


# --- introspection ------------------------------------------------------------------


class LogEntry(msgspec.Struct):
    ts: float  # time.time() when the response was ready
    provider: str
    api: Api
    request_id: str
    model: str
    status: int  # 499: the client went away before the answer
    latency_ms: float
    fault: Fault | None


class Stats(msgspec.Struct):
    requests: dict[str, int]
    in_flight: dict[str, int]
    max_in_flight: dict[str, int]
    status_counts: dict[str, dict[int, int]]


# --- request wire formats: only the fields the mock reads -----------------------------


class TextPart(msgspec.Struct):
    type: str = "text"
    text: str = ""  # images, tool calls and the like count as no text


class OpenAIMessage(msgspec.Struct):
    role: str
    content: str | list[TextPart] | None = None


class OpenAIRequest(msgspec.Struct):
    model: str
    messages: list[OpenAIMessage]
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stream: bool = False
    service_tier: str | None = None  # "flex": see loadgen/mock_batches.py


class AnthropicMessage(msgspec.Struct):
    role: str
    content: str | list[TextPart]


class AnthropicRequest(msgspec.Struct):
    model: str
    messages: list[AnthropicMessage]
    max_tokens: Annotated[int, Meta(ge=1)]  # required by the real API, so here too
    system: str | list[TextPart] | None = None
    stream: bool = False


# --- response wire formats ----------------------------------------------------------


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(msgspec.Struct):
    role: str
    content: str


class Choice(msgspec.Struct):
    index: int
    message: ChatMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    object: str = "chat.completion"


class TextBlock(msgspec.Struct):
    text: str
    type: str = "text"


class AnthropicUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int


class AnthropicResponse(msgspec.Struct):
    id: str
    model: str
    content: list[TextBlock]
    stop_reason: str
    usage: AnthropicUsage
    type: str = "message"
    role: str = "assistant"
    stop_sequence: None = None


class OpenAIErrorBody(msgspec.Struct):
    message: str
    type: str
    code: str | None
    param: str | None = None


class OpenAIError(msgspec.Struct):
    error: OpenAIErrorBody


class AnthropicErrorBody(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    error: AnthropicErrorBody
    type: str = "error"


# --- deterministic behaviour --------------------------------------------------------


class _ErrorSpec(NamedTuple):
    openai_status: int
    openai_type: str
    openai_code: str | None
    anthropic_status: int
    anthropic_type: str


# "timeout", "malformed" and "huge_*" are not here: they answer 200, late, unparseable or absurd.
_ERRORS: dict[str, _ErrorSpec] = {
    "429": _ErrorSpec(429, "requests", "rate_limit_exceeded", 429, "rate_limit_error"),
    "500": _ErrorSpec(500, "server_error", None, 500, "api_error"),
    "503": _ErrorSpec(503, "server_error", "service_unavailable", 503, "api_error"),
    "529": _ErrorSpec(529, "server_error", "overloaded", 529, "overloaded_error"),
    "400": _ErrorSpec(400, "invalid_request_error", None, 400, "invalid_request_error"),
    "context": _ErrorSpec(400, "invalid_request_error", "context_length_exceeded", 400, "invalid_request_error"),
    # Anthropic reports a spend limit as a 400, not a 429: it must not be retried.
    "quota": _ErrorSpec(429, "insufficient_quota", "insufficient_quota", 400, "invalid_request_error"),
}

_FAULT_RE = re.compile(r"fault-(429|500|503|529|timeout|malformed|400|context|quota|huge_body|huge_usage)")
# A misbehaving provider: a 200 whose body is too big to pass on, or whose usage is absurd.
HUGE_BODY_BYTES = 1_500_000
HUGE_USAGE_TOKENS = 3_000_000_000
_SLOW_RE = re.compile(r"slow-(\d+)")
_FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 16  # > 200 tokens * 4
_MALFORMED = b'{"id": "mock-malformed", "choices": [{"message": {"content": "cut off mid-'

_encode = msgspec.json.Encoder().encode
_encode_lines = msgspec.json.Encoder().encode_lines
_decode_openai = msgspec.json.Decoder(OpenAIRequest).decode
_decode_anthropic = msgspec.json.Decoder(AnthropicRequest).decode
_decode_control = msgspec.json.Decoder(Control).decode


@functools.lru_cache(maxsize=4096)
def model_directives(model: str) -> tuple[Fault | None, float]:
    """The fault and extra latency (ms) a model name asks for, e.g. `m-fault-503-slow-200`."""
    fault = m.group(1) if (m := _FAULT_RE.search(model)) else None
    slow = float(m.group(1)) if (m := _SLOW_RE.search(model)) else 0.0
    return fault, slow  # type: ignore[return-value]


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


def token_counts(prompt: str, max_tokens: int | None) -> tuple[int, int, bool]:
    """(prompt tokens, completion tokens, capped by max_tokens) for a prompt's text."""
    prompt_tokens = max(1, (len(prompt) + 3) // 4)
    completion = 8 + zlib.crc32(prompt.encode()) % 193  # 8..200
    if max_tokens is not None and completion > max_tokens:
        return prompt_tokens, max_tokens, True
    return prompt_tokens, completion, False


def reply_text(provider: str, model: str, completion_tokens: int) -> str:
    return (f"mock reply from {provider}/{model}: " + _FILLER)[: completion_tokens * 4]


def _error_message(api: Api, fault: str, provider: str, prompt_tokens: int) -> str:
    injected = f"mock fault {fault} injected for provider {provider}"
    if fault == "context":
        limit = prompt_tokens - 1  # just too small, so N agrees with the usage rule
        if api == "anthropic":
            return f"prompt is too long: {prompt_tokens} tokens > {limit} maximum"
        return (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. ({injected})"
        )
    if fault == "quota":
        if api == "anthropic":
            return "enforced_spend_limit_reached: your organization has reached its spend limit"
        return f"You exceeded your current quota, please check your plan and billing details. ({injected})"
    return injected


def _error_body(api: Api, status: int, type_: str, message: str, code: str | None = None) -> web.Response:
    if api == "openai":
        body = _encode(OpenAIError(OpenAIErrorBody(message=message, type=type_, code=code)))
    else:
        body = _encode(AnthropicError(AnthropicErrorBody(type=type_, message=message)))
    return web.Response(status=status, body=body, content_type="application/json")


# --- server state -------------------------------------------------------------------


class _Provider:
    __slots__ = ("settings", "rng", "counter", "requests", "in_flight", "max_in_flight", "status_counts")

    def __init__(self, settings: ProviderSettings, rng: Random) -> None:
        self.settings = settings
        self.rng = rng
        self.counter = 0  # requests since the fault was scripted; drives `every`
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.status_counts: Counter[int] = Counter()


class MockState:
    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        self.providers: dict[str, _Provider] = {}
        self.log: list[LogEntry] = []
        self._unwritten: list[LogEntry] = []  # waiting for the next flush to log_path
        self.flex_hook: Callable[[str, OpenAIRequest | AnthropicRequest], web.Response | None] | None = None  # mock_batches

    def provider(self, name: str) -> _Provider:
        if (p := self.providers.get(name)) is None:
            settings = self._resolve(self.cfg.providers.get(name, ProviderSettings()))
            # A seed per provider keeps each provider's jitter independent of the others' traffic.
            p = self.providers[name] = _Provider(settings, Random(f"{self.cfg.seed}:{name}"))
        return p

    def _resolve(self, s: ProviderSettings) -> ProviderSettings:
        return msgspec.structs.replace(
            s,
            latency_ms=self.cfg.latency_ms if s.latency_ms is None else s.latency_ms,
            jitter_ms=self.cfg.jitter_ms if s.jitter_ms is None else s.jitter_ms,
            hang_ms=self.cfg.hang_ms if s.hang_ms is None else s.hang_ms,
        )

    def control(self, ctl: Control) -> ProviderSettings:
        p = self.provider(ctl.provider)
        changes = {f: v for f in Control.__struct_fields__[1:] if (v := getattr(ctl, f)) is not UNSET}
        p.settings = self._resolve(msgspec.structs.replace(p.settings, **changes))
        p.counter = 0
        return p.settings

    def reset(self) -> None:
        """Forget traffic and scripted faults. Requests in flight across a reset still land in
        the new log, but not in the new counters."""
        self.providers.clear()
        self.log.clear()

    def stats(self) -> Stats:
        ps = self.providers.items()
        return Stats(
            requests={n: p.requests for n, p in ps},
            in_flight={n: p.in_flight for n, p in ps},
            max_in_flight={n: p.max_in_flight for n, p in ps},
            status_counts={n: dict(p.status_counts) for n, p in ps},
        )

    def entries(self, provider: str | None = None) -> list[LogEntry]:
        return [e for e in self.log if provider is None or e.provider == provider]

    def record(self, entry: LogEntry) -> None:
        self.log.append(entry)
        if self.cfg.log_path is not None:
            self._unwritten.append(entry)

    def flush(self) -> bytes:
        """Take the entries not yet written, encoded as JSON lines."""
        batch, self._unwritten = self._unwritten, []
        return _encode_lines(batch) if batch else b""

    async def serve(self, request: web.Request, api: Api) -> web.Response:
        t0 = time.perf_counter()
        name = request.match_info["provider"]
        p = self.provider(name)
        rid = request.headers.get("x-pb-request-id") or uuid.uuid4().hex
        p.requests += 1
        p.in_flight += 1
        p.max_in_flight = max(p.max_in_flight, p.in_flight)
        model, fault, status = "", None, 499  # 499 stays if aiohttp cancels us on disconnect
        try:
            try:
                body = await request.read()
                req = _decode_openai(body) if api == "openai" else _decode_anthropic(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                resp = _error_body(api, 400, "invalid_request_error", f"invalid request body: {e}")
            else:
                model = req.model
                fault, delay_ms = self._plan(p, model)
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                refused = self.flex_hook(name, req) if self.flex_hook else None
                resp = refused or self._respond(api, name, p.settings, req, rid, fault)
            resp.headers["x-request-id"] = rid
            if api == "anthropic":
                resp.headers["request-id"] = rid
            if p.settings.ratelimit_remaining is not None:
                resp.headers["x-ratelimit-remaining-requests"] = str(p.settings.ratelimit_remaining)
            status = resp.status
            return resp
        except Exception:
            status = 500  # a bug here; aiohttp answers 500
            raise
        finally:
            p.in_flight -= 1
            p.status_counts[status] += 1
            latency_ms = (time.perf_counter() - t0) * 1000
            self.record(LogEntry(time.time(), name, api, rid, model, status, latency_ms, fault))

    @staticmethod
    def _plan(p: _Provider, model: str) -> tuple[Fault | None, float]:
        """The fault this request gets (the model name wins over scripted faults) and how
        long (ms) to wait before answering."""
        s = p.settings
        fault, slow_ms = model_directives(model)
        if s.fault is not None:
            p.counter += 1
            if fault is None and p.counter % s.every == 0:
                fault = s.fault
        delay_ms = s.latency_ms + slow_ms  # type: ignore[operator]  # resolved: never None
        if s.jitter_ms:
            delay_ms += p.rng.uniform(-s.jitter_ms, s.jitter_ms)
        if fault == "timeout":
            delay_ms += s.hang_ms  # type: ignore[operator]
        return fault, delay_ms

    @staticmethod
    def _respond(
        api: Api, name: str, s: ProviderSettings, req: OpenAIRequest | AnthropicRequest, rid: str, fault: Fault | None
    ) -> web.Response:
        if req.stream:
            return _error_body(api, 400, "invalid_request_error", "the mock provider does not stream")
        if isinstance(req, OpenAIRequest):
            prompt = "".join(_text(m.content) for m in req.messages)
            cap = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        else:
            prompt = _text(req.system) + "".join(_text(m.content) for m in req.messages)
            cap = req.max_tokens
        prompt_tokens, completion_tokens, capped = token_counts(prompt, cap)

        if fault == "malformed":
            return web.Response(body=_MALFORMED, content_type="application/json")
        if fault is not None and (spec := _ERRORS.get(fault)) is not None:
            message = _error_message(api, fault, name, prompt_tokens)
            if api == "openai":
                resp = _error_body(api, spec.openai_status, spec.openai_type, message, spec.openai_code)
            else:
                resp = _error_body(api, spec.anthropic_status, spec.anthropic_type, message)
            if fault == "429":
                resp.headers["retry-after"] = str(max(0, round(s.retry_after_s)))
                resp.headers["retry-after-ms"] = str(round(s.retry_after_s * 1000))
            return resp

        text = reply_text(name, req.model, completion_tokens)
        if fault == "huge_body":
            text = (text + " ") * (HUGE_BODY_BYTES // (len(text) + 1) + 1)
        elif fault == "huge_usage":
            completion_tokens = HUGE_USAGE_TOKENS
        if isinstance(req, OpenAIRequest):
            body = _encode(
                ChatCompletion(
                    id=f"chatcmpl-{rid}",
                    created=int(time.time()),
                    model=req.model,
                    choices=[Choice(0, ChatMessage("assistant", text), "length" if capped else "stop")],
                    usage=Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
                )
            )
        else:
            body = _encode(
                AnthropicResponse(
                    id=f"msg_{rid}",
                    model=req.model,
                    content=[TextBlock(text)],
                    stop_reason="max_tokens" if capped else "end_turn",
                    usage=AnthropicUsage(prompt_tokens, completion_tokens),
                )
            )
        return web.Response(body=body, content_type="application/json")


# --- HTTP app -----------------------------------------------------------------------

STATE = web.AppKey("mock_state", MockState)
_FLUSH_INTERVAL_S = 1.0


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(value), content_type="application/json")


async def _control(request: web.Request) -> web.Response:
    try:
        ctl = _decode_control(await request.read())
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return _json({"error": f"invalid control body: {e}"}, status=400)
    return _json(msgspec.structs.asdict(request.app[STATE].control(ctl)))  # every field, defaults too


async def _log_writer(app: web.Application) -> AsyncIterator[None]:
    """Append the request log to log_path in batches, off the event loop, so that a busy
    benchmark never waits on the disk."""
    state = app[STATE]
    path = state.cfg.log_path
    if path is None:
        yield
        return

    def append(data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL_S)
            if data := state.flush():
                await asyncio.to_thread(append, data)

    task = asyncio.create_task(flush_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    append(state.flush())


def create_app(cfg: MockConfig) -> web.Application:
    state = MockState(cfg)
    app = web.Application()
    app[STATE] = state

    def provider_route(api: Api) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await state.serve(request, api)

        return handle

    async def log(request: web.Request) -> web.Response:
        return _json(state.entries(request.query.get("provider")))

    async def stats(_: web.Request) -> web.Response:
        return _json(state.stats())

    async def reset(_: web.Request) -> web.Response:
        state.reset()
        return _json({"ok": True})

    async def health(_: web.Request) -> web.Response:
        return _json({"ok": True})

    app.add_routes(
        [
            web.post("/{provider}/v1/chat/completions", provider_route("openai")),
            web.post("/{provider}/v1/messages", provider_route("anthropic")),
            web.post("/_mock/control", _control),
            web.get("/_mock/log", log),
            web.get("/_mock/stats", stats),
            web.post("/_mock/reset", reset),
            web.get("/_mock/health", health),
        ]
    )
    app.cleanup_ctx.append(_log_writer)
    from panelboard.loadgen import mock_batches  # OpenAI Files + Batches, beside the chat endpoints

    mock_batches.mount(app, mock_batches.BatchStore(state))
    return app


class MockServer:
    def __init__(self, runner: web.AppRunner, state: MockState, url: str) -> None:
        self._runner = runner
        self._state = state
        self.url = url

    def log(self, provider: str | None = None) -> list[LogEntry]:
        return self._state.entries(provider)

    def stats(self) -> Stats:
        return self._state.stats()

    def control(self, provider: str, **changes: object) -> ProviderSettings:
        """Same as POST /_mock/control, e.g. `control("novita", fault="429", every=2)`."""
        return self._state.control(msgspec.convert({"provider": provider, **changes}, Control))

    def reset(self) -> None:
        self._state.reset()

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_mock(cfg: MockConfig | None = None) -> MockServer:
    cfg = cfg or MockConfig()
    app = create_app(cfg)
    # handler_cancellation: a client that gives up (e.g. on a `timeout` fault) frees its
    # in-flight slot at once, as on a real provider; a short shutdown_timeout keeps hung
    # requests from holding up stop().
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, cfg.host, cfg.port).start()
    host, port = runner.addresses[0][:2]
    return MockServer(runner, app[STATE], f"http://{host}:{port}")


# --- CLI ----------------------------------------------------------------------------


def _load_config(path: str) -> MockConfig:
    data = Path(path).read_bytes()
    if path.endswith((".yaml", ".yml")):
        return msgspec.yaml.decode(data, type=MockConfig)
    return msgspec.json.decode(data, type=MockConfig)


async def _serve_until_signalled(cfg: MockConfig) -> None:
    server = await start_mock(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock provider listening on {server.url}", flush=True)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panelboard.loadgen.mock_provider", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML or JSON file holding a MockConfig")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, help="0 picks a free port (default 8900)")
    parser.add_argument("--latency-ms", type=float)
    parser.add_argument("--jitter-ms", type=float)
    parser.add_argument("--hang-ms", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log-path")
    args = parser.parse_args(argv)

    cfg = _load_config(args.config) if args.config else MockConfig()
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    cfg = msgspec.structs.replace(cfg, **overrides)

    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_until_signalled(cfg))
    else:
        uvloop.run(_serve_until_signalled(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
