"""Which lane a job takes: realtime (pb.dispatch) or the first hop's provider batch. Pure; the
broker publishes where this says (transport/lanes.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

from panelboard.schemas.config import Config
from panelboard.schemas.job import Job, Route
from panelboard.schemas.lanes import capability

LaneName = Literal["realtime", "batch", "flex"]


class LaneChoice(msgspec.Struct, frozen=True):
    lane: LaneName
    why: str


def choose(job: Job, route: Route, cfg: Config, now: float) -> LaneChoice:
    """A deferrable job (it asks for a lane, or its deadline is at least the lane's min_slack_s
    away) rides the first hop's batch lane, else its flex tier. A provider batch that has not
    answered by its earliest deadline minus reserve_s goes realtime, so a deadline within
    reserve_s gains nothing there."""
    if not route.chain:
        return LaneChoice("realtime", "the route has no hop")
    if job.lane == "realtime":
        return LaneChoice("realtime", "the job asks for the realtime lane")
    hop = route.chain[0]
    cap = capability(cfg, hop.model)
    flex = cfg.providers[hop.provider].flex if hop.provider in cfg.providers else None
    left = None if job.deadline is None else job.deadline - now
    if cap is not None and job.lane != "flex":
        if left is not None and left < cap.reserve_s:
            return LaneChoice("realtime", f"its deadline is {left:.0f}s away, within the batch lane's reserve of {cap.reserve_s:.0f}s")
        if job.lane == "batch":
            return LaneChoice("batch", f"the job asks for the batch lane; {hop.model} bills it at {cap.discount:.0%} of list price")
        if left is not None and left >= cap.min_slack_s:
            return LaneChoice("batch", f"its deadline is {left:.0f}s away (>= min_slack_s {cap.min_slack_s:.0f}s); "
                                       f"{hop.model}'s batch API bills {cap.discount:.0%} of list price")
    if flex is not None and (job.lane in ("batch", "flex") or (left is not None and left >= flex.min_slack_s)):
        return LaneChoice("flex", f"deferrable, and {hop.provider}'s flex tier bills {flex.discount:.0%} of list price"
                                  + ("" if cap is None else " (the job asks for flex)"))
    if cap is None and flex is None:
        return LaneChoice("realtime", f"{hop.model} declares no batch lane or flex tier")
    if left is None:
        return LaneChoice("realtime", "no deadline: a job without one is answered now (ask with lane: batch to wait)")
    slack = min(x.min_slack_s for x in (cap, flex) if x is not None)
    return LaneChoice("realtime", f"its deadline is {left:.0f}s away, under the min_slack_s of {slack:.0f}s")
