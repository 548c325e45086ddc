"""What one provider call came to. Adapters map every foreign response or exception to one of
these, in one place; the retry decision only ever sees an Outcome."""

from __future__ import annotations

from typing import Literal

import msgspec

from panelboard.schemas.chat import ChatResponse


class Ok(msgspec.Struct):
    response: ChatResponse
    latency_ms: float
    ratelimit_remaining: int | None = None


class RateLimited(msgspec.Struct):
    latency_ms: float
    message: str
    retry_after_s: float | None = None
    # insufficient_quota / enforced_spend_limit_reached: waiting will not help, move on.
    hard: bool = False
    unavailable: bool = False  # the flex tier has no capacity now: the standard tier may


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


Outcome = Ok | RateLimited | Timeout | ServerError | ClientError


def status_of(outcome: Outcome) -> int:
    match outcome:
        case Ok():
            return 200
        case RateLimited():
            return 429
        case Timeout():
            return 0
        case ServerError(status=s) | ClientError(status=s):
            return s
