"""The provider batch lane end to end: real nats-server, broker, worker and the mock's OpenAI
Files + Batches endpoints. Jobs whose deadline leaves room ride a provider batch at half
price; a batch that expires or runs late gives its jobs to realtime in time."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from nats.js.errors import NotFoundError

from panelboard import queries, render
from panelboard.transport import db
from panelboard.schemas.pricing import call_cost
from panelboard.clients import Client
from panelboard.config import load
from panelboard.schemas import wire
from panelboard.clients import control
from panelboard.schemas.codec import decode_result
from panelboard.schemas.control import CancelReply, CancelRequest
from panelboard.schemas.job import Completed, Failed
from panelboard.schemas.lanes import BATCH_ATTEMPT, custom_id
from panelboard.stack import Stack
from tests.conftest import ROOT
from tests.support.invariants import read_all
from panelboard.schemas.codec import decode_cost

CONFIG = ROOT / "tests" / "data" / "lanes.yaml"
MSG = [{"role": "user", "content": "Summarise this quarter's tickets"}]
DAY = 86_400.0


@pytest.fixture(scope="module")
def lstack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("lanes"), config=CONFIG)
    s.start(workers=1)
    yield s
    s.stop()


class BatchMock:
    def __init__(self, url: str, provider: str = "bat"):
        self.provider = provider
        self.http = httpx.Client(base_url=url, timeout=10)
        self.http.post("/_mock/batches/reset").raise_for_status()
        self.http.post("/_mock/reset").raise_for_status()

    def control(self, **settings) -> None:
        self.http.post("/_mock/batches/control", json={"provider": self.provider, **settings}).raise_for_status()

    def summary(self) -> dict:
        empty = {"files": 0, "input_files": 0, "lines_run": 0, "batches": []}
        return self.http.get("/_mock/batches", params={"provider": self.provider}).json().get(self.provider, empty)

    def log(self) -> list[dict]:
        return self.http.get("/_mock/log", params={"provider": self.provider}).json()


@pytest.fixture
def bmock(lstack) -> BatchMock:
    return BatchMock(lstack.mock_url)


async def submit(c: Client, n: int, deadline: float, prefix: str, intent: str = "bat") -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    sem = asyncio.Semaphore(256)

    async def one(j: str) -> None:
        async with sem:
            await c.submit(MSG, intent=intent, job_id=j, max_tokens=32, deadline=deadline)

    await asyncio.gather(*(one(j) for j in ids))
    return ids


async def costs_of(c: Client, ids: list[str]) -> list:
    want = set(ids)
    return [r for r in (decode_cost(d) for _, d in await read_all(c.js, wire.COSTS_STREAM, wire.cost(c.team))) if r.job_id in want]


@pytest.mark.parametrize("provider, model_name", [("bat", "bat/small"), ("abat", "abat/claude")], ids=["openai", "anthropic"])
async def test_2000_jobs_with_a_24h_window_ride_the_provider_batch_api_at_half_price(lstack, provider, model_name):
    # Given a provider whose batch API (OpenAI Files + Batches, or Anthropic Message Batches) bills half price, 500 lines a batch
    bmock = BatchMock(lstack.mock_url, provider)
    bmock.control(validate_ms=50, delay_ms=500)
    model = load(CONFIG).models[model_name]
    async with Client(lstack.nats_url) as c:
        # When 2,000 jobs arrive with a 24 h deadline
        ids = await submit(c, 2000, time.time() + DAY, f"b24{provider}-{uuid.uuid4().hex[:6]}", intent=provider)
        results = await asyncio.gather(*(c.result(j, timeout=180) for j in ids))
        costs = await costs_of(c, ids)
    # Then each ends in one Completed answered by the batch lane, billed at half the list price
    assert all(isinstance(r, Completed) and r.lane == "batch" for r in results)
    for r in results:
        u = r.response.usage
        assert r.cost_usd == pytest.approx(0.5 * call_cost(model, u.prompt_tokens, u.completion_tokens))
    # one cost record per job, marked with the lane, at the discounted price
    assert len(costs) == 2000 and len({r.job_id for r in costs}) == 2000
    assert all(r.lane == "batch" and r.attempt == BATCH_ATTEMPT and r.outcome == "ok" for r in costs)
    assert sum(r.cost_usd for r in costs) == pytest.approx(sum(r.cost_usd for r in results))
    # and the provider ran exactly one batch line per job, and no realtime call
    s = bmock.summary()
    lines = [cid for b in s["batches"] for cid in b["custom_ids"]]
    assert len(lines) == 2000 and set(lines) == {custom_id(c.team, j, 0, 0) for j in ids}
    assert len(s["batches"]) == 4 and all(b["status"] == "completed" for b in s["batches"])
    assert s["input_files"] == (4 if provider == "bat" else 0)  # Anthropic's requests travel inline
    log = bmock.log()
    assert len(log) == 2000 and len({e["request_id"] for e in log}) == 2000


async def test_an_expired_provider_batch_falls_back_to_realtime_and_meets_the_deadline(lstack, bmock):
    # Given a provider whose "24h" window lasts 1 s on the mock's clock, and which never finishes in it
    bmock.control(validate_ms=0, delay_ms=600_000, window_s=1.0)
    async with Client(lstack.nats_url) as c:
        # When jobs with a 30 s deadline ride the batch lane
        deadline = time.time() + 30
        ids = await submit(c, 20, deadline, f"exp-{uuid.uuid4().hex[:6]}")
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
        done_at = time.time()
        costs = await costs_of(c, ids)
    # Then the batch expires, every job is answered realtime, before its deadline
    assert [b["status"] for b in bmock.summary()["batches"]] == ["expired"]
    assert all(isinstance(r, Completed) and r.lane is None for r in results), results[0]
    assert done_at < deadline
    assert all(r.attempts[0].attempt == BATCH_ATTEMPT and r.attempts[0].decision == "realtime" for r in results)
    assert len(costs) == 20 and all(r.lane is None for r in costs)  # expired lines are not billed


async def test_a_provider_batch_running_late_is_cancelled_and_its_jobs_go_realtime_in_time(lstack, bmock):
    # Given a provider batch that would take 10 minutes
    bmock.control(validate_ms=0, delay_ms=600_000)
    async with Client(lstack.nats_url) as c:
        # When jobs whose deadline is 12 s away ride it (reserve_s: 4 s)
        deadline = time.time() + 12
        ids = await submit(c, 20, deadline, f"late-{uuid.uuid4().hex[:6]}")
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
        done_at = time.time()
    # Then it is cancelled provider-side and the jobs are answered realtime before the deadline
    assert [b["status"] for b in bmock.summary()["batches"]] == ["cancelled"]
    assert all(isinstance(r, Completed) and r.lane is None for r in results)
    assert done_at < deadline


async def test_report_savings_shows_what_the_batch_lane_saved_against_list_price(lstack):
    # Given batch-lane jobs and realtime jobs, their cost records in the stack's SQLite ledger
    BatchMock(lstack.mock_url).control(validate_ms=0, delay_ms=100)
    async with Client(lstack.nats_url) as c:
        tag = uuid.uuid4().hex[:6]
        deferred = await submit(c, 30, time.time() + DAY, f"sv-b-{tag}")
        now = [f"sv-r-{tag}-{i}" for i in range(10)]
        for j in now:
            await c.submit(MSG, intent="bat", job_id=j, max_tokens=32)
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in deferred + now))
    spent = sum(r.cost_usd for r in results[:30])
    engine = db.open_engine(db.default_url(lstack.home))
    try:
        async def ledger_has_them() -> bool:
            import sqlite3

            path = db.sqlite_path(str(engine.url))
            with sqlite3.connect(str(path)) as con:  # this test's own rows, by job id
                n = con.execute("SELECT count(*) FROM cost_records WHERE job_id LIKE ?", (f"sv-%-{tag}%",)).fetchone()[0]
            return n >= 40
        deadline = time.monotonic() + 60
        while not await ledger_has_them() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        # When the savings report is read
        rep = await queries.savings(engine, load(CONFIG), days=1)
    finally:
        await engine.dispose()
    # Then the batch lane saved half of list price on its calls, the realtime lane nothing
    lanes = {ln.lane: ln for ln in rep.lanes}
    assert lanes["batch"].saved_pct == 50.0 and lanes["batch"].actual_usd >= round(spent, 6) - 1e-9
    assert lanes["realtime"].saved_usd == 0
    assert "lane batch:" in "\n".join(render.savings_table(rep).notes)


async def test_flex_tier_refusals_move_to_the_standard_tier_of_the_same_hop(lstack):
    # Given a provider whose flex tier refuses every second call with 429 resource_unavailable
    fm = BatchMock(lstack.mock_url, "flx")
    fm.control(flex_unavailable_every=2)
    model = load(CONFIG).models["flx/small"]
    async with Client(lstack.nats_url) as c:
        # When 20 deferrable jobs run there (no retries, and a 429 would otherwise move them to `bat`)
        ids = await submit(c, 20, time.time() + DAY, f"flex-{uuid.uuid4().hex[:6]}", intent="flx")
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
        costs = await costs_of(c, ids)
    assert all(isinstance(r, Completed) and r.provider == "flx" for r in results)
    flexed = [r for r in results if r.lane == "flex"]
    moved = [r for r in results if r.lane is None]
    # Then the answered flex calls bill half price; the refused ones were answered on the standard tier
    assert len(flexed) == 10 and len(moved) == 10
    for r in flexed:
        u = r.response.usage
        assert r.cost_usd == pytest.approx(0.5 * call_cost(model, u.prompt_tokens, u.completion_tokens))
    for r in moved:
        assert [(a.attempt, a.status, a.decision) for a in r.attempts] == [(0, 429, "standard"), (1, 200, "succeed")]
        u = r.response.usage
        assert r.cost_usd == pytest.approx(call_cost(model, u.prompt_tokens, u.completion_tokens))
    assert len(costs) == 30 and sum(r.lane == "flex" for r in costs) == 20  # every call billed once: 20 flex, 10 standard
    assert all(r.provider == "flx" for r in costs) and len(fm.log()) == 30  # none moved along the chain to bat


async def collecting(c: Client, consumer: str) -> bool:
    """Whether a lane's collector has a fetch waiting on PB_LANES (the worker creates its consumer)."""
    try:
        return bool((await c.js.consumer_info(wire.LANES_STREAM, consumer)).num_waiting)
    except NotFoundError:
        return False


