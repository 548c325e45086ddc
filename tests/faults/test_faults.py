"""Providers have bad days, processes die, nats-server restarts: every job still ends in
exactly one terminal result, provider calls and cost records pair up, nothing stays unacked.

Each test breaks real things: the mock provider returns 500/429/hangs, worker processes get
SIGKILL, nats-server is killed and restarted. Sizes are CI sizes that still break for real.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections import Counter

import pytest

from panelboard.broker.ledger import CONSUMER as LEDGER_CONSUMER
from panelboard.clients import Client
from panelboard.config import load
from panelboard.stack import Stack
from panelboard.schemas import wire
from panelboard.schemas.errors import ChainExhausted, DeadlineExceeded, ResponseTooLarge
from panelboard.schemas.chat import ChatResponse, Choice, ChoiceMessage, Usage
from panelboard.schemas.job import Attempt, Completed, Failed
from panelboard.transport import bus
from tests.conftest import ROOT, Mock, run_cli
from tests.support.invariants import check
from tests.support.servers import RestartableServer

pytestmark = pytest.mark.fault

CONFIG = ROOT / "tests" / "data" / "faults.yaml"
PROVIDERS = ["primary", "secondary", "tertiary", "slow", "ra"]
ACK_WAIT_S = 4.0  # the pools' ack_wait in faults.yaml
MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


@pytest.fixture(scope="module")
def fstack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("faults"), config=CONFIG, mock_args=["--latency-ms", "5"])
    s.start(workers=1)
    yield s
    s.stop()


@pytest.fixture
def fmock(fstack):
    m = Mock(fstack.mock_url)
    m.http.post("/_mock/reset")
    return m


async def submit_all(c: Client, intents: list[str], prefix: str, window: int = 512) -> list[str]:
    """Submit with a bounded window of publishes in flight; returns the job ids."""
    ids = [f"{prefix}-{i}" for i in range(len(intents))]
    sem = asyncio.Semaphore(window)

    async def one(job_id: str, intent: str) -> None:
        async with sem:
            await c.submit(MSG, intent=intent, job_id=job_id, max_tokens=32)

    await asyncio.gather(*(one(j, i) for j, i in zip(ids, intents)))
    return ids


async def wait_all(c: Client, ids: list[str], timeout: float) -> list:
    return await asyncio.gather(*(c.result(j, timeout=timeout) for j in ids))


@pytest.mark.parametrize("fault, jobs", [("500", 2000), ("429", 2000), ("timeout", 300)])
async def test_article_drill_broken_primary_falls_back_within_its_retry_budget(fstack, fmock, fault, jobs):
    # Given the primary answers every call with the fault (429s say Retry-After 50 ms; hangs outlast the 1 s hop timeout)
    fmock.control(provider="primary", fault=fault, every=1, retry_after_s=0.05, hang_ms=5000)
    try:
        async with Client(fstack.nats_url) as c:
            # When a batch runs through the article's chain
            ids = await submit_all(c, ["chain"] * jobs, f"drill{fault}-{uuid.uuid4().hex[:6]}")
            await wait_all(c, ids, timeout=240)
            rep = await check(c.js, c.team, ids, fmock.settled_log, PROVIDERS)
    finally:
        fmock.control(provider="primary", fault=None)
    print(f"\ndrill fault={fault}: {rep.line()}")
    # Then every job completed on the next hop, and the primary saw exactly its retry budget per job
    rep.assert_holds()
    assert rep.completed == jobs and {r.provider for r in rep.results.values()} == {"secondary"}
    # Every job that tried the primary spent exactly its budget there (1 call + max_retries 2);
    # once layer 2 marks the primary degraded, new jobs start on the secondary instead.
    primary_calls = Counter(e["request_id"].split(":")[0] for e in fmock.log("primary"))
    assert set(primary_calls.values()) == {3}, Counter(primary_calls.values())
    for r in rep.results.values():
        on_primary = [a for a in r.attempts if a.provider == "primary"]
        assert len(on_primary) == (3 if r.job_id in primary_calls else 0), r.attempts
        assert (r.attempts[-1].provider, r.attempts[-1].status) == ("secondary", 200), r.attempts
    print(f"jobs that tried the primary: {len(primary_calls)}; steered past it by layer 2: {jobs - len(primary_calls)}")


async def test_poison_job_ends_as_one_failed_result_and_one_dead_letter(fstack, fmock, tmp_path):
    async with Client(fstack.nats_url) as c:
        h = await c.submit(MSG, intent="poison", job_id="poison-" + uuid.uuid4().hex[:8])
        r = await h.result(timeout=60)
        rep = await check(c.js, c.team, [h.id], fmock.settled_log, PROVIDERS)
        print(f"\npoison: {rep.line()}")
        rep.assert_holds()
        assert isinstance(r, Failed) and isinstance(r.error, ChainExhausted)
        assert rep.provider_calls == 9  # 3 hops x (1 call + 2 retries), no more
        assert [(a.provider, a.attempt, a.status) for a in r.attempts] == [
            (p, n, 500) for p in ("primary", "secondary", "tertiary") for n in range(3)
        ]
        # The dead letter holds the full job; replay resubmits it as a new run.
        listed = run_cli("dead", "list", "--nats-url", fstack.nats_url, "--json")
        letters = [d for d in __import__("json").loads(listed.stdout) if d["job"] and d["job"]["id"] == h.id]
        assert len(letters) == 1 and letters[0]["reason"] == "chain_exhausted" and len(letters[0]["attempts"]) == 9
        replay = run_cli("dead", "replay", "--job", h.id, "--nats-url", fstack.nats_url)
        assert replay.returncode == 0 and "replayed 1" in replay.stdout
        deadline = time.monotonic() + 60
        while sum(1 for e in fmock.log() if e["request_id"].startswith(h.id + "~1:")) < 9 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert sum(1 for e in fmock.log() if e["request_id"].startswith(h.id + "~1:")) == 9


async def test_slow_calls_longer_than_ack_wait_are_not_duplicated(fstack, fmock):
    # ack_wait is 1.5 s and every call takes 3 s: only heartbeats keep the lease.
    async with Client(fstack.nats_url) as c:
        ids = await submit_all(c, ["slow"] * 12, "slow-" + uuid.uuid4().hex[:6])
        results = await wait_all(c, ids, timeout=60)
        rep = await check(c.js, c.team, ids, fmock.settled_log, PROVIDERS)
    print(f"\nslow: {rep.line()}")
    rep.assert_holds()
    assert all(isinstance(r, Completed) for r in results)
    assert rep.provider_calls == 12 and rep.reexecuted_jobs == 0


async def test_a_deadline_cuts_a_slow_call_short_with_deadline_exceeded(fstack, fmock):
    # Given a job with a 1 s deadline on a provider whose answer takes 3 s (its timeout is 10 s);
    # 1 s leaves a busy box time to dispatch it before the deadline
    async with Client(fstack.nats_url) as c:
        assert isinstance(await (await c.submit(MSG, intent="p1")).result(timeout=60), Completed)  # the stack is up
        job_id = "deadline-" + uuid.uuid4().hex[:8]
        t0 = time.time()
        h = await c.submit(MSG, intent="slow", job_id=job_id, deadline=t0 + 1.0)
        # When it runs
        r = await h.result(timeout=30)
        took = time.time() - t0
        rep = await check(c.js, c.team, [job_id], fmock.settled_log, PROVIDERS)
    print(f"\ndeadline 1 s, 3 s call: {type(r).__name__} after {took:.2f}s; {rep.line()}")
    # Then it fails with deadline_exceeded well before the 3 s answer, after one call that has one cost record
    assert isinstance(r, Failed) and isinstance(r.error, DeadlineExceeded), r
    assert took < 2.5
    rep.assert_holds()
    assert rep.provider_calls == 1 and rep.cost_records == 1 and rep.costs[0].outcome == "Timeout"
    assert [a.decision for a in r.attempts] == ["fail"]


async def one_job(fstack: Stack, fmock: Mock, intent: str):
    """Run one job of `intent` to its result; the result and the invariants' report."""
    async with Client(fstack.nats_url) as c:
        job_id = f"{intent}-{uuid.uuid4().hex[:8]}"
        r = await (await c.submit(MSG, intent=intent, job_id=job_id)).result(timeout=60)
        return r, await check(c.js, c.team, [job_id], fmock.settled_log, PROVIDERS)


