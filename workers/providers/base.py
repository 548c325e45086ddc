"""The seam every provider family fits: `Adapter.call(request, model, request_id, timeout) -> Outcome`.

An adapter is a few pure pieces around one pooled httpx transport: the URL and headers of a
request (built per request: a family may put the model in the path or a version in the query),
how to encode a ChatRequest (raising `Unsupported` for what the family cannot express), and how
to parse an answer. A new family is one module here, its wire in the mock, and its tests.
Foreign exceptions are mapped to Outcomes here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from email.utils import parsedate_to_datetime

from collections.abc import Callable

import httpx
import msgspec

from panelboard.schemas.chat import ChatRequest, ChatResponse
from panelboard.schemas.embeddings import EmbeddingsRequest, EmbeddingsResponse
from panelboard.schemas.config import Model, Provider
from panelboard.schemas.pacing import RateSignal, rate_signal
from panelboard.workers.providers.http import PooledTransport
from panelboard.workers.providers.sse import Translator
from panelboard.workers.outcome import ClientError, Inexpressible, Ok, Outcome, RateLimited, ServerError, Timeout

_encode = msgspec.json.Encoder().encode
_decode_embeddings = msgspec.json.Decoder(EmbeddingsResponse).decode
_HARD_429 = (b"insufficient_quota", b"enforced_spend_limit_reached")
_CONTEXT = (b"context_length_exceeded", b"prompt is too long", b"maximum context length")


def retry_after_s(headers: httpx.Headers) -> float | None:
    """retry-after-ms (OpenAI, Anthropic) wins over retry-after (seconds or an HTTP date)."""
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    if ra := headers.get("retry-after"):
        try:
            return float(ra)
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(ra).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


_RATE_PREFIXES = (b"x-ratelimit", b"anthropic-r")  # the first 11 bytes of every rate-limit header name


def rate_of(headers: httpx.Headers) -> RateSignal | None:
    """The rate window a response describes. Most answers carry none: one pass over the raw
    header names (1.6 us) instead of the parser's lookups of absent names (10 us, measured)."""
    if not any(k[:11].lower() in _RATE_PREFIXES for k, _ in headers.raw):
        return None
    return rate_signal(headers, time.time())


def classify_error(status: int, headers: httpx.Headers, body: bytes, latency_ms: float) -> Outcome:
    """Non-2xx answers, the same for every family: both speak in status codes and error codes."""
    message = body[:300].decode("utf-8", "replace")
    if any(marker in body for marker in _HARD_429):
        return RateLimited(latency_ms, message, retry_after_s(headers), hard=True)
    if status == 429:
        return RateLimited(latency_ms, message, retry_after_s(headers), unavailable=b"resource_unavailable" in body,
                           rate=rate_of(headers))
    if status >= 500 or status in (408, 409):
        return ServerError(status, latency_ms, message, retry_after_s(headers))
    if status in (401, 403, 404):
        return ClientError(status, latency_ms, message, kind="auth")
    if any(marker in body for marker in _CONTEXT):
        return ClientError(status, latency_ms, message, kind="context_length")
    return ClientError(status, latency_ms, message)


class Unsupported(Exception):
    """A request field (or value) a family's API cannot express: the job fails with invalid_job."""

    def __init__(self, family: str, what: str, hint: str):
        super().__init__(f"{what}: the {family} API has no way to express it")
        self.hint = hint


def make_transport(provider: Provider) -> httpx.AsyncBaseTransport:
    """One pooled transport per provider. The aiohttp transport keeps httpx's API without the
    default transport's collapse at hundreds of requests in flight (55 req/s at 512 in flight,
    measured here)."""
    limit = max(provider.max_concurrency * 2, 16)
    return PooledTransport(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))


