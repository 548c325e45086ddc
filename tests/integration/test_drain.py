"""`panelboard drain` during a run: the drained pool finishes its calls and hands back the rest,
leaving nothing unacked; a replacement finishes the batch with no job run twice; a full drain
stops every process cleanly."""

from __future__ import annotations

import asyncio
import time

import httpx

from panelboard.clients import Client
from panelboard.transport import streams
from panelboard.schemas.job import Completed
from panelboard.stack import Stack
from panelboard.transport.connection import connect
from tests.conftest import TEST_CONFIG, run_cli


def drain(stack: Stack, *args: str):
    return run_cli("drain", *args, "--config", str(TEST_CONFIG), "--nats-url", stack.nats_url or "", timeout=120)


JOBS = 200  # 4 slots, 200 ms calls: ~10 s of work, so the drain lands mid-run even on a busy box


async def test_drain_mid_batch_leaves_nothing_unacked_and_no_job_runs_twice(tmp_path):
    with Stack(tmp_path, config=TEST_CONFIG, mock_args=["--latency-ms", "5"]) as stack:
        stack.start(workers=1, ledger=False)
        mock = httpx.Client(base_url=stack.mock_url or "", timeout=10)
        capped_calls = lambda: [e for e in mock.get("/_mock/log", params={"provider": "capped"}).json()]  # noqa: E731
        nc = await connect(stack.nats_url or "", "drain-test")
        js = nc.jetstream()
        try:
            await _run(stack, js, capped_calls)
        finally:
            await nc.close()


async def _run(stack: Stack, js, capped_calls) -> None:
    async with Client(stack.nats_url) as c:
        handles = [await c.submit([{"role": "user", "content": f"job {i}"}], intent="capped") for i in range(JOBS)]
        deadline = time.monotonic() + 60
        while len(capped_calls()) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

        out = drain(stack, "--provider", "capped")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "draining pool capped" in out.stdout and "drained pool capped" in out.stdout
        info = (await streams.pool_depths(js))[("capped", "interactive")]  # every team's consumer summed
        assert info.running == 0  # every call finished and acked, every held delivery handed back
        served = len(capped_calls())
        assert 4 <= served < JOBS and info.queued == JOBS - served, (served, info.queued)
        assert stack.procs["worker-0"].poll() is None  # its other pools still serve
        assert isinstance(await (await c.submit([{"role": "user", "content": "hi"}], intent="fast")).result(timeout=60), Completed)

        stack.start_worker("worker-capped", providers=["capped"])
        results = [await h.result(timeout=180) for h in handles]
    assert all(isinstance(r, Completed) for r in results)
    calls = capped_calls()
    assert len(calls) == JOBS and len({e["request_id"] for e in calls}) == JOBS  # each job called once: none re-run

    out = drain(stack)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("broker", "worker-0", "worker-capped"):
        assert stack.procs[name].wait(60) == 0, name
