"""A lane owner that takes over a dead one's provider batch must finish it even when its first
reads time out, as NATS requests do on a busy machine. The lane runs in this test's process
(real nats-server, broker and mock provider; no worker), so the crash and the timeouts land
exactly where a replacement is most fragile: between taking the lease and resuming the KV."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from nats.errors import TimeoutError as NatsTimeout

from panelboard.clients import Client
from panelboard.config import load
from panelboard.schemas.job import Completed
from panelboard.schemas.lanes import ProviderBatch, custom_id
from panelboard.schemas.job import Dispatch
from panelboard.stack import Stack
from panelboard.workers.batch_lane import BatchLane
from tests.integration.test_batch_lane import CONFIG, DAY, BatchMock, submit

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("laneresume"), config=CONFIG)
    s.start(workers=0)  # the lanes below are the only ones
    yield s
    s.stop()


class TimesOutFirst(BatchLane):
    """A replacement whose first read of the lane's KV and first read of a resumed batch's
    jobs time out (the real nats-py error), then go through."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeouts = {"states": 1, "jobs": 1}

    def _fail(self, what: str) -> None:
        if self.timeouts[what]:
            self.timeouts[what] -= 1
            raise NatsTimeout

    async def _load_states(self) -> list[tuple[ProviderBatch, int]]:
        self._fail("states")
        return await super()._load_states()

    async def _load_jobs(self, seqs: list[int]) -> dict[int, Dispatch]:
        self._fail("jobs")
        return await super()._load_jobs(seqs)


async def until(cond, bound_s: float, what: str) -> None:
    end = time.monotonic() + bound_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(0.02)


async def test_a_replacement_whose_first_reads_time_out_still_finishes_the_dead_owners_batch(rstack):
    # Given an owner that uploaded a provider batch's file and died before it heard back
    bm = BatchMock(rstack.mock_url, "bat")
    bm.control(validate_ms=20, delay_ms=200, upload_delay_ms=3000)
    cfg = load(CONFIG)
    n = 50
    async with Client(rstack.nats_url) as c:
        ids = await submit(c, n, time.time() + DAY, f"resume-{uuid.uuid4().hex[:6]}")
        first = BatchLane(c.js, cfg, "bat")
        owner = asyncio.create_task(first.run())
        await until(lambda: bm.summary()["files"] >= 1, 60, "the first owner uploading")
        owner.cancel()  # no clean stop: its lease stays in the KV until it lapses
        await asyncio.gather(owner, return_exceptions=True)
        # When its replacement's first reads of the KV and of the batch's jobs time out
        second = TimesOutFirst(c.js, cfg, "bat")
        task = asyncio.create_task(second.run())
        try:
            results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
        finally:
            second.stopping.set()
            await asyncio.wait_for(task, 30)
    # Then the replacement met both timeouts and still answered every job from the same provider batch
    assert second.timeouts == {"states": 0, "jobs": 0}
    assert all(isinstance(r, Completed) and r.lane == "batch" for r in results)
    s = bm.summary()
    assert s["input_files"] == 1 and len(s["batches"]) == 1  # the dead owner's file, adopted, not uploaded again
    assert sorted(s["batches"][0]["custom_ids"]) == sorted(custom_id(c.team, j, 0, 0) for j in ids)