async def test_a_worker_collecting_for_a_batch_lane_exits_at_once_on_sigterm(tmp_path):
    # Given a worker that owns the batch lanes, its collector waiting on PB_LANES
    from panelboard.workers.batch_lane import lane_consumer

    with Stack(tmp_path, config=CONFIG) as s:
        s.start(workers=1, broker=False, ledger=False)
        async with Client(s.nats_url) as c:
            deadline = time.monotonic() + 60
            while not await collecting(c, lane_consumer("bat")):
                assert time.monotonic() < deadline, "the bat lane's collector never asked PB_LANES for work"
                await asyncio.sleep(0.05)
        # and idle through several of its 0.5 s fetches (one that timed out is what held the exit)
        await asyncio.sleep(2.0)
        # When an operator stops it, then it exits cleanly well within the stack's kill timeout
        # (the collector's open fetch had held the connection's drain for 25 s, then was killed)
        t0 = time.monotonic()
        rc = s.stop_proc("worker-0", timeout=10)
    assert rc == 0, f"the worker did not exit within 10 s of SIGTERM (rc {rc})"
    print(f"\nworker with batch lanes stopped in {time.monotonic() - t0:.2f} s")


# -- cancel reaches the batch lane ---------------------------------------------------------
async def cancel_one(c: Client, job_id: str, team: str | None = None) -> CancelReply:
    return await control.cancel(c.nc, team or c.team, CancelRequest(job_id=job_id, reason="test"), 60)


