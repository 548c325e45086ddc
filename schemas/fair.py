"""Fair share among teams: the plan one pool process (the provider's controller, see
workers/fair.py) writes to PB_LANE_STATE, and every pool process of the provider follows.

Each team's dispatches have their own subject (pb.dispatch.<provider>.<lane>.<team>) and so
their own durable consumer; the plan names, per lane, the teams whose consumer exists and its
max_ack_pending. The controller keeps those limits summing to at most the lane's cap, so the
provider's max_concurrency stays a hard ceiling across every worker process.
"""

from __future__ import annotations

import msgspec

class Plan(msgspec.Struct, kw_only=True, frozen=True):
    lanes: dict[str, dict[str, int]] = {}  # lane -> team -> max_ack_pending; team "": the lane's own consumer, for
    # pb.dispatch.<provider>.<lane> as older versions published it


def lease_key(provider: str) -> str:
    return f"fair.{provider}"


def plan_key(provider: str) -> str:
    return f"fairplan.{provider}"
