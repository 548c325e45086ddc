"""The flex lane at a worker, pure: whether this call uses the provider's flex tier, where a
hop's attempt numbers start, the standard-tier dispatch a flex refusal becomes, and what tells
the two dispatches of one hop apart."""

from __future__ import annotations

import msgspec

from panelboard.schemas.config import FlexLane, Provider
from panelboard.schemas.job import Attempt, Dispatch
from panelboard.schemas.lanes import BATCH_ATTEMPT


def flex_of(d: Dispatch, provider: Provider) -> FlexLane | None:
    """The flex tier this call rides: the dispatch asks for it and the provider offers it."""
    return provider.flex if d.lane == "flex" and not d.shadow else None


Step = tuple[str, str, int, int, bool, str | None]


def step_of(d: Dispatch) -> Step:
    """What a delivery runs: (team, job, run, hop, shadow, lane). A redelivery of a dispatch is
    the same step; a flex call and the standard call its refusal moves to are two steps, so a
    worker that receives the second while it still holds the first runs it."""
    job = d.job
    return (job.team, job.id, job.run, d.hop, d.shadow, d.lane)


def moved_to_standard(d: Dispatch, recorded: list[Attempt]) -> bool:
    """A redelivered flex dispatch whose hop already moved to the standard tier (the worker
    stopped, or its ack was lost, after it recorded the refusal)."""
    return d.lane == "flex" and any(a.decision == "standard" for a in recorded)


def first_attempt(d: Dispatch) -> int:
    """A first delivery's attempt number: past the calls this hop already made on another tier
    (a flex call moved to standard), so no request id or cost-record key is used twice."""
    seen = [a.attempt for a in d.history if a.hop == d.hop and a.attempt < BATCH_ATTEMPT]
    return max(seen) + 1 if seen else 0


def to_standard(d: Dispatch, history: list[Attempt]) -> Dispatch:
    """The same hop on the standard tier, after the flex tier answered "resource unavailable"."""
    return msgspec.structs.replace(d, lane=None, history=history)