async def stored_results(c: Client, job_id: str) -> list:
    return [decode_result(d) for _, d in await read_all(c.js, wire.RESULTS_STREAM, wire.result(c.team, job_id))]


def cancelled(r) -> bool:
    return isinstance(r, Failed) and r.error.kind == "cancelled"


async def eventually(check, within_s: float) -> bool:
    """Poll `check` (sync or async) until it holds or `within_s` passes."""
    end = time.monotonic() + within_s
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok or time.monotonic() > end:
            return bool(ok)
        await asyncio.sleep(0.1)


async def test_a_cancel_while_jobs_linger_in_the_lane_keeps_them_from_the_provider(lstack):
    # Given a batch lane that lingers 6 s before it sends a collection
    bmock = BatchMock(lstack.mock_url, "lbat")
    bmock.control(validate_ms=0, delay_ms=100)
    async with Client(lstack.nats_url) as c:
        info = await c.js.stream_info(wire.LANES_STREAM, subjects_filter=wire.batch_lane("lbat"))
        before = sum((info.state.subjects or {}).values())
        # When five deferrable jobs and one more wait in the lane
        tag = uuid.uuid4().hex[:6]
        ids = await submit(c, 6, time.time() + DAY, f"lc-{tag}", intent="lbat")
        doomed, kept = ids[:5], ids[5]

        async def routed() -> bool:
            i = await c.js.stream_info(wire.LANES_STREAM, subjects_filter=wire.batch_lane("lbat"))
            return sum((i.state.subjects or {}).values()) >= before + 6
        assert await eventually(routed, 30)
        # and the five are cancelled there, before the flush
        replies = [await cancel_one(c, j) for j in doomed[:4]]
        assert await c.cancel(doomed[4]) is True  # the SDK's answer
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
        costs = await costs_of(c, ids)
    # Then each cancel says it ended one job in the batch lane, and each ends `cancelled`
    assert all(r.cancelled == 1 and r.lane == 1 and r.ids == [j] for r, j in zip(replies, doomed))
    assert all(cancelled(r) for r in results[:5]), results[0]
    assert "batch lane" in results[0].error.message
    # the other job of the same collection is answered by the provider batch
    assert isinstance(results[5], Completed) and results[5].lane == "batch"
    # and the provider never saw the cancelled ones: its one batch holds only the survivor
    s = bmock.summary()
    assert [b["custom_ids"] for b in s["batches"]] == [[custom_id(c.team, kept, 0, 0)]]
    assert [e["request_id"] for e in bmock.log()] == [custom_id(c.team, kept, 0, 0)]
    assert [r.job_id for r in costs] == [kept]


