"""kill -9 of the process that owns a provider batch, at each stage: 0 jobs lost, 0 submitted
twice to the provider. The mock holds the answer of the step under test (the step is done
provider-side, its answer never reaches the killed process), so every kill lands where a
crash is hardest: after the provider acted, before we recorded it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest

from panelboard.clients import Client
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost
from panelboard.schemas.job import Completed
from panelboard.schemas.lanes import custom_id
from panelboard.stack import Stack
from tests.integration.test_batch_lane import CONFIG, DAY, BatchMock, submit
from tests.support.invariants import read_all

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def cstack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("lanecrash"), config=CONFIG)
    s.start(workers=1)
    yield s
    s.stop()


async def wait_for(cond, bound_s: float, what: str) -> None:
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        if await cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached: {what}")


# stage -> (mock settings, jobs, when to kill)
STAGES = {
    "uploading": ({"upload_delay_ms": 4000}, 300, lambda s, done: s["files"] >= 1),
    "creating": ({"create_delay_ms": 4000}, 300, lambda s, done: len(s["batches"]) >= 1),
    "polling": ({"delay_ms": 4000}, 300, lambda s, done: any(b["status"] == "in_progress" for b in s["batches"])),
    "fanning_out": ({"delay_ms": 200}, 1000, lambda s, done: 0 < done < 1000),
}


CASES = [("bat", stage) for stage in STAGES] + [("abat", stage) for stage in STAGES if stage != "uploading"]  # Anthropic uploads nothing


@pytest.mark.parametrize("provider, stage", CASES, ids=[f"{'openai' if p == 'bat' else 'anthropic'}-{s}" for p, s in CASES])
async def test_kill_9_of_the_batch_owner_loses_no_job_and_submits_none_twice(cstack, provider, stage):
    settings, n, kill_when = STAGES[stage]
    bm = BatchMock(cstack.mock_url, provider)
    bm.control(validate_ms=20, **settings)
    prefix = f"k{provider}{stage[:4]}-{uuid.uuid4().hex[:6]}"
    async with Client(cstack.nats_url) as c:
        ids = await submit(c, n, time.time() + DAY, prefix, intent=provider)

        async def stored() -> dict[str, int]:
            """Results per job subject of this test, as the stream counts them."""
            info = await c.js.stream_info(wire.RESULTS_STREAM, subjects_filter=f"pb.results.{c.team}.>")
            return {k: v for k, v in (info.state.subjects or {}).items() if k.startswith(f"pb.results.{c.team}.{prefix}-")}

        async def done() -> int:
            return len(await stored())

        async def reached() -> bool:
            return bool(kill_when(bm.summary(), await done()))

        # When the owning worker is killed at the stage, and a replacement starts
        await wait_for(reached, 60, stage)
        victim = next(name for name in cstack.procs if name.startswith("worker"))
        cstack.kill_proc(victim)
        cstack.start_worker(f"{victim}-after-{stage}")
        results = await asyncio.gather(*(c.result(j, timeout=120) for j in ids))
        want = set(ids)
        costs = [r for r in (decode_cost(d) for _, d in await read_all(c.js, wire.COSTS_STREAM, wire.cost(c.team))) if r.job_id in want]
        per_job = await stored()
    # Then every job has exactly one result, answered by the batch lane
    assert all(isinstance(r, Completed) and r.lane == "batch" for r in results)
    assert len(per_job) == n and set(per_job.values()) == {1}
    # the provider saw each job once: one input file per batch, each custom id in one batch, run once
    s = bm.summary()
    lines = Counter(cid for b in s["batches"] for cid in b["custom_ids"])
    assert set(lines) == {custom_id(c.team, j, 0, 0) for j in ids} and max(lines.values()) == 1, lines.most_common(3)
    assert s["lines_run"] == n
    assert s["input_files"] == (len(s["batches"]) if provider == "bat" else 0)  # nothing uploaded twice
    # and each job has one cost record, at the lane's price
    assert sorted(r.job_id for r in costs) == sorted(ids) and all(r.lane == "batch" for r in costs)
