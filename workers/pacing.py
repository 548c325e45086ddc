"""Pacing from the provider's own signals, and the adaptive concurrency limit. Pure.

- `merge`: which of two observations of one window to believe.
- `plan`: when the next call may start, so that the remaining budget is spread evenly until
  the window resets and never runs out early; with nothing left, not before the reset.
- `adapt`: the concurrency limit, additive increase (+1 after `limit` successes in a row),
  multiplicative decrease (halved on a 429, 5xx or timeout), between a floor and the cap.

"Owed" is what this process has started that the latest signal may not count yet: calls (and
their estimated tokens) in flight, since a call answered since then brought its own signal.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from panelboard.schemas.job import Job
from panelboard.schemas.pacing import RateSignal
from panelboard.workers.outcome import Ok, Outcome, RateLimited, ServerError, Timeout

RESET_MARGIN_S = 0.05  # start a little after the reset: the provider's clock and ours differ
UNKNOWN_RESET_S = 1.0  # a window with no reset header: assume it refills within a second
SAME_WINDOW_S = 0.5  # two observations whose resets are this close describe one window


def merge(old: RateSignal | None, new: RateSignal) -> RateSignal:
    """The freshest observation wins, except that within one window the lower remaining
    wins: answers to concurrent calls arrive out of order, and a window only counts down."""
    if old is None:
        return new
    fresh, stale = (new, old) if new.at >= old.at else (old, new)
    req = _lower(fresh.requests_remaining, fresh.requests_reset_at, stale.requests_remaining, stale.requests_reset_at)
    tok = _lower(fresh.tokens_remaining, fresh.tokens_reset_at, stale.tokens_remaining, stale.tokens_reset_at)
    if req == fresh.requests_remaining and tok == fresh.tokens_remaining:
        return fresh
    return RateSignal(at=fresh.at, requests_limit=fresh.requests_limit, requests_remaining=req, requests_reset_at=fresh.requests_reset_at,
                      tokens_limit=fresh.tokens_limit, tokens_remaining=tok, tokens_reset_at=fresh.tokens_reset_at)


def _lower(rem: int | None, reset: float | None, old_rem: int | None, old_reset: float | None) -> int | None:
    if rem is None or old_rem is None or reset is None or old_reset is None or abs(reset - old_reset) > SAME_WINDOW_S:
        return rem
    return min(rem, old_rem)


class Slot(NamedTuple):
    start: float  # time.time() the next call may start
    spacing: float  # how long after it the one after may


def plan(sig: RateSignal, now: float, next_free: float, owed: int, owed_tokens: int, tokens: int, share: int = 1) -> Slot:
    """When the next call (of `tokens` estimated tokens) may start. `next_free`: the earliest
    start the previous one left. Each dimension (requests, tokens) spreads what is left of it
    over the time to its reset; the stricter one wins. `share`: how many worker processes of
    the pool split the window (each sees the same signal, so each takes its part of it)."""
    start, spacing = max(now, next_free), 0.0
    dims = ((sig.requests_remaining, sig.requests_reset_at, sig.requests_limit, owed, 1),
            (sig.tokens_remaining, sig.tokens_reset_at, sig.tokens_limit, owed_tokens, tokens))
    for remaining, reset_at, limit, owe, need in dims:
        if remaining is None:
            continue
        reset_at = reset_at if reset_at is not None else sig.at + UNKNOWN_RESET_S
        if start >= reset_at:
            # Refilled since this observation: its limit, unspaced, until a call brings word of the new window.
            if limit is not None and owe + need > limit // share and owe:
                start = max(start, now + UNKNOWN_RESET_S)
            continue
        left = remaining // share - owe
        if left < need:  # spent (or owed to calls in flight): wait the window out
            start = reset_at + RESET_MARGIN_S
            continue
        spacing = max(spacing, (reset_at - start) * need / left)
    return Slot(start, spacing)


def est_tokens(job: Job) -> int:
    """Tokens a call may count against a tokens-per-minute window: its prompt (at 4 bytes a
    token) and the most it may answer, as the providers count them."""
    if job.embeddings is not None:
        return job.embeddings.input_bytes() // 4 + 1
    req = job.request
    return sum(len(m.text()) for m in req.messages) // 4 + (req.max_tokens or req.max_completion_tokens or 0) + 1


Congestion = Literal["ok", "congested", "neutral"]


def congestion(outcome: Outcome) -> Congestion:
    """What an outcome says of the provider's load: a 429 (not a quota, not a full flex tier),
    a 5xx or a timeout says too much; an answer says fine; a bad request says nothing."""
    match outcome:
        case Ok():
            return "ok"
        case RateLimited(hard=False, unavailable=False) | ServerError() | Timeout():
            return "congested"
    return "neutral"


class Limit(NamedTuple):
    limit: int
    wins: int = 0  # successes since the last change
    cut_at: float = 0.0  # when it was last halved


def adapt(state: Limit, seen: Congestion, started: float, now: float, floor: int, cap: int) -> Limit:
    """AIMD. A congested call started before the last cut was launched under the old limit:
    the cut already answered it, so a burst of failures halves once, not down to the floor."""
    if seen == "ok":
        if state.limit >= cap:
            return state
        wins = state.wins + 1
        return Limit(min(cap, state.limit + 1), 0, state.cut_at) if wins >= state.limit else Limit(state.limit, wins, state.cut_at)
    if seen == "congested" and started >= state.cut_at and state.limit > floor:
        return Limit(max(floor, state.limit // 2), 0, now)
    return state


def lane_caps(base: list[int], limit: int, cap: int) -> list[int]:
    """Each lane's share of the limit, in proportion to its share of the cap, at least 1."""
    return [max(1, round(b * limit / cap)) for b in base]