@pytest.mark.parametrize("provider", ["bat", "abat"], ids=["openai", "anthropic"])
async def test_a_cancel_after_the_provider_batch_is_created_cancels_it_or_leaves_the_rest_to_finish(lstack, provider):
    # Given provider batches that take 15 s to process (OpenAI Batches, or Anthropic Message Batches)
    bmock = BatchMock(lstack.mock_url, provider)
    bmock.control(validate_ms=0, delay_ms=15_000)
    tag = uuid.uuid4().hex[:6]
    async with Client(lstack.nats_url) as c:
        def batch_of(ids: list[str]) -> dict | None:
            want = {custom_id(c.team, j, 0, 0) for j in ids}
            return next((b for b in bmock.summary()["batches"] if set(b["custom_ids"]) == want), None)

        # When two provider batches are created, one after the other
        first = await submit(c, 4, time.time() + DAY, f"pa-{tag}", intent=provider)
        assert await eventually(lambda: batch_of(first) is not None, 30)
        second = await submit(c, 4, time.time() + DAY, f"pb-{tag}", intent=provider)
        assert await eventually(lambda: batch_of(second) is not None, 30)
        # and every job of the first is cancelled, and two of the second
        replies = [await cancel_one(c, j) for j in first + second[:2]]
        results = await asyncio.gather(*(c.result(j, timeout=90) for j in first + second))
        # (every job has ended: the second batch has been fanned out)
        stored = {j: await stored_results(c, j) for j in first + second}
        costs = await costs_of(c, first + second)
    assert all(r.cancelled == 1 and r.lane == 1 for r in replies)
    # Then the first provider batch is cancelled provider-side
    assert batch_of(first)["status"] == "cancelled"
    assert batch_of(second)["status"] == "completed"
    # the cancelled jobs end `cancelled`, and keep that one result: no Completed came after
    assert all(cancelled(r) for r in results[:6])
    assert all(len(stored[j]) == 1 and cancelled(stored[j][0]) for j in first + second[:2])
    # the rest of the second batch still completes from it
    assert all(isinstance(r, Completed) and r.lane == "batch" for r in results[6:])
    assert all(len(stored[j]) == 1 for j in second[2:])
    # and every line the provider ran is billed, cancelled or not: one cost record per call
    ran = {e["request_id"] for e in bmock.log()}
    assert {custom_id(c.team, j, 0, 0) for j in second} <= ran
    assert sorted(custom_id(c.team, r.job_id, 0, 0) for r in costs) == sorted(ran)
    assert all(r.lane == "batch" for r in costs)