class Adapter(ABC):
    def __init__(self, provider: Provider, api_key: str | None, transport: httpx.AsyncBaseTransport | None = None):
        self.provider = provider
        # httpx Requests straight into the transport: AsyncClient's cookie, redirect and auth
        # layers cost 0.1 ms CPU per call (0.25 -> 0.15 ms, measured) and we use none of them.
        self.transport = transport or make_transport(provider)
        self.headers = {"content-type": "application/json", **provider.headers, **self.static_headers, **(self.auth(api_key) if api_key else {})}
        self.base = provider.base_url.rstrip("/")
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    family: str
    static_headers: dict[str, str] = {}

    @abstractmethod
    def auth(self, api_key: str) -> dict[str, str]: ...

    @abstractmethod
    def endpoint(self, model: Model, kind: str) -> str:
        """The URL of one request (`kind`: chat or embeddings), from the provider's base URL:
        the place for a model id in the path or an api-version in the query."""

    def url(self, model: Model, kind: str = "chat") -> httpx.URL:
        key = (model.model, kind)
        if (u := self._urls.get(key)) is None:
            u = self._urls[key] = httpx.URL(self.endpoint(model, kind))
        return u

    @abstractmethod
    def encode(self, request: ChatRequest, model: Model) -> bytes:
        """The request body; raises Unsupported for what the family cannot express."""

    @abstractmethod
    def parse(self, body: bytes, request: ChatRequest) -> ChatResponse: ...

    def stream_body(self, request: ChatRequest, model: Model) -> bytes:
        """The body of a streaming call (see workers/stream.py)."""
        raise Unsupported(self.family, "streaming", "submit the job without stream, or route it to a family that streams")

    def translator(self, request: ChatRequest) -> "Translator":
        """A stream's SSE events as OpenAI chunks."""
        raise NotImplementedError

    def request(self, url: httpx.URL, body: bytes, request_id: str, timeout_s: float) -> httpx.Request:
        return httpx.Request(
            "POST", url, headers={**self.headers, "x-pb-request-id": request_id}, content=body,
            extensions={"timeout": {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}},
        )

    def inexpressible(self, e: Unsupported) -> Inexpressible:
        return Inexpressible(str(e), e.hint)

    async def call(self, request: ChatRequest, model: Model, request_id: str, timeout_s: float) -> Outcome:
        try:
            body = self.encode(request, model)
        except Unsupported as e:
            return self.inexpressible(e)
        return await self._post(self.url(model), body, request_id, timeout_s, lambda raw: self.parse(raw, request))

    async def embed(self, request: EmbeddingsRequest, model: Model, request_id: str, timeout_s: float) -> Outcome:
        """An embeddings call (OpenAI's /embeddings shape); families without one refuse it."""
        try:
            url = self.url(model, "embeddings")
        except Unsupported as e:
            return self.inexpressible(e)
        body = _encode(msgspec.structs.replace(request, model=model.model))
        return await self._post(url, body, request_id, timeout_s, _decode_embeddings)

    async def _post(self, url: httpx.URL, body: bytes, request_id: str, timeout_s: float,
                    parse: Callable[[bytes], ChatResponse | EmbeddingsResponse]) -> Outcome:
        transport = self.transport
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                if isinstance(transport, PooledTransport):  # the short path: no httpx Request or Response built
                    status, headers, body = await transport.post(str(url), {**self.headers, "x-pb-request-id": request_id}, body, timeout_s)
                else:
                    r = await transport.handle_async_request(self.request(url, body, request_id, timeout_s))
                    status, headers, body = r.status_code, r.headers, await r.aread()
        except (TimeoutError, httpx.TimeoutException):
            return Timeout((time.perf_counter() - start) * 1000, f"no answer within {timeout_s:.1f}s")
        except httpx.HTTPError as e:
            return ServerError(0, (time.perf_counter() - start) * 1000, f"connection failed: {type(e).__name__}: {e}")
        latency_ms = (time.perf_counter() - start) * 1000
        if status != 200:
            return classify_error(status, headers, body, latency_ms)
        try:
            response = parse(body)
        except Exception as e:  # a body we cannot read is the provider's fault: retriable
            return ServerError(502, latency_ms, f"unparseable response body: {type(e).__name__}: {str(e)[:200]}")
        return Ok(response, latency_ms, rate_of(headers))

    async def aclose(self) -> None:
        await self.transport.aclose()