async def test_an_oversized_answer_ends_the_job_once_and_is_billed_once(fstack, fmock):
    # Given a provider that answers with 1.5 MB, over NATS's 1 MB max_payload for the result
    # When the job runs (check waits until nothing is left unacked: an acked delivery is never called again)
    r, rep = await one_job(fstack, fmock, "huge")
    print(f"\noversized answer: {type(r).__name__} {getattr(r, 'error', None)!r}; {rep.line()}")
    # Then it fails once with response_too_large: one call, one ok cost record (the call was billed), nothing redelivered
    assert isinstance(r, Failed) and isinstance(r.error, ResponseTooLarge) and r.error.size_bytes > r.error.limit_bytes
    rep.assert_holds()
    assert rep.provider_calls == 1 and rep.cost_records == 1
    assert rep.costs[0].outcome == "ok" and rep.costs[0].cost_usd > 0
    assert [(a.provider, a.status, a.decision) for a in r.attempts] == [("primary", 200, "fail")]


async def test_an_absurd_usage_count_is_clamped_flagged_and_billed_once(fstack, fmock):
    # Given a provider that reports 3,000,000,000 completion tokens for a short answer
    r, rep = await one_job(fstack, fmock, "usage")
    print(f"\nabsurd usage: {type(r).__name__}; {rep.line()}; attempts {r.attempts}")
    # Then the job completes once; the usage billed is clamped to the model's 128,000-token window and the
    # provider's own figure is kept beside it, flagged, in the result and the cost record
    assert isinstance(r, Completed)
    assert r.response.usage.completion_tokens == 128_000 and r.reported_usage.completion_tokens == 3_000_000_000
    rep.assert_holds()
    # Billed once: one provider call and one ok record. (Under CPU hogs the first try has twice
    # timed out in 1 ms without reaching the mock, a $0 Timeout record; cause not yet found.)
    ok = [rec for rec in rep.costs if rec.outcome == "ok"]
    assert rep.provider_calls == 1 and len(ok) == 1 and all(rec.cost_usd == 0 for rec in rep.costs if rec.outcome != "ok")
    rec = ok[0]
    assert rec.outcome == "ok" and rec.completion_tokens == 128_000 and rec.reported_usage.completion_tokens == 3_000_000_000
    assert rec.cost_usd == r.cost_usd < 1.0  # 128,000 tokens at $0.39/M, not $1,170