async def test_a_team_cannot_cancel_another_teams_jobs_in_a_provider_batch(lstack, bmock):
    # Given team default's jobs inside a created provider batch
    bmock.control(validate_ms=0, delay_ms=3_000)
    async with Client(lstack.nats_url) as c, Client(lstack.nats_url, team="intruder") as other:
        ids = await submit(c, 3, time.time() + DAY, f"ti-{uuid.uuid4().hex[:6]}")
        want = {custom_id(c.team, j, 0, 0) for j in ids}
        assert await eventually(lambda: any(set(b["custom_ids"]) == want for b in bmock.summary()["batches"]), 30)
        # When another team asks to cancel them, by job id and by their client id
        replies = [await cancel_one(other, j) for j in ids]
        by_client = await control.cancel(other.nc, other.team, CancelRequest(client=c.client_id), 60)
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
    # Then nothing is cancelled, and the jobs are answered by their provider batch
    assert all(r.cancelled == 0 and r.lane == 0 and r.ids == [] for r in replies + [by_client])
    assert all(isinstance(r, Completed) and r.lane == "batch" for r in results)
    assert [b["status"] for b in bmock.summary()["batches"]] == ["completed"]


async def test_cancels_racing_the_fan_out_leave_each_job_exactly_one_result(lstack, bmock):
    # Given 60 jobs in a provider batch that ends about now
    bmock.control(validate_ms=0, delay_ms=2_500)
    async with Client(lstack.nats_url) as c:
        ids = await submit(c, 60, time.time() + DAY, f"race-{uuid.uuid4().hex[:6]}")
        want = {custom_id(c.team, j, 0, 0) for j in ids}
        assert await eventually(lambda: any(set(b["custom_ids"]) == want for b in bmock.summary()["batches"]), 30)
        # When each is cancelled, eight at a time, while the lane polls, ends and fans it out
        sem = asyncio.Semaphore(8)

        async def one(j: str) -> bool:
            async with sem:
                return j in (await cancel_one(c, j)).ids

        said = dict(zip(ids, await asyncio.gather(*(one(j) for j in ids))))
        results = await asyncio.gather(*(c.result(j, timeout=60) for j in ids))
        stored = {j: await stored_results(c, j) for j in ids}
    # Then every job has exactly one stored result, and it is `cancelled` exactly when its
    # cancel said so; the others are the provider batch's answers
    assert all(len(stored[j]) == 1 for j in ids)
    for j, r in zip(ids, results):
        assert cancelled(r) == said[j], (j, r)
        assert cancelled(r) or (isinstance(r, Completed) and r.lane == "batch")
