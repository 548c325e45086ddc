"""Shadow mode: a sampled share of a tier's jobs is mirrored to a candidate route, billed
and recorded as shadow, and never answered to the client."""

from __future__ import annotations

import asyncio
import uuid

from panelboard.schemas.job import Completed
from tests.support.invariants import check

MSG = [{"role": "user", "content": "Extract the total: invoice 9, total $12."}]


async def test_ten_percent_sampling_mirrors_about_ten_percent_and_clients_see_only_live_results(client, mock):
    # Given the `mirrored` tier (live: oa/small) mirrors 10% of its jobs to the claude tier
    ids = [f"shadow-{uuid.uuid4().hex[:8]}-{i}" for i in range(600)]
    sem = asyncio.Semaphore(128)

    async def one(job_id: str):
        async with sem:
            return await (await client.submit(MSG, intent="mirrored", job_id=job_id)).result(timeout=60)

    # When 600 jobs run
    results = await asyncio.gather(*(one(j) for j in ids))
    # Then every client result is the live route's, exactly one per job...
    assert all(isinstance(r, Completed) and r.provider == "oa" for r in results)
    rep = await check(client.js, client.team, ids, mock.settled_log, ["oa", "an"])
    rep.assert_holds()
    # ...and about 10% of the jobs were also called on the shadow route, each recorded as shadow
    shadow = [r for r in rep.costs if r.shadow]
    live = [r for r in rep.costs if not r.shadow]
    assert len(live) == 600 and {r.provider for r in live} == {"oa"}
    assert {r.provider for r in shadow} == {"an"} and all(r.outcome == "ok" for r in shadow)
    share = len(shadow) / 600
    print(f"\nshadow: {len(shadow)} of 600 jobs mirrored ({share:.1%}); {rep.line()}")
    assert 0.06 <= share <= 0.14  # 10% +/- 4 points (binomial sd 1.2 points at n=600)
