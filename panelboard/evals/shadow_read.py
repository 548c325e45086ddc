"""Read shadow answers (PB_SHADOW) and the live results of the same jobs (PB_RESULTS) and
pair them for panelboard/evals/quality.py."""

from __future__ import annotations

import time

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from panelboard.evals.quality import Pair
from panelboard.schemas import shadow, wire
from panelboard.schemas.codec import decode_result
from panelboard.schemas.job import Completed


async def pairs(js: JetStreamContext, days: float, now: float | None = None) -> tuple[list[Pair], int]:
    """(pairs, unmatched) for every shadow answer of the window, oldest first."""
    since = (now or time.time()) - days * 86_400
    out: list[Pair] = []
    unmatched = 0
    try:
        info = await js.stream_info(shadow.SHADOW_STREAM)
    except NotFoundError:
        return out, 0
    seq = info.state.first_seq
    while True:
        try:
            raw = await js.get_msg(shadow.SHADOW_STREAM, seq=seq, subject="pb.shadow.>", direct=True, next=True)
        except NotFoundError:
            return out, unmatched
        seq = (raw.seq or seq) + 1
        ans = shadow.decode(raw.data or b"")
        if ans.ts < since:
            continue
        live = await _live(js, ans.team, ans.job_id, ans.run)
        if live is None:
            unmatched += 1
            continue
        out.append(Pair(shadow=ans, live_tier=live.tier, live_model=live.model, live_text=live.response.text, live_cost_usd=live.cost_usd))


async def _live(js: JetStreamContext, team: str, job_id: str, run: int) -> Completed | None:
    try:
        raw = await js.get_last_msg(wire.RESULTS_STREAM, wire.result(team, job_id), direct=True)
    except NotFoundError:
        return None
    result = decode_result(raw.data or b"")
    return result if isinstance(result, Completed) else None
