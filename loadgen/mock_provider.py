"""A real HTTP mock inference provider, for tests, the demo and benchmarks.

One server plays any number of providers, told apart by the first path segment:

    POST /{provider}/v1/chat/completions   OpenAI chat completions
    POST /{provider}/v1/messages           Anthropic Messages
    POST /{provider}/v1/embeddings         OpenAI embeddings
    POST /_mock/control                    script a provider's faults and latency
    GET  /_mock/log   GET /_mock/stats   POST /_mock/reset   GET /_mock/health

Everything is deterministic: usage and text follow from the prompt, jitter comes from a
seeded RNG per provider, and faults come either from the model name (`fault-429`,
`slow-250`, ...) or from `/_mock/control` (`every` N-th request of a provider). Tool calls,
images and JSON answers follow loadgen/mock_answers.py; `stream: true` answers Server-Sent
Events (loadgen/mock_sse.py: chunk count, delay, cut / error / stall mid-stream).
`cached-N` and `reasoning-N` in a model name add those usage details. Each
served request is logged once, with the id the caller sent in `x-pb-request-id`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import math
import re
import signal
import struct
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from random import Random
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from panelboard.loadgen.mock_answers import IMAGE_TOKENS, answer, read_anthropic, read_openai
from panelboard.loadgen.mock_sse import Stream, anthropic_events, openai_chunks

Api = Literal["openai", "anthropic"]
Fault = Literal["429", "500", "503", "529", "timeout", "malformed", "400", "context", "quota", "huge_body", "huge_usage",
                "cut", "sse_error", "stall"]  # the last three hit streams only, after `after_chunks` events

# --- configuration ------------------------------------------------------------------


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    pass


class ProviderSettings(Base, frozen=True):
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
    # A request window: at most this many requests per ratelimit_window_s (from the window's
    # first request), counted down in the rate-limit headers of the provider's API family; a
    # request past it gets a 429 whose retry-after is the window's end.
    ratelimit_requests: Annotated[int, Meta(ge=1)] | None = None
    ratelimit_window_s: Annotated[float, Meta(gt=0)] = 1.0
    stream: bool = True  # false: refuse `stream: true` with a 400
    stream_chunks: Annotated[int, Meta(ge=1)] = 8  # content pieces per streamed answer
    chunk_delay_ms: Annotated[float, Meta(ge=0)] = 0.0  # between two SSE events
    after_chunks: Annotated[int, Meta(ge=0)] = 3  # events sent before a cut / sse_error / stall


class MockConfig(Base, frozen=True):
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
    ratelimit_requests: Annotated[int, Meta(ge=1)] | None | UnsetType = UNSET
    ratelimit_window_s: Annotated[float, Meta(gt=0)] | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    stream_chunks: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    chunk_delay_ms: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    after_chunks: Annotated[int, Meta(ge=0)] | UnsetType = UNSET


# --- introspection ------------------------------------------------------------------


class LogEntry(msgspec.Struct, omit_defaults=True):
    ts: float  # time.time() when the response was ready
    provider: str
    api: Api
    request_id: str
    model: str
    status: int  # 499: the client went away before the answer
    latency_ms: float
    fault: Fault | None
    images: list[str] = []  # the image URLs of the request (base64 ones as data: URLs)


class Stats(msgspec.Struct):
    requests: dict[str, int]
    in_flight: dict[str, int]
    max_in_flight: dict[str, int]
    status_counts: dict[str, dict[int, int]]


# --- request wire formats: only the fields the mock reads -----------------------------


class Part(msgspec.Struct):
    """An OpenAI content part or an Anthropic content block."""

    type: str = "text"
    text: str = ""  # images, tool calls and the like count as no text
    image_url: dict[str, Any] | None = None  # OpenAI: {"url": ...}
    source: dict[str, Any] | None = None  # Anthropic image: {"type": "base64" | "url", ...}
    id: str | None = None  # Anthropic tool_use
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None  # Anthropic tool_result
    content: str | list[Part] | None = None


class OpenAIToolCall(msgspec.Struct):
    id: str
    function: dict[str, Any]
    type: str = "function"


class OpenAIMessage(msgspec.Struct):
    role: str
    content: str | list[Part] | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None


class OpenAIRequest(msgspec.Struct):
    model: str
    messages: list[OpenAIMessage]
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    service_tier: str | None = None  # "flex": see loadgen/mock_batches.py


class EmbeddingsRequest(msgspec.Struct):
    model: str
    input: str | list[str | int | list[int]]
    dimensions: Annotated[int, Meta(ge=1, le=4096)] = 8
    encoding_format: Literal["float", "base64"] = "float"


def embeddings(req: EmbeddingsRequest) -> dict[str, Any]:
    """Deterministic vectors: each value from a hash of the input and its position."""
    items = [req.input] if isinstance(req.input, str) else req.input
    data, tokens = [], 0
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else " ".join(map(str, item if isinstance(item, list) else [item]))
        tokens += max(1, (len(text) + 3) // 4) if isinstance(item, str) else (len(item) if isinstance(item, list) else 1)
        vec = [zlib.crc32(f"{text}:{j}".encode()) % 2001 / 1000 - 1 for j in range(req.dimensions)]
        value: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if req.encoding_format == "base64" else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class AnthropicMessage(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Part]


class AnthropicRequest(msgspec.Struct):
    model: str
    messages: list[AnthropicMessage]
    max_tokens: Annotated[int, Meta(ge=1)]  # required by the real API, so here too
    system: str | list[Part] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


# --- response wire formats ----------------------------------------------------------


class ChatMessage(msgspec.Struct):
    role: str
    content: str | None
    tool_calls: list[OpenAIToolCall] | None = None
    refusal: None = None


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
    usage: dict[str, Any]
    object: str = "chat.completion"
    system_fingerprint: str = "fp_mock"


class AnthropicResponse(msgspec.Struct):
    id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, int]
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

_FAULT_RE = re.compile(r"fault-(429|500|503|529|timeout|malformed|400|context|quota|huge_body|huge_usage|cut|sse_error|stall)")
# Usage details a model name asks for, e.g. `m-cached-64-reasoning-32`.
_CACHED_RE = re.compile(r"cached-(\d+)")
_REASONING_RE = re.compile(r"reasoning-(\d+)")
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
_decode_embeddings = msgspec.json.Decoder(EmbeddingsRequest).decode


@functools.lru_cache(maxsize=4096)
def model_directives(model: str) -> tuple[Fault | None, float]:
    """The fault and extra latency (ms) a model name asks for, e.g. `m-fault-503-slow-200`."""
    fault = m.group(1) if (m := _FAULT_RE.search(model)) else None
    slow = float(m.group(1)) if (m := _SLOW_RE.search(model)) else 0.0
    return fault, slow  # type: ignore[return-value]


@functools.lru_cache(maxsize=4096)
def usage_directives(model: str) -> tuple[int, int]:
    """(cached prompt tokens, reasoning tokens) a model name asks the usage to report."""
    cached = int(m.group(1)) if (m := _CACHED_RE.search(model)) else 0
    return cached, int(m.group(1)) if (m := _REASONING_RE.search(model)) else 0


def token_counts(prompt: str, max_tokens: int | None) -> tuple[int, int, bool]:
    """(prompt tokens, completion tokens, capped by max_tokens) for a prompt's text."""
    prompt_tokens = max(1, (len(prompt) + 3) // 4)
    completion = 8 + zlib.crc32(prompt.encode()) % 193  # 8..200
    if max_tokens is not None and completion > max_tokens:
        return prompt_tokens, max_tokens, True
    return prompt_tokens, completion, False


def reply_text(provider: str, model: str, completion_tokens: int) -> str:
    return (f"mock reply from {provider}/{model}: " + _FILLER)[: completion_tokens * 4]


_ANSWER_RE = re.compile(r"\[\[mock-answer:([^\]|]*)(?:\|differs-on:([\w,-]+))?\]\]")


def scripted_answer(prompt: str, provider: str) -> str | None:
    """A prompt carrying `[[mock-answer:TEXT]]` is answered TEXT by every provider, and with
    `|differs-on:p1,p2` those providers answer something else: answers that agree or differ
    by prompt, for quality evaluations of a shadowed tier."""
    m = _ANSWER_RE.search(prompt)
    if m is None:
        return None
    differs = m.group(2) and provider in m.group(2).split(",")
    return f"{m.group(1)} (no: {provider} disagrees)" if differs else m.group(1)


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


def window_headers(api: Api, limit: int, remaining: int, reset_s: float, now: float) -> dict[str, str]:
    """A request window in the family's own headers; the reset rounded up, never early."""
    ms = math.ceil(reset_s * 1000)
    if api == "openai":
        return {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": str(remaining),
                "x-ratelimit-reset-requests": f"{ms}ms"}
    at = datetime.fromtimestamp(math.ceil((now + reset_s) * 1000) / 1000, timezone.utc)
    return {"anthropic-ratelimit-requests-limit": str(limit), "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": at.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def _error_body(api: Api, status: int, type_: str, message: str, code: str | None = None) -> web.Response:
    if api == "openai":
        body = _encode(OpenAIError(OpenAIErrorBody(message=message, type=type_, code=code)))
    else:
        body = _encode(AnthropicError(AnthropicErrorBody(type=type_, message=message)))
    return web.Response(status=status, body=body, content_type="application/json")


# --- server state -------------------------------------------------------------------


class _Provider:
    __slots__ = ("settings", "rng", "counter", "requests", "in_flight", "max_in_flight", "status_counts", "window_end", "window_used")

    def __init__(self, settings: ProviderSettings, rng: Random) -> None:
        self.settings = settings
        self.rng = rng
        self.counter = 0  # requests since the fault was scripted; drives `every`
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.status_counts: Counter[int] = Counter()
        self.window_end = 0.0  # time.time() the request window resets (see ProviderSettings.ratelimit_requests)
        self.window_used = 0

    def admit(self, now: float) -> tuple[int, float] | None:
        """Count one request against the window: (remaining after it, seconds to the reset),
        remaining -1 when it is over the limit; None without a window."""
        limit = self.settings.ratelimit_requests
        if limit is None:
            return None
        if now >= self.window_end:
            self.window_end, self.window_used = now + self.settings.ratelimit_window_s, 0
        if self.window_used >= limit:
            return -1, self.window_end - now
        self.window_used += 1
        return limit - self.window_used, self.window_end - now


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
        p.window_end = 0.0
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

    async def serve(self, request: web.Request, api: Api) -> web.StreamResponse:
        t0 = time.perf_counter()
        name = request.match_info["provider"]
        p = self.provider(name)
        rid = request.headers.get("x-pb-request-id") or uuid.uuid4().hex
        images: list[str] = []
        p.requests += 1
        p.in_flight += 1
        p.max_in_flight = max(p.max_in_flight, p.in_flight)
        model, fault, status = "", None, 499  # 499 stays if aiohttp cancels us on disconnect
        window: tuple[int, float] | None = None
        try:
            try:
                body = await request.read()
                req = _decode_openai(body) if api == "openai" else _decode_anthropic(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                answer: web.Response | Stream = _error_body(api, 400, "invalid_request_error", f"invalid request body: {e}")
            else:
                model = req.model
                window = p.admit(time.time())
                fault, delay_ms = self._plan(p, model)
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                refused = self.flex_hook(name, req) if self.flex_hook else None
                if window is not None and window[0] < 0:
                    fault = "429"
                    answer = _error_body(api, 429, "requests" if api == "openai" else "rate_limit_error",
                                         f"mock request window of {p.settings.ratelimit_requests} per {p.settings.ratelimit_window_s}s exceeded",
                                         "rate_limit_exceeded" if api == "openai" else None)
                    answer.headers["retry-after-ms"] = str(math.ceil(window[1] * 1000))
                    answer.headers["retry-after"] = str(math.ceil(window[1]))
                elif refused is not None:
                    answer, images = refused, []
                else:
                    answer, images = self._respond(api, name, p.settings, req, rid, fault)
            headers = {"x-request-id": rid}
            if api == "anthropic":
                headers["request-id"] = rid
            if p.settings.ratelimit_remaining is not None:
                headers["x-ratelimit-remaining-requests"] = str(p.settings.ratelimit_remaining)
            if window is not None and p.settings.ratelimit_requests is not None:
                headers.update(window_headers(api, p.settings.ratelimit_requests, max(0, window[0]), window[1], time.time()))
            if isinstance(answer, Stream):  # SSE: the status is 200 once the first byte is out
                resp: web.StreamResponse = await answer.send(request, fault, headers)
            else:
                resp = answer
                resp.headers.update(headers)
            status = resp.status
            return resp
        except Exception:
            status = 500  # a bug here; aiohttp answers 500
            raise
        finally:
            p.in_flight -= 1
            p.status_counts[status] += 1
            latency_ms = (time.perf_counter() - t0) * 1000
            self.record(LogEntry(time.time(), name, api, rid, model, status, latency_ms, fault, images))

    async def serve_embeddings(self, request: web.Request) -> web.StreamResponse:
        """OpenAI /v1/embeddings: a vector per input, from a hash of it (`dimensions`, default
        8), float or base64; the same faults and latency as chat."""
        t0 = time.perf_counter()
        name = request.match_info["provider"]
        p = self.provider(name)
        rid = request.headers.get("x-pb-request-id") or uuid.uuid4().hex
        p.requests += 1
        model, fault, status = "", None, 499
        try:
            try:
                req = _decode_embeddings(await request.read())
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                resp = _error_body("openai", 400, "invalid_request_error", f"invalid request body: {e}")
            else:
                model = req.model
                fault, delay_ms = self._plan(p, model)
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                if fault is not None and (spec := _ERRORS.get(fault)) is not None:
                    resp = _error_body("openai", spec.openai_status, spec.openai_type, _error_message("openai", fault, name, 1), spec.openai_code)
                else:
                    resp = web.Response(body=_encode(embeddings(req)), content_type="application/json")
            resp.headers["x-request-id"] = rid
            status = resp.status
            return resp
        finally:
            p.status_counts[status] += 1
            self.record(LogEntry(time.time(), name, "openai", rid, model, status, (time.perf_counter() - t0) * 1000, fault))

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
    ) -> tuple[web.Response | Stream, list[str]]:
        """The answer, and the image URLs the request carried (for the log)."""
        if isinstance(req, OpenAIRequest):
            prompt = read_openai(req)
            cap = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        else:
            prompt = read_anthropic(req)
            cap = req.max_tokens
        prompt_tokens, completion_tokens, capped = token_counts(prompt.text, cap)
        prompt_tokens += IMAGE_TOKENS * len(prompt.images)
        if prompt.bad is not None:
            return _error_body(api, 400, "invalid_request_error", prompt.bad), prompt.images
        if req.stream and not s.stream:
            return _error_body(api, 400, "invalid_request_error", f"mock provider {name} is set not to stream"), prompt.images

        if fault == "malformed":
            return web.Response(body=_MALFORMED, content_type="application/json"), prompt.images
        if fault is not None and (spec := _ERRORS.get(fault)) is not None:
            message = _error_message(api, fault, name, prompt_tokens)
            if api == "openai":
                resp = _error_body(api, spec.openai_status, spec.openai_type, message, spec.openai_code)
            else:
                resp = _error_body(api, spec.anthropic_status, spec.anthropic_type, message)
            if fault == "429":
                resp.headers["retry-after"] = str(max(0, round(s.retry_after_s)))
                resp.headers["retry-after-ms"] = str(round(s.retry_after_s * 1000))
            return resp, prompt.images

        ans = answer(prompt, scripted_answer(prompt.text, name) or reply_text(name, req.model, completion_tokens), rid)
        text = ans.text
        if ans.tool is not None or text != reply_text(name, req.model, completion_tokens):
            shown = text if ans.tool is None else _encode(ans.tool[2]).decode()
            completion_tokens, capped = max(1, (len(shown or "") + 3) // 4), False
        if fault == "huge_body" and text is not None:
            text = (text + " ") * (HUGE_BODY_BYTES // (len(text) + 1) + 1)
        elif fault == "huge_usage":
            completion_tokens = HUGE_USAGE_TOKENS
        cached, reasoning = usage_directives(req.model)
        cached = min(cached, prompt_tokens)
        completion_tokens += reasoning
        if isinstance(req, OpenAIRequest):
            calls = None if ans.tool is None else [OpenAIToolCall(f"call_{ans.tool[0]}", {"name": ans.tool[1], "arguments": _encode(ans.tool[2]).decode()})]
            usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            if cached or reasoning:
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
                usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
            finish = "tool_calls" if calls else ("length" if capped else "stop")
            completion = ChatCompletion(
                id=f"chatcmpl-{rid}", created=int(time.time()), model=req.model,
                choices=[Choice(0, ChatMessage("assistant", text, calls), finish)], usage=usage,
            )
            if req.stream:
                events = openai_chunks(completion, bool((req.stream_options or {}).get("include_usage")), s.stream_chunks)
                return Stream(api, events, s.chunk_delay_ms, s.after_chunks, s.hang_ms or 0), prompt.images
            body = _encode(completion)
        else:
            content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
            if ans.tool is not None:
                content.append({"type": "tool_use", "id": f"toolu_{ans.tool[0]}", "name": ans.tool[1], "input": ans.tool[2]})
            reply = AnthropicResponse(
                id=f"msg_{rid}", model=req.model, content=content,
                stop_reason="tool_use" if ans.tool else ("max_tokens" if capped else "end_turn"),
                usage={"input_tokens": prompt_tokens - cached, "output_tokens": completion_tokens,
                       "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0},
            )
            if req.stream:
                return Stream(api, anthropic_events(reply, s.stream_chunks), s.chunk_delay_ms, s.after_chunks, s.hang_ms or 0), prompt.images
            body = _encode(reply)
        return web.Response(body=body, content_type="application/json"), prompt.images


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

    def provider_route(api: Api) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
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
            web.post("/{provider}/v1/embeddings", state.serve_embeddings),
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