async def test_retry_after_is_honoured_and_pauses_the_pool(fstack, fmock):
    fmock.control(provider="ra", fault="429", every=1, retry_after_s=7)
    async with Client(fstack.nats_url) as c:
        first = await c.submit(MSG, intent="ra", job_id="ra-a-" + uuid.uuid4().hex[:6])
        deadline = time.monotonic() + 20
        while not fmock.log("ra") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        fmock.control(provider="ra", fault=None)
        # A second job arrives while the provider has told us to wait.
        second = await c.submit(MSG, intent="ra", job_id="ra-b-" + uuid.uuid4().hex[:6])
        ra, rb = await first.result(timeout=30), await second.result(timeout=30)
    assert isinstance(ra, Completed) and isinstance(rb, Completed)
    log = fmock.log("ra")
    t = {e["request_id"]: e["ts"] for e in log}
    a0, a1 = t[f"{first.id}:0:0"], t[f"{first.id}:0:1"]
    b0 = t[f"{second.id}:0:0"]
    print(f"\nretry-after: retried after {a1 - a0:.2f}s; next job's first call {b0 - a0:.2f}s after the 429")
    assert a1 - a0 >= 7.0
    assert b0 - a0 >= 6.9  # the pool paused: nothing hammered the provider meanwhile
    assert len(log) == 3


async def test_sigterm_drains_in_flight_jobs(tmp_path):
    # Given one worker process that alone runs the slow pool (3 s calls)
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=0)
        s.start_worker("slow-only", providers=["slow"])
        mock = Mock(s.mock_url)
        async with Client(s.nats_url) as c:
            ids = await submit_all(c, ["slow"] * 8, "drain-" + uuid.uuid4().hex[:6])
            deadline = time.monotonic() + 20
            while mock.stats()["in_flight"].get("slow", 0) < 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # When it gets SIGTERM with all 8 calls in flight
            rc = s.stop_proc("slow-only")
            # Then it finishes them before exiting: nothing is left to time out or to redo
            results = await wait_all(c, ids, timeout=5)
            rep = await check(c.js, c.team, ids, mock.settled_log, ["slow"])
    print(f"\nsigterm drain: exit={rc} {rep.line()}")
    assert rc == 0
    rep.assert_holds()
    assert all(isinstance(r, Completed) for r in results)
    assert rep.reexecuted_jobs == 0 and rep.lost_calls == 0


