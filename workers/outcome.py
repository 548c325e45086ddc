"""What one provider call came to. Adapters map every foreign response or exception to one of
these, in one place; the retry decision only ever sees an Outcome."""

from __future__ import annotations

from typing import Literal

import msgspec

from panelboard.schemas.chat import ChatResponse, Usage
from panelboard.schemas.embeddings import EmbeddingsResponse
from panelboard.schemas.job import CallOutcome
from panelboard.schemas.pacing import RateSignal


class Ok(msgspec.Struct):
    response: ChatResponse | EmbeddingsResponse
    latency_ms: float
    rate: RateSignal | None = None  # the provider's rate window, when its headers tell it (workers/pacing.py)
    ttft_ms: float | None = None  # a stream: when its first chunk was forwarded
    chunks: int | None = None  # a stream: how many chunks were forwarded


class StreamBroken(msgspec.Struct):
    """A stream that failed after its first chunk reached the client (cut, an SSE error event,
    a stall): never retried, since the client already holds part of an answer."""

    latency_ms: float
    message: str
    chunks: int
    ttft_ms: float
    usage: Usage | None = None  # what the stream reported before it broke; None: unknown


class RateLimited(msgspec.Struct):
    latency_ms: float
    message: str
    retry_after_s: float | None = None
    # insufficient_quota / enforced_spend_limit_reached: waiting will not help, move on.
    hard: bool = False
    unavailable: bool = False  # the flex tier has no capacity now: the standard tier may
    rate: RateSignal | None = None


class Timeout(msgspec.Struct):
    latency_ms: float
    message: str = "provider did not answer in time"


class ServerError(msgspec.Struct):
    status: int  # 5xx, 529, or 502 for a body we could not parse
    latency_ms: float
    message: str
    retry_after_s: float | None = None


class ClientError(msgspec.Struct):
    status: int
    latency_ms: float
    message: str
    kind: Literal["bad_request", "context_length", "auth"] = "bad_request"


class Inexpressible(msgspec.Struct):
    """The request asks for something this provider's API family cannot express (no call was
    made): the job fails with invalid_job rather than have the field silently dropped."""

    message: str
    hint: str
    latency_ms: float = 0.0


Outcome = Ok | RateLimited | Timeout | ServerError | ClientError | Inexpressible | StreamBroken


def status_of(outcome: Outcome) -> int:
    match outcome:
        case Ok() | StreamBroken():
            return 200
        case RateLimited():
            return 429
        case Timeout() | Inexpressible():
            return 0
        case ServerError(status=s) | ClientError(status=s):
            return s


def outcome_name(outcome: Outcome | None) -> CallOutcome:
    """How a cost record names the call: None is a call lost with its worker."""
    match outcome:
        case Ok():
            return "ok"
        case RateLimited():
            return "RateLimited"
        case Timeout():
            return "Timeout"
        case ServerError():
            return "ServerError"
        case ClientError():
            return "ClientError"
        case Inexpressible():
            return "Inexpressible"
        case StreamBroken():
            return "StreamBroken"
        case None:
            return "lost"
