"""`panelboard status` reports what the streams hold: a pool's depth, its oldest waiting job,
slots in use against its cap, and a hint that matches why it is not draining faster."""

from __future__ import annotations

import asyncio
import json
import time

from panelboard.clients import Client
from panelboard.transport import streams
from panelboard.stack import Stack
from panelboard.transport.connection import connect
from tests.conftest import TEST_CONFIG, run_cli


def pools(stack: Stack) -> dict[str, dict]:
    out = run_cli("status", "--json", "--sample-s", "1", "--config", str(TEST_CONFIG), "--nats-url", stack.nats_url or "", timeout=60)
    assert out.returncode == 0, out.stderr
    return {p["provider"]: p for p in json.loads(out.stdout)["pools"]}


async def depth(js) -> streams.PoolDepth:
    """The capped pool's figures straight from JetStream, every team's consumer summed."""
    return (await streams.pool_depths(js)).get(("capped", "interactive")) or streams.PoolDepth()


async def test_status_figures_match_the_pool_consumer_and_the_hint_names_the_bottleneck(tmp_path):
    with Stack(tmp_path, config=TEST_CONFIG, mock_args=["--latency-ms", "5"]) as stack:
        stack.start(workers=0, ledger=False)  # nobody serves the pools yet: jobs wait in PB_DISPATCH
        async with Client(stack.nats_url) as c:
            first = time.time()
            handles = [await c.submit([{"role": "user", "content": f"job {i}"}], intent="capped") for i in range(60)]
            nc = await connect(stack.nats_url or "", "status-test")
            js = nc.jetstream()
            deadline = time.monotonic() + 60
            while (info := await depth(js)).queued < 60 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert info.queued == 60

            row = pools(stack)["capped"]
            info = await depth(js)
            assert (row["queued"], row["running"], row["cap"]) == (info.queued, info.running, 4) == (60, 0, 4)
            assert row["oldest_age_s"] >= 1.0 and row["oldest_age_s"] <= time.time() - first + 1  # the first job, not the last
            assert row["drain_per_s"] == 0.0 and row["empty_in_s"] is None
            assert "add worker processes" in row["hint"]
            assert pools(stack)["oa"]["hint"] == "idle"

            stack.start_worker("worker-capped", providers=["capped"])  # 4 slots, 200 ms calls: capped at ~20 jobs/s
            deadline = time.monotonic() + 90
            seen = None
            while time.monotonic() < deadline:
                row = pools(stack)["capped"]
                if row["running"] == 4 and row["queued"] > 0:
                    seen = row
                    break
            assert seen is not None, f"never saw the pool at its cap with jobs queued: {row}"
            assert "capped by max_concurrency 4" in seen["hint"] and "would not help" in seen["hint"]
            assert seen["drain_per_s"] > 0 and seen["empty_in_s"] is not None
            assert all([await h.result(timeout=120) for h in handles])
            await nc.close()
        row = pools(stack)["capped"]
        assert (row["queued"], row["running"], row["hint"]) == (0, 0, "idle")
