"""Priority lanes: interactive jobs are not stuck behind a saturating batch."""

from __future__ import annotations

import asyncio
import time

from panelboard.config import load
from panelboard.transport.streams import lane_caps
from panelboard.schemas.job import Completed
from tests.conftest import TEST_CONFIG

MSG = [{"role": "user", "content": "Classify: 'great product'"}]


def test_lane_caps_split_the_provider_cap_and_never_exceed_it():
    cfg = load(TEST_CONFIG)
    assert lane_caps(cfg, "laned") == {"interactive": 2, "batch": 6}
    assert lane_caps(cfg, "oa") == {"interactive": 64}  # no batch_share: one lane for both


async def test_interactive_jobs_finish_while_a_batch_saturates_the_provider(client, mock):
    # Given a batch of 120 jobs of 200 ms each on a provider with 8 slots (6 for batch): ~4 s of work
    t0 = time.monotonic()
    batch = [await client.submit(MSG, intent="laned", priority="batch") for _ in range(120)]
    # When 10 interactive jobs arrive behind it
    t_int = time.monotonic()
    interactive = [await client.submit(MSG, intent="laned") for _ in range(10)]
    done_at: dict[str, float] = {}

    async def wait(h):
        r = await h.result(timeout=60)
        done_at[h.id] = time.monotonic()
        return r

    results = await asyncio.gather(*(wait(h) for h in batch + interactive))
    # Then they all complete, the interactive ones (2 reserved slots x 200 ms: ~1 s of work)
    # before even half the batch ahead of them (6 slots: ~4 s), and the provider never sees
    # more than its 8 slots. Compared within the run, so a busy machine slows both alike.
    assert all(isinstance(r, Completed) for r in results)
    worst_interactive = max(done_at[h.id] for h in interactive) - t_int
    batch_done = max(done_at[h.id] for h in batch) - t0
    batch_half = sorted(done_at[h.id] for h in batch)[len(batch) // 2] - t0
    print(f"\ninteractive worst wait {worst_interactive:.2f}s; half the batch of 120 done at {batch_half:.2f}s, all at {batch_done:.2f}s")
    assert t_int - t0 + worst_interactive < batch_half
    assert mock.stats()["max_in_flight"]["laned"] <= 8
