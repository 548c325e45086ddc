"""Which lane a job takes: realtime (pb.dispatch) or the first hop's provider batch. Pure; the
broker publishes where this says (transport/lanes.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

from panelboard.schemas.config import Config
from panelboard.schemas.job import Job, Route
from panelboard.schemas.lanes import capability

LaneName = Literal["realtime", "batch"]


class LaneChoice(msgspec.Struct, frozen=True):
    lane: LaneName
    why: str


def choose(job: Job, route: Route, cfg: Config, now: float) -> LaneChoice:
    """The batch lane needs a first hop that declares one, and a job that asks for it or whose
    deadline is at least the lane's min_slack_s away: a provider batch that has not answered by
    its earliest deadline minus reserve_s goes realtime, so slack below that gains nothing."""
    if not route.chain:
        return LaneChoice("realtime", "the route has no hop")
    hop = route.chain[0]
    cap = capability(cfg, hop.model)
    if job.lane == "realtime":
        return LaneChoice("realtime", "the job asks for the realtime lane")
    if cap is None:
        return LaneChoice("realtime", f"{hop.model} declares no batch lane")
    left = None if job.deadline is None else job.deadline - now
    if left is not None and left < cap.reserve_s:
        return LaneChoice("realtime", f"its deadline is {left:.0f}s away, within the batch lane's reserve of {cap.reserve_s:.0f}s")
    if job.lane == "batch":
        return LaneChoice("batch", f"the job asks for the batch lane; {hop.model} bills it at {cap.discount:.0%} of list price")
    if left is None:
        return LaneChoice("realtime", "no deadline: a job without one is answered now (ask with lane: batch to wait)")
    if left >= cap.min_slack_s:
        return LaneChoice("batch", f"its deadline is {left:.0f}s away (>= min_slack_s {cap.min_slack_s:.0f}s); "
                                   f"{hop.model}'s batch API bills {cap.discount:.0%} of list price")
    return LaneChoice("realtime", f"its deadline is {left:.0f}s away, under the batch lane's min_slack_s of {cap.min_slack_s:.0f}s")