async def wait_logged(s: Stack, name: str, needle: str, bound_s: float) -> float:
    """Seconds until the current run of process `name` logs `needle`; fails past the bound."""
    t0 = time.monotonic()
    while not s.logged(name, needle):
        assert s.procs[name].poll() is None, f"{name} exited with {s.procs[name].returncode}"
        assert time.monotonic() - t0 < bound_s, f"{name} did not log {needle} within {bound_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


WAVES = 4


async def test_kill_9_a_worker_every_second_during_a_10k_batch(tmp_path):
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "50", "--jitter-ms", "20"]) as s:
        s.start(workers=2)
        mock = Mock(s.mock_url)
        rng = random.Random(3)
        intents = [rng.choice(["p1", "p2", "p3"]) for _ in range(10_000)]
        kills = 0
        startup_s: list[float] = []  # kill -9 -> the replacement's pools pulling
        async with Client(s.nats_url) as c:
            stop = asyncio.Event()

            async def killer() -> None:
                # Kill a worker once a second at most, and never faster than the pools
                # recover: the replacement must be pulling and the victim's frozen
                # deliveries released (ack_wait) before the next kill. On a busy box a
                # start-up takes seconds; kills that outpace recovery stall every pool.
                nonlocal kills
                for name in ("worker-0", "worker-1"):
                    await wait_logged(s, name, "pool.started", bound_s=120)
                n = 0
                while True:
                    wave_ready.put_nowait(n)  # the next wave goes out now, so this kill lands mid-flight
                    try:
                        await asyncio.wait_for(stop.wait(), 1.0)
                        return
                    except asyncio.TimeoutError:
                        pass
                    victim = f"worker-{n % 2}"
                    t0 = time.monotonic()
                    s.kill_proc(victim)
                    s.start_worker(victim)
                    kills += 1
                    n += 1
                    await wait_logged(s, victim, "pool.started", bound_s=60)
                    startup_s.append(time.monotonic() - t0)
                    try:
                        await asyncio.wait_for(stop.wait(), max(0.0, ACK_WAIT_S - (time.monotonic() - t0)))
                        return
                    except asyncio.TimeoutError:
                        pass

            # The batch goes out in waves, one per kill cycle, so however fast this box runs it,
            # the first kills each land while a wave is in flight.
            wave_ready: asyncio.Queue[int] = asyncio.Queue()
            k = asyncio.create_task(killer())
            try:
                prefix = "kill-" + uuid.uuid4().hex[:6]
                ids = []
                for w in range(WAVES):
                    await asyncio.wait_for(wave_ready.get(), 180)
                    ids += await submit_all(c, intents[w::WAVES], f"{prefix}-{w}")
                await wait_all(c, ids, timeout=300)
            finally:
                stop.set()
                await k  # raises if a replacement never started
            rep = await check(c.js, c.team, ids, mock.settled_log, PROVIDERS)
    print(f"\nkill -9 x{kills}: {rep.line()}")
    print(f"replacement start-up (kill -> pools pulling): median {sorted(startup_s)[len(startup_s) // 2]:.2f} s, max {max(startup_s):.2f} s")
    assert kills >= 3 and rep.lost_calls > 0  # the kills really cut calls off mid-flight
    rep.assert_holds()
    assert rep.completed == 10_000
    # Re-execution is bounded by the calls genuinely in flight at the kills (README, "Re-execution
    # bound"): each re-run job's first answer is recorded, as lost (cut off mid-call) or as an ok
    # call a later attempt superseded (its worker died between cost record and result), and no
    # kill can strand more than the jobs one worker process holds (its pools' caps together).
    assert rep.reexecuted_jobs <= rep.lost_calls + rep.cut_after_answer
    held = sum(p.max_concurrency for name, p in load(CONFIG).providers.items() if name in ("primary", "secondary", "tertiary"))
    assert rep.reexecuted_jobs <= kills * held


