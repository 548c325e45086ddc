"""The client SDK beyond submit/result: as_completed, map with a window, cancel, deadlines,
the sync facade, and riding out a nats-server restart with the same job ids."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import pytest

from panelboard.clients import Client, JobCancelledError, SyncClient, unwrap
from panelboard.clients.errors import DeadlineExceededError, UnknownIntentError
from panelboard.natsserver import NatsServer
from panelboard.stack import Stack
from panelboard.schemas.errors import Cancelled, DeadlineExceeded, UnknownIntent
from panelboard.schemas.job import Completed, Failed
from tests.conftest import ROOT, TEST_CONFIG, Mock
from tests.support.invariants import check

MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


def calls_for(mock, job_id: str, provider: str | None = None) -> int:
    return sum(1 for e in mock.log(provider) if e["request_id"].split(":")[0] == job_id)


async def saturate_capped(client: Client, n: int) -> list:
    """n jobs on the 4-slot, 200 ms provider: a queue that takes n/4 x 200 ms to drain."""
    return [await client.submit(MSG, intent="capped") for _ in range(n)]


async def test_as_completed_yields_results_as_they_finish(client):
    # Given a slow job (200 ms) submitted before two fast ones
    slow = await client.submit(MSG, intent="capped")
    fast = [await client.submit(MSG, intent="fast") for _ in range(2)]
    # When we iterate as they complete
    order = [r.job_id async for r in client.as_completed([slow, *fast], timeout=30)]
    # Then every job is yielded once, the slow one last
    assert sorted(order) == sorted([slow.id, fast[0].id, fast[1].id]) and order[-1] == slow.id


async def test_map_keeps_its_window_and_the_input_order(client, monkeypatch):
    # Given a spy on submissions: how many jobs are out (submitted, not yet yielded) at any time
    out = peak = 0
    real = client.submit_job

    async def spy(job, **kw):
        nonlocal out, peak
        out += 1
        peak = max(peak, out)
        return await real(job, **kw)

    monkeypatch.setattr(client, "submit_job", spy)
    prefix = "map-" + uuid.uuid4().hex[:8]
    prompts = (f"Classify ticket {i}" for i in range(30))  # a generator: read as the window moves
    # When 30 prompts are mapped with a window of 4
    got = []
    async for r in client.map(prompts, intent="fast", concurrency=4, id_prefix=prefix, max_tokens=8):
        got.append(r)
        out -= 1
    # Then the results come back in input order, typed, with never more than 4 jobs out
    assert [r.job_id for r in got] == [f"{prefix}-{i}" for i in range(30)]
    assert all(isinstance(r, Completed) and r.response.usage.completion_tokens <= 8 for r in got)
    assert peak <= 4
    # And mapping the same ids again returns the same results without new jobs (idempotent by id)
    again = [r async for r in client.map((f"Classify ticket {i}" for i in range(30)), intent="fast", id_prefix=prefix, ordered=False)]
    assert {r.job_id: r.response.id for r in again} == {r.job_id: r.response.id for r in got}


MAP_SCRIPT = """
import json, sys
from panelboard.clients import SyncClient
with SyncClient(sys.argv[1]) as c:  # a new process: a new client id
    out = {r.job_id: r.response.id for r in c.map((f"Summarise note {i}" for i in range(12)), intent="fast", id_prefix=sys.argv[2], timeout=60)}
