"""The batch lane's decisions, pure: when to send a provider batch, how long to wait between
polls, when to give up on it for the realtime lane, and what its result files say.

    flush_due(n, size, oldest_at, now, cap) -> bool
    fallback_at(earliest_deadline, cap) -> float | None
    too_late(deadline, now, cap) -> bool
    poll_delay_s(polls, cap, now, fallback) -> float
    encode_line(custom_id, request, model) -> bytes          one line of the upload (OpenAI)
    parse_results(output, errors) -> dict[custom_id, Line]   what each line came to
"""

from __future__ import annotations

from typing import Any

import msgspec

from panelboard.schemas.chat import ChatRequest, ChatResponse
from panelboard.schemas.config import BatchLane, Model
from panelboard.workers.providers.anthropic import encode_request, parse_response

CHAT_URL = "/v1/chat/completions"
# Provider statuses after which a batch changes no more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "ended"})  # "ended": Anthropic
_encode = msgspec.json.Encoder().encode


def flush_due(n: int, size: int, oldest_at: float | None, now: float, cap: BatchLane) -> bool:
    """A collection is sent when full (requests or bytes) or when its oldest job has lingered."""
    if n == 0:
        return False
    return n >= cap.max_requests or size >= cap.max_bytes or (oldest_at is not None and now - oldest_at >= cap.linger_s)


def fits(n: int, size: int, line_bytes: int, cap: BatchLane) -> bool:
    """Whether one more line still fits this provider batch."""
    return n + 1 <= cap.max_requests and size + line_bytes <= cap.max_bytes


def fallback_at(earliest_deadline: float | None, cap: BatchLane) -> float | None:
    """When a provider batch still running must give its jobs to the realtime lane."""
    return None if earliest_deadline is None else earliest_deadline - cap.reserve_s


def too_late(deadline: float | None, now: float, cap: BatchLane) -> bool:
    """A job this close to its deadline goes realtime instead of into a provider batch."""
    return deadline is not None and deadline - now <= cap.reserve_s


def poll_delay_s(polls: int, cap: BatchLane, now: float, fallback: float | None) -> float:
    """Exponential from poll_s up to max_poll_s, never sleeping past the fallback moment."""
    delay = min(cap.poll_s * 2 ** min(polls, 30), cap.max_poll_s)
    if fallback is not None:
        delay = min(delay, max(0.0, fallback - now))
    return delay


def encode_line(custom_id: str, request: ChatRequest, model: Model) -> bytes:
    """An OpenAI batch input line; the catalog entry picks the upstream model, as realtime."""
    body = msgspec.structs.replace(request, model=model.model)
    return _encode({"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}) + b"\n"


def encode_anthropic_line(custom_id: str, request: ChatRequest, model: Model) -> bytes:
    """One request of an Anthropic Message Batch: the Messages body the realtime adapter sends."""
    return b'{"custom_id":' + _encode(custom_id) + b',"params":' + encode_request(request, model) + b"}"


def anthropic_body(lines: list[bytes]) -> bytes:
    return b'{"requests":[' + b",".join(lines) + b"]}"


class Answered(msgspec.Struct, frozen=True):
    response: ChatResponse


class Errored(msgspec.Struct, frozen=True):
    status: int  # the line's HTTP status; 0 when it never ran (expired, cancelled)
    code: str
    message: str


Line = Answered | Errored


class _Response(msgspec.Struct):
    status_code: int
    body: dict[str, Any] | None = None


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _OutLine(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: _Error | None = None


_decode_line = msgspec.json.Decoder(_OutLine).decode


def _line(out: _OutLine) -> Line:
    r = out.response
    if r is not None and r.status_code == 200 and r.body is not None:
        try:
            response = msgspec.convert(r.body, ChatResponse)
        except msgspec.ValidationError as e:
            return Errored(502, "unparseable", f"unparseable response body: {e}")
        if response.choices:
            return Answered(response)
        return Errored(502, "unparseable", "response has no choices")
    if r is not None:
        err = (r.body or {}).get("error") or {}
        return Errored(r.status_code, str(err.get("code") or err.get("type") or r.status_code), str(err.get("message") or "")[:300])
    failure = out.error or _Error()
    return Errored(0, failure.code or "unknown", (failure.message or "")[:300])


def parse_results(*files: bytes) -> dict[str, Line]:
    """Every line of a batch's output and error files, by custom id. A line that is not JSON
    is skipped: its job counts as unanswered and goes realtime."""
    out: dict[str, Line] = {}
    for data in files:
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                line = _decode_line(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            parsed = _line(line)
            if isinstance(parsed, Answered) or line.custom_id not in out:  # an answer wins over an error
                out[line.custom_id] = parsed
    return out


class _AnthropicResult(msgspec.Struct):
    type: str
    message: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class _AnthropicLine(msgspec.Struct):
    custom_id: str
    result: _AnthropicResult


_decode_anthropic_line = msgspec.json.Decoder(_AnthropicLine).decode


def parse_anthropic_results(data: bytes) -> dict[str, Line]:
    """A Message Batch's results (JSONL): succeeded lines as answers, the rest as errors."""
    out: dict[str, Line] = {}
    for raw in data.splitlines():
        try:
            line = _decode_anthropic_line(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        r = line.result
        if r.type == "succeeded" and r.message is not None:
            try:
                out[line.custom_id] = Answered(parse_response(_encode(r.message)))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                out[line.custom_id] = Errored(502, "unparseable", f"unparseable message: {e}")
            continue
        inner = ((r.error or {}).get("error") or {}) if r.type == "errored" else {}
        out[line.custom_id] = Errored(0, str(inner.get("type") or r.type), str(inner.get("message") or "")[:300])
    return out