async def test_a_killed_workers_replacement_takes_over_its_frozen_slots(tmp_path):
    # Given the only worker of a 128-slot pool, every slot busy with 50 ms calls
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "50"]) as s:
        s.start(workers=0)
        s.start_worker("w", providers=["primary"])
        mock = Mock(s.mock_url)
        async with Client(s.nats_url) as c:
            submitter = asyncio.create_task(submit_all(c, ["p1"] * 2000, "takeover-" + uuid.uuid4().hex[:6]))
            await wait_logged(s, "w", "pool.first_call", bound_s=120)
            # When it is killed mid-batch and a replacement is started
            t0 = time.monotonic()
            s.kill_proc("w")
            s.start_worker("w", providers=["primary"])
            startup = await wait_logged(s, "w", "pool.started", bound_s=60)
            # Then the replacement serves again once the dead worker's deliveries are released
            recover = time.monotonic() - t0 + await wait_logged(s, "w", "pool.first_call", bound_s=60)
            ids = await submitter
            await wait_all(c, ids, timeout=180)
            rep = await check(c.js, c.team, ids, mock.settled_log, ["primary"])
    print(f"\ntakeover: start-up {startup:.2f} s, first call served {recover:.2f} s after the kill (ack_wait {ACK_WAIT_S} s); {rep.line()}")
    rep.assert_holds()
    assert rep.completed == 2000
    assert recover < ACK_WAIT_S + 30  # ack_wait plus a start-up on a busy 2-core box


async def test_a_result_stored_before_its_cost_record_is_billed_by_the_redelivery(tmp_path):
    """The worker publishes a result and its cost record together (one round trip, acked once
    both are stored), and the two live in different streams, so a crash of the worker or of
    nats-server can leave the result without the record. A redelivery that finds the result
    bills its answer."""
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=0)
        s.start_worker("w", providers=["slow"])
        mock = Mock(s.mock_url)
        async with Client(s.nats_url) as c:
            job_id = "unbilled-" + uuid.uuid4().hex[:6]
            # Given a worker in the middle of a job's call (slow-3000: 3 s at the provider)
            h = await c.submit(MSG, intent="slow", job_id=job_id, max_tokens=32)
            deadline = time.monotonic() + 120
            while not (await asyncio.to_thread(mock.stats))["in_flight"].get("slow"):
                assert time.monotonic() < deadline, "the worker never called the provider"
                await asyncio.sleep(0.05)
            # When the job's result is in the stream without its cost record, and the worker
            # dies before it acks (the result stands in for the worker's last publish)
            answer = ChatResponse(id="x", model="slow-3000", choices=[Choice(message=ChoiceMessage(content="2026-12-01"))],
                                  usage=Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200))
            stored = Completed(job_id=job_id, response=answer, tier="slow", provider="slow", model="slow/model", cost_usd=0.0012,
                               attempts=[Attempt(provider="slow", model="slow/model", hop=0, attempt=0, status=200, latency_ms=3000.0, decision="succeed")])
            await bus.publish_result(c.js, c.team, job_id, stored)
            s.kill_proc("w")
            s.start_worker("w", providers=["slow"])
            # Then the client has that one result, and the replacement, handed the delivery back
            # after ack_wait, bills the answer once instead of calling the provider again
            assert await h.result(timeout=60) == stored
            rep = await check(c.js, c.team, [job_id], mock.settled_log, ["slow"], settle_s=120)
    print(f"\nunbilled result: {rep.line()}")
    assert not any(rep.unacked.values()), rep.unacked
    billed = [r for r in rep.costs if r.job_id == job_id]
    assert [(r.hop, r.attempt, r.outcome, r.cost_usd, r.prompt_tokens, r.completion_tokens) for r in billed] == [(0, 0, "ok", 0.0012, 1000, 200)]
    assert rep.provider_calls == 1 and rep.duplicate_results == []


async def test_nats_server_kill_9_and_restart_mid_batch(tmp_path):
    with RestartableServer(tmp_path / "nats") as server:
        with Stack(tmp_path / "stack", config=CONFIG, nats_url=server.url, mock_args=["--latency-ms", "20"]) as s:
            s.start(workers=1)
            mock = Mock(s.mock_url)
            async with Client(s.nats_url) as c:
                prefix = f"natskill-{uuid.uuid4().hex[:6]}"
                submitter = asyncio.create_task(submit_all(c, ["p1", "p2", "p3"] * 1000, prefix))
                deadline = time.monotonic() + 60
                while sum(mock.stats()["requests"].values()) < 500 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await server.restart(outage_s=1.0)
                ids = await submitter
                await wait_all(c, ids, timeout=300)
                rep = await check(c.js, c.team, ids, mock.settled_log, PROVIDERS)
    print(f"\nnats-server kill -9 + restart: {rep.line()}")
    rep.assert_holds()
    assert rep.completed == 3000