print(json.dumps(out))
"""


def test_a_map_rerun_in_a_new_process_returns_the_same_results_without_new_calls(stack, mock):
    # Given a map with an id prefix, run to the end in one process
    prefix = "rerun-" + uuid.uuid4().hex[:8]

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", MAP_SCRIPT, stack.nats_url, prefix], capture_output=True, text=True, timeout=120,
                             cwd=str(ROOT))
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    first = run()
    calls = sum(1 for e in mock.log("oa") if e["request_id"].startswith(prefix + "-"))
    # When the same map runs again in a second process
    t0 = time.monotonic()
    second = run()
    # Then every job's result is the same one, and the provider was not called again
    assert second == first and len(first) == 12
    assert calls == 12 and sum(1 for e in mock.log("oa") if e["request_id"].startswith(prefix + "-")) == calls
    print(f"\nrerun of 12 jobs in a new process: {time.monotonic() - t0:.2f}s, 0 new provider calls")


async def test_map_yields_failures_as_typed_results_and_unwrap_raises_their_exception(client):
    results = [r async for r in client.map(["a", "b"], intent="astrology")]
    assert all(isinstance(r, Failed) and isinstance(r.error, UnknownIntent) for r in results)
    with pytest.raises(UnknownIntentError, match="astrology"):
        unwrap(results[0])


async def test_cancel_takes_a_queued_job_out_and_it_is_never_called(client, mock):
    # Given the 4-slot provider busy with 12 jobs, and one more job queued behind them
    ahead = await saturate_capped(client, 12)
    last = await client.submit(MSG, intent="capped")
    # When the queued job is cancelled, and so is one that is already running
    assert await last.cancel() is True
    assert await client.cancel(ahead[0].id) is False
    # Then the queued one fails as cancelled (a JobCancelledError for response()), never called,
    # and the running one completes
    r = await last.result(timeout=30)
    assert isinstance(r, Failed) and isinstance(r.error, Cancelled)
    with pytest.raises(JobCancelledError):
        await last.response(timeout=5)
    done = [await h.result(timeout=30) for h in ahead]
    assert all(isinstance(x, Completed) for x in done)
    assert calls_for(mock, last.id, "capped") == 0 and calls_for(mock, ahead[0].id, "capped") == 1


async def test_a_job_already_past_its_deadline_fails_at_once_without_a_call(client, mock):
    h = await client.submit(MSG, intent="fast", deadline=time.time() - 1)
    r = await h.result(timeout=10)
    assert isinstance(r, Failed) and isinstance(r.error, DeadlineExceeded)
    with pytest.raises(DeadlineExceededError):
        await h.response(timeout=5)
    assert calls_for(mock, h.id) == 0


async def test_a_job_whose_deadline_passes_in_the_queue_is_not_started(client, mock):
    # Given 16 jobs ahead on the 4-slot, 200 ms provider (about 0.8 s of queue)
    ahead = await saturate_capped(client, 16)
    # When a job that must start within 0.3 s joins the queue
    h = await client.submit(MSG, intent="capped", deadline=time.time() + 0.3)
    r = await h.result(timeout=30)
    # Then the worker fails it with DeadlineExceeded instead of burning tokens on it
    assert isinstance(r, Failed) and isinstance(r.error, DeadlineExceeded), r
    assert calls_for(mock, h.id, "capped") == 0
    assert all(isinstance(x, Completed) for x in [await a.result(timeout=30) for a in ahead])


def test_sync_facade_maps_iterates_and_cancels(stack, mock):
    with SyncClient(stack.nats_url) as c:
        results = list(c.map([f"Summarise {i}" for i in range(5)], intent="fast", concurrency=2))
        assert [type(r) for r in results] == [Completed] * 5
        ids = [c.submit(MSG, intent="fast") for _ in range(3)]
        assert sorted(r.job_id for r in c.as_completed(ids, timeout=30)) == sorted(ids)
        ahead = [c.submit(MSG, intent="capped") for _ in range(12)]
        queued = c.submit(MSG, intent="capped")
        assert c.cancel(queued) is True
        assert isinstance(c.result(queued, timeout=30).error, Cancelled)
        for j in ahead:
            c.result(j, timeout=30)
    assert calls_for(mock, queued, "capped") == 0


@pytest.mark.fault
async def test_jobs_survive_a_nats_server_restart_between_submit_and_result(tmp_path):
    # Given a stack on its own nats-server, and jobs submitted and running
    server = NatsServer(tmp_path / "nats").start()
    servers = [server]
    try:
        with Stack(tmp_path / "stack", config=TEST_CONFIG, nats_url=server.url) as s:
            s.start(workers=1, ledger=False)
            mock = Mock(s.mock_url)
            async with Client(s.nats_url) as c:
                before = [await c.submit(MSG, intent="capped") for _ in range(8)]
                # When nats-server is killed (SIGKILL) before their results
                server.kill()
                # a job submitted during the outage keeps retrying with the same id
                during = asyncio.create_task(c.submit(MSG, intent="fast", job_id="outage-" + uuid.uuid4().hex[:8]))
                await asyncio.sleep(1.0)  # the outage itself
                assert not during.done()
                servers.append(NatsServer(server.data_dir, port=server.port).start())
                h = await asyncio.wait_for(during, 60)
                results = [r async for r in c.as_completed([*before, h], timeout=120)]
                rep = await check(c.js, c.team, [x.id for x in [*before, h]], mock.settled_log, ["capped", "oa"])
    finally:
        for sv in servers:
            sv.stop()
    # Then every job has exactly one result, each provider call one cost record, nothing unacked
    print(f"\nnats-server restart: {rep.line()}")
    assert len(results) == 9 and all(isinstance(r, Completed) for r in results)
    rep.assert_holds()
