"""Per-provider backpressure: when a provider says slow down, the whole pool stops fetching,
so jobs wait in the stream instead of failing or hammering the provider. Pure. (A window
its headers say is running out is paced before it gets here: workers/pacing.py.)"""

from __future__ import annotations

from panelboard.workers.outcome import Outcome, RateLimited

MAX_PAUSE_S = 60.0


def pause_s(outcome: Outcome, streak: int) -> float:
    """Seconds the pool should pause after this outcome (0: carry on). `streak` counts the
    429s in a row before this one, so a storm backs off harder."""
    match outcome:
        case RateLimited(unavailable=True):  # the flex tier is full; the standard tier is not
            return 0.0
        case RateLimited(hard=False, retry_after_s=after):
            return min(after if after is not None else 0.25 * 2**min(streak, 8), MAX_PAUSE_S)
    return 0.0
