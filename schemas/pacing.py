"""What a provider says of its rate window, read from its response headers, and what a pool's
pacing shares through the PB_PACE KV bucket (workers/pacer.py). Parsing is pure.

OpenAI:    x-ratelimit-{limit,remaining}-{requests,tokens}, x-ratelimit-reset-{requests,tokens}
           (a Go duration: "1s", "6m0s", "20ms", "1h2m3.5s": time until the window is full again)
Anthropic: anthropic-ratelimit-{requests,tokens,input-tokens}-{limit,remaining,reset}
           (reset: an RFC 3339 time)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

import msgspec


class RateSignal(msgspec.Struct, frozen=True, omit_defaults=True):
    """One observation of a provider's window; `*_reset_at`: time.time() when it is full again."""

    at: float  # time.time() when the response was read
    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_at: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_at: float | None = None


class PoolPace(msgspec.Struct, frozen=True, omit_defaults=True):
    """One worker process's pool, as `panelboard status` shows it."""

    provider: str
    limit: int  # the adaptive concurrency limit now (AIMD), between floor and cap
    floor: int
    cap: int
    at: float  # time.time() of this write; a process gone stops refreshing it
    paced_until: float | None = None  # the latest start time a paced call holds now
    signal: RateSignal | None = None  # the tightest window this pool knows of


_GO_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")


def duration_s(text: str) -> float | None:
    """A Go duration ("6m0s", "20ms", "1h2m3.5s") or bare seconds ("1.5") in seconds; None if unreadable."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNIT[u] for n, u in parts)


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(float(v))
    except ValueError:
        return None


def _rfc3339(v: str | None) -> float | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _after(now: float, v: str | None) -> float | None:
    d = duration_s(v) if v else None
    return None if d is None else now + d


def rate_signal(headers: Mapping[str, str], now: float) -> RateSignal | None:
    """The window a response's headers describe; None when they say nothing of one."""
    get = headers.get
    rr, tr = get("x-ratelimit-remaining-requests"), get("x-ratelimit-remaining-tokens")
    if rr is not None or tr is not None:
        return RateSignal(
            at=now, requests_limit=_int(get("x-ratelimit-limit-requests")), requests_remaining=_int(rr),
            requests_reset_at=_after(now, get("x-ratelimit-reset-requests")),
            tokens_limit=_int(get("x-ratelimit-limit-tokens")), tokens_remaining=_int(tr),
            tokens_reset_at=_after(now, get("x-ratelimit-reset-tokens")),
        )
    if get("anthropic-ratelimit-requests-remaining") is None and get("anthropic-ratelimit-input-tokens-remaining") is None:
        return None
    # Anthropic's tokens-* is the tightest of its token limits; input-tokens-* stands in when absent.
    tok = "tokens" if get("anthropic-ratelimit-tokens-remaining") is not None else "input-tokens"
    return RateSignal(
        at=now, requests_limit=_int(get("anthropic-ratelimit-requests-limit")),
        requests_remaining=_int(get("anthropic-ratelimit-requests-remaining")),
        requests_reset_at=_rfc3339(get("anthropic-ratelimit-requests-reset")),
        tokens_limit=_int(get(f"anthropic-ratelimit-{tok}-limit")), tokens_remaining=_int(get(f"anthropic-ratelimit-{tok}-remaining")),
        tokens_reset_at=_rfc3339(get(f"anthropic-ratelimit-{tok}-reset")),
    )
