"""Rate limits: requests and tokens per minute, jobs in flight. Pure.

Each key and team has a row of one-second buckets (requests, tokens) in SQL, shared by every
broker. A job admitted at time t is checked against every bucket from second floor(t) - 60
on: 61 buckets, which cover [t - 60 s, t] whatever the fraction of the second. So for any two
admissions t1 <= t2 with t2 - t1 <= 60 s, the later one counted the earlier one: no
60-second window (closed, anywhere on the clock) ever admits more than the limit. The price
is that the window is up to 61 s wide, never narrower: conservative, as a limit should be.

Tokens are counted at admission as the job's estimate (prompt + the most output it may ask
for) and replaced by the real tokens when it settles, like a budget reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

from panelboard.schemas.errors import RateLimited

WINDOW_S = 60


@dataclass(frozen=True)
class Bucket:
    second: int  # unix second the admissions fell in
    requests: int
    tokens: int


@dataclass(frozen=True)
class Limits:
    owner: str  # "key pb_ab12c" / "team default": for messages
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class Limited:
    owner: str
    what: Literal["rpm", "tpm", "parallel"]
    retry_after_s: float  # 0 when unknown (a job in flight must finish first)
    never: bool = False  # the job alone is over the limit: waiting cannot help
    detail: str = ""

    def error(self) -> RateLimited:
        if self.never:
            return RateLimited(message=f"{self.owner}: {self.detail}", hint="send a smaller job (fewer prompt tokens, lower max_tokens), or ask for a higher limit")
        when = f"retry in {self.retry_after_s:.1f} s" if self.retry_after_s > 0 else "retry when one of its jobs has finished"
        return RateLimited(message=f"{self.owner} is over its {self.detail}; {when}",
                           hint="slow down or spread jobs over time, let the key wait instead (keys create --on-limit wait), or ask for a higher limit",
                           retry_after_s=round(self.retry_after_s, 3))


def window_floor(now: float) -> int:
    """The oldest bucket that counts for an admission at `now`."""
    return int(now) - WINDOW_S


def _retry_after(live: list[Bucket], value: Callable[[Bucket], int], excess: int, now: float) -> float:
    """When enough of the oldest buckets have left the window to make room for `excess`."""
    freed = 0
    for b in sorted(live, key=lambda b: b.second):
        freed += value(b)
        if freed >= excess:
            return max(b.second + WINDOW_S + 1 - now, 0.001)
    return float(WINDOW_S + 1)


def check(limits: Limits, buckets: Iterable[Bucket], tokens: int, now: float) -> Limited | None:
    """Would one more job of `tokens` tokens, admitted at `now`, break RPM or TPM?"""
    if limits.rpm is None and limits.tpm is None:
        return None
    floor = window_floor(now)
    live = [b for b in buckets if b.second >= floor]
    if limits.rpm is not None:
        used = sum(b.requests for b in live)
        if limits.rpm <= 0:
            return Limited(limits.owner, "rpm", 0.0, never=True, detail="its limit is 0 requests per minute")
        if used + 1 > limits.rpm:
            return Limited(limits.owner, "rpm", _retry_after(live, lambda b: b.requests, used + 1 - limits.rpm, now),
                           detail=f"{limits.rpm} requests per minute ({used} admitted in the last minute)")
    if limits.tpm is not None:
        if tokens > limits.tpm:
            return Limited(limits.owner, "tpm", 0.0, never=True,
                           detail=f"the job may use up to {tokens} tokens, more than its {limits.tpm} tokens per minute")
        used = sum(b.tokens for b in live)
        if used + tokens > limits.tpm:
            return Limited(limits.owner, "tpm", _retry_after(live, lambda b: b.tokens, used + tokens - limits.tpm, now),
                           detail=f"{limits.tpm} tokens per minute ({used} counted in the last minute, this job up to {tokens})")
    return None


def check_parallel(owner: str, max_parallel: int | None, inflight: int) -> Limited | None:
    """A per-key cap on jobs in flight: a batch user must not take every provider slot."""
    if max_parallel is None or inflight < max_parallel:
        return None
    if max_parallel <= 0:
        return Limited(owner, "parallel", 0.0, never=True, detail="its limit is 0 jobs in flight")
    return Limited(owner, "parallel", 0.0, detail=f"{max_parallel} jobs in flight ({inflight} running)")


def wait_delay(limited: Limited, deliveries: int) -> float:
    """How long a waiting job stays in the stream before it is tried again: until the window
    frees room, or, for a job in flight to finish, a backoff that grows with each try."""
    if limited.retry_after_s > 0:
        return min(limited.retry_after_s + 0.05, WINDOW_S + 1.0)
    return min(0.25 * 1.5 ** max(deliveries - 1, 0), 5.0)