async def ledger_rows(s: Stack, js, job_ids: set[str], timeout: float = 60) -> list[tuple]:
    """The ledger's SQL rows for these jobs, once the ledger has written every cost record."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(wire.COSTS_STREAM, LEDGER_CONSUMER)
        if info.num_pending + info.num_ack_pending == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    with sqlite3.connect(s.home / "ledger.db") as db:
        rows = db.execute("SELECT job_id, run, hop, attempt, outcome, cost_nano_usd FROM cost_records").fetchall()
    return [r for r in rows if r[0] in job_ids]


async def test_nats_server_restart_redelivers_retried_dispatches_without_losing_their_cost(tmp_path):
    # Given the primary fails every call with a 500 for a while, and a retried job waits 1.5 s for its next try
    with RestartableServer(tmp_path / "nats") as server:
        with Stack(tmp_path / "stack", config=CONFIG, nats_url=server.url, mock_args=["--latency-ms", "20"]) as s:
            s.start(workers=1)
            mock = Mock(s.mock_url)
            mock.control(provider="primary", fault="500", every=1)
            async with Client(s.nats_url) as c:
                ids = await submit_all(c, ["r1"] * 600, f"natsretry-{uuid.uuid4().hex[:6]}")
                deadline = time.monotonic() + 60
                while mock.stats()["status_counts"].get("primary", {}).get("500", 0) < 100 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                # When nats-server is killed -9 just after a wave of failed first tries was recorded and nak'd,
                # and restarts without the pools' delivery state: what a kill -9 does to the deliveries of its
                # last few ms (the state is written ~10 ms after a change), here to every waiting dispatch at
                # once, so that each is redelivered as if never delivered
                server.kill()
                wiped = 0
                for state in server.data_dir.glob(f"**/streams/{wire.DISPATCH_STREAM}/obs/*/o.dat"):
                    state.unlink()
                    wiped += 1
                mock.control(provider="primary", fault=None)
                await asyncio.sleep(1.0)  # the outage itself
                server.start_again()
                results = await wait_all(c, ids, timeout=300)
                rep = await check(c.js, c.team, ids, mock.settled_log, PROVIDERS)
                log = rep.mock_log
                rows = await ledger_rows(s, c.js, set(ids))
    ok_calls = [e for e in log if e["status"] == 200 and e["request_id"].split(":")[0] in set(ids)]
    price = round(next(r.cost_usd for r in results if isinstance(r, Completed)) * 1_000_000_000)  # every call has the same prompt
    ledgered = sum(r[5] for r in rows)
    print(f"\nnats-server kill -9 with retries waiting: {rep.line()} ok_calls={len(ok_calls)} "
          f"ledger_rows={len(rows)} ledgered_nano_usd={ledgered} expected={len(ok_calls) * price}")
    # Then every provider call has exactly one cost record (the ok one for an ok call), no request id is
    # served twice, and the ledger holds exactly what the ok calls cost
    assert wiped >= 1
    rep.assert_holds()
    assert rep.completed == 600 and rep.reexecuted_jobs == 0
    assert len(rows) == rep.cost_records == rep.provider_calls + rep.lost_calls
    assert ledgered == len(ok_calls) * price


@pytest.mark.cluster
async def test_cluster_stream_leader_killed_mid_batch(tmp_path, monkeypatch):
    from panelboard.cluster import Cluster

    monkeypatch.setenv("PB_TEST_REPLICAS", "3")  # every stream R3
    with Cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        with Stack(tmp_path / "stack", config=CONFIG, nats_url=cluster.url, mock_args=["--latency-ms", "20"]) as s:
            s.start(workers=1)
            mock = Mock(s.mock_url)
            async with Client(s.nats_url) as c:
                submitter = asyncio.create_task(submit_all(c, ["p1", "p2", "p3"] * 1000, f"leader-{uuid.uuid4().hex[:6]}"))
                deadline = time.monotonic() + 60
                while sum(mock.stats()["requests"].values()) < 500 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                leader = cluster.stream_leader("PB_DISPATCH")
                assert leader is not None
                cluster.kill(leader)
                ids = await submitter
                await wait_all(c, ids, timeout=300)
                new_leader = cluster.wait_stream_leader("PB_DISPATCH", exclude=(leader,))
                rep = await check(c.js, c.team, ids, mock.settled_log, PROVIDERS)
    print(f"\ncluster leader nats-{leader + 1} killed (new leader nats-{(new_leader or 0) + 1}): {rep.line()}")
    assert new_leader is not None and new_leader != leader
    rep.assert_holds()
    assert rep.completed == 3000
