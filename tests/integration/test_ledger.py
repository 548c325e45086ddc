"""The ledger writer: every provider call billed exactly once, whatever dies.

Against a real nats-server, real SQLite and Postgres, and for the kill -9 test the whole
stack as processes (broker, worker, mock provider, ledger)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sqlite3
import time
import uuid
from typing import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
import pytest
from sqlalchemy import select

from panelboard.broker import ledger as ledger_mod
from panelboard.broker.ledger import Ledger
from panelboard.clients import Client
from panelboard.transport import db, metrics
from panelboard.transport import connection
from panelboard.transport import bus, streams
from panelboard.config import load
from panelboard.natsserver import NatsServer
from panelboard.stack import Stack
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost
from panelboard.schemas.job import CostRecord
from tests.conftest import TEST_CONFIG, Mock
from tests.support.invariants import check
from tests.support.ledger_dbs import either_db  # noqa: F401 - fixture

MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


async def until(what: str, cond: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait for a condition the system reaches by itself, checking often; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not await _value(cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def record(job: str, attempt: int = 0, **kw) -> CostRecord:
    base = dict(job_id=job, team="ledger-test", key_prefix="pb_abcd", feature="f", intent="fast", tier="fast", provider="oa",
                model="oa/small", quantization="fp8", hop=0, attempt=attempt, prompt_tokens=12, completion_tokens=3,
                cost_usd=(12 * 0.5 + 3 * 1.5) / 1e6, latency_ms=42.5, queue_ms=3.2, outcome="ok", ts=time.time())
    return CostRecord(**{**base, **kw})


async def test_a_redelivered_record_is_billed_once(either_db):
    engine = either_db
    # Given a committed batch
    first = [record(f"j{i}") for i in range(100)]
    await db.insert_costs(engine, map(db.row, first))
    # When it comes again (committed, not acked, redelivered) together with new records,
    # a shadow call of the same attempt and a replayed run of a job
    again = [*first, *(record(f"k{i}") for i in range(50)), record("j0", shadow=True), record("j1", run=1)]
    await db.insert_costs(engine, map(db.row, again + again[:10]))
    # Then each call is one row
    assert await db.count_rows(engine) == 152


@pytest.fixture(scope="module")
async def js(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("ledger-nats")).start()
    nc = await connection.connect(server.url, "ledger-test")
    js = nc.jetstream()
    await streams.ensure_streams(js, load(TEST_CONFIG))
    await streams.ensure_consumer(js, wire.COSTS_STREAM, ledger_mod.consumer_config())
    yield js
    await nc.drain()
    server.stop()


async def test_a_database_outage_holds_records_in_the_stream_until_it_ends(js, tmp_path):
    # Given a ledger whose SQLite database another writer holds locked (a 0.2 s busy timeout)
    path = tmp_path / "ledger.db"
    engine = db.open_engine(f"sqlite+aiosqlite:///{path}?timeout=0.2")
    await db.create_schema(engine)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    writer = Ledger(js, engine)
    task = asyncio.create_task(writer.run())
    try:
        # When 40 cost records arrive
        job = uuid.uuid4().hex[:8]
        for i in range(40):
            await bus.publish_cost(js, record(f"{job}-{i}"))
        await until("the ledger to fail a write", lambda: writer.db_errors > 0)
        # Then none is acked while the database is down
        info = await js.consumer_info(wire.COSTS_STREAM, ledger_mod.CONSUMER)
        assert info.num_ack_pending + info.num_pending == 40 and writer.written == 0
        # When the database comes back, every record lands and is acked
        lock.execute("ROLLBACK")
        await until("40 rows", lambda: _eq(db.count_rows(engine), 40))
        await until("the batch to be acked", lambda: _acked(js))
    finally:
        lock.close()
        writer.stopping.set()
        await task
        await engine.dispose()


async def test_the_ledger_serves_spend_tokens_requests_latency_and_queue_depth(js, tmp_path):
    engine = db.open_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await db.create_schema(engine)
    meters = metrics.CostMeters()
    writer = Ledger(js, engine, meters=meters)
    task = asyncio.create_task(writer.run())
    try:
        async with metrics.serving(0, js, meters) as port:
            job = uuid.uuid4().hex[:8]
            for i in range(5):
                await bus.publish_cost(js, record(f"{job}-{i}"))
            await bus.publish_cost(js, record(f"{job}-0", attempt=1, outcome="RateLimited", prompt_tokens=0, completion_tokens=0, cost_usd=0.0))
            await until("6 rows", lambda: _eq(db.count_rows(engine), 6))
            await until("the batch to be acked", lambda: _acked(js))
            async with httpx.AsyncClient() as http:
                resp = await http.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        writer.stopping.set()
        await task
        await engine.dispose()
    body = resp.text
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    # Samples as (name, labels) -> value: the exposition orders labels as it likes.
    samples = {(x.name, frozenset(x.labels.items())): x.value for f in text_string_to_metric_families(body) for x in f.samples}
    assert samples[("panelboard_requests_total", frozenset({"provider": "oa", "outcome": "ok"}.items()))] == 5
    assert samples[("panelboard_requests_total", frozenset({"provider": "oa", "outcome": "RateLimited"}.items()))] == 1
    assert samples[("panelboard_tokens_total", frozenset({"provider": "oa", "kind": "prompt"}.items()))] == 60
    assert samples[("panelboard_provider_latency_seconds_bucket", frozenset({"provider": "oa", "le": "0.05"}.items()))] == 6
    assert ("panelboard_spend_usd_total", frozenset({"provider": "oa", "model": "oa/small", "team": "ledger-test", "shadow": "false"}.items())) in samples
    assert samples[("panelboard_queue_unacked", frozenset({"stream": "PB_COSTS", "consumer": "ledger"}.items()))] == 0


async def _value(v: bool | Awaitable[bool]) -> bool:
    return await v if inspect.isawaitable(v) else v


async def _eq(n: Awaitable[int], want: int) -> bool:
    return await n == want


async def _acked(js) -> bool:
    info = await js.consumer_info(wire.COSTS_STREAM, ledger_mod.CONSUMER)
    return info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.fault
async def test_kill_9_of_the_ledger_mid_batch_bills_every_provider_call_exactly_once(tmp_path):
    # Given the whole stack, with the provider failing every 4th call (so calls outnumber jobs)
    with Stack(tmp_path, config=TEST_CONFIG, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=1)
        mock = Mock(s.mock_url)
        mock.control(provider="oa", fault="500", every=4)
        engine = db.open_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
        async with Client(s.nats_url) as c:
            prefix = f"once-{uuid.uuid4().hex[:6]}"
            ids = [f"{prefix}-{i}" for i in range(400)]
            waits = asyncio.gather(*(_run_job(c, j) for j in ids))
            # When the ledger is SIGKILLed while it holds deliveries it has not acked
            held, rows_then = await _kill_mid_batch(s, c.js, engine)
            await waits
            # and a new ledger process takes over
            s.start_ledger()
            rep = await check(c.js, c.team, ids, mock.settled_log, ["oa"])
            await until(f"{rep.cost_records} rows", lambda: _eq(db.count_rows(engine), rep.cost_records))
        stored = await _keys(engine)
        await engine.dispose()
    # Then every provider call is one row: none lost with the dead writer, none billed twice
    print(f"\nledger kill -9 holding {held} unacked, {rows_then} rows then; {rep.line()}")
    assert held > 0 and rows_then < rep.cost_records
    rep.assert_holds()
    assert rep.provider_calls > len(ids) and rep.cost_records == rep.provider_calls == len(stored)
    assert stored == {(r.job_id, r.run, r.hop, r.attempt) for r in rep.costs}


async def _run_job(c: Client, job_id: str) -> None:
    h = await c.submit(MSG, intent="fast", job_id=job_id, max_tokens=16)
    await h.result(timeout=120)


async def _kill_mid_batch(s: Stack, js, engine) -> tuple[int, int]:
    """Freeze the ledger (SIGSTOP) once it has written something; if it holds unacked
    deliveries at that instant, SIGKILL it, else let it go on and try again."""
    proc = s.procs["ledger"]
    await until("the ledger to write", lambda: _gt(db.count_rows(engine), 0), timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        os.kill(proc.pid, signal.SIGSTOP)
        info = await js.consumer_info(wire.COSTS_STREAM, ledger_mod.CONSUMER)
        if info.num_ack_pending:
            rows = await db.count_rows(engine)
            s.kill_proc("ledger")
            return info.num_ack_pending, rows
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.01)
    raise AssertionError("never caught the ledger holding a batch")


async def _gt(n: Awaitable[int], floor: int) -> bool:
    try:
        return await n > floor
    except Exception:  # the ledger has not created its table yet
        return False


async def _keys(engine) -> set[tuple[str, int, int, int]]:
    c = db.costs.c
    async with engine.connect() as conn:
        return {tuple(r) for r in (await conn.execute(select(c.job_id, c.run, c.hop, c.attempt).where(c.shadow.is_(False)))).all()}


async def _letters(js, job: str) -> list:
    from panelboard import dead

    return [d for _, d in await dead.letters(js, ledger_mod.DEAD_REASON) if decode_cost(d.raw).job_id.startswith(job)]


async def test_a_poison_record_is_quarantined_and_every_record_around_it_lands(js, either_db):
    # Given a running ledger on SQLite or Postgres
    engine = either_db
    meters = metrics.CostMeters()
    writer = Ledger(js, engine, meters=meters)
    task = asyncio.create_task(writer.run())
    job = uuid.uuid4().hex[:8]
    try:
        # When a record no column can hold (2^63 tokens) arrives between good ones, next to a
        # provider's implausible but storable claim of 3,000,000,000 tokens
        poison = record(f"{job}-poison", prompt_tokens=2**63)
        huge = record(f"{job}-huge", completion_tokens=3_000_000_000, cost_usd=3_000_000_000 * 1.5 / 1e6)
        recs = [*(record(f"{job}-{i}") for i in range(10)), poison, huge, *(record(f"{job}-{i}") for i in range(10, 20))]
        for r in recs:
            await bus.publish_cost(js, r)
        # Then every good record lands, the huge one as it came (64-bit), and all are acked
        await until("21 rows", lambda: _eq(db.count_rows(engine), 21))
        await until("the batch to be acked", lambda: _acked(js))
        # and the poison one is a dead letter holding the record, counted
        letters = await _letters(js, job)
        assert [decode_cost(d.raw) for d in letters] == [poison]
        assert "prompt_tokens" in letters[0].error.message and job in letters[0].error.message
        assert writer.quarantined == 1 and meters.quarantined == 1 and writer.implausible == 1
        c = db.costs.c
        async with engine.connect() as conn:
            stored = (await conn.execute(select(c.completion_tokens, c.cost_nano_usd).where(c.job_id == huge.job_id))).one()
        assert tuple(stored) == (3_000_000_000, 4_500 * db.NANO)
        # and the ledger keeps running: later records land too
        for i in range(5):
            await bus.publish_cost(js, record(f"{job}-after-{i}"))
        await until("26 rows", lambda: _eq(db.count_rows(engine), 26))
        assert not task.done()
    finally:
        writer.stopping.set()
        await task


async def test_a_batch_the_database_refuses_is_split_until_only_the_poison_is_left(js, tmp_path):
    """The database's own refusals (not only what db.problem foresees) are bisected: here a
    Postgres ledger made by an older release (32-bit counts), not yet upgraded."""
    from tests.support.ledger_dbs import PG_URL, drop_pg_schema, new_pg_schema

    schema = await new_pg_schema("pb_old")
    engine = db.open_engine(PG_URL, schema=schema)
    await _old_schema(engine)
    writer = Ledger(js, engine)
    task = asyncio.create_task(writer.run())
    job = uuid.uuid4().hex[:8]
    try:
        # When 40 records arrive with one over 2^31 tokens in the middle
        recs = [record(f"{job}-{i}") for i in range(40)]
        recs[23] = record(f"{job}-big", prompt_tokens=3_000_000_000)
        for r in recs:
            await bus.publish_cost(js, r)
        # Then the other 39 land, the refused one is quarantined, nothing is retried for ever
        await until("39 rows", lambda: _eq(db.count_rows(engine), 39))
        await until("the batch to be acked", lambda: _acked(js))
        letters = await _letters(js, job)
        assert [decode_cost(d.raw).job_id for d in letters] == [f"{job}-big"]
        assert "out of range" in letters[0].error.message
        # When the ledger restarts, its table is widened to 64 bits and the record fits
        writer.stopping.set()
        await task
        await db.create_schema(engine)
        await db.insert_costs(engine, [db.row(recs[23])])
        assert await db.count_rows(engine) == 40
    finally:
        writer.stopping.set()
        await task
        await engine.dispose()
        await drop_pg_schema(schema)


async def test_an_old_ledger_is_upgraded_in_place_to_64_bit_counts(either_db):
    # Given a ledger table made by the previous release (32-bit counts), holding a row
    engine = either_db
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: db.costs.drop(c))
    await _old_schema(engine)
    await db.insert_costs(engine, [db.row(record("old-row"))])
    # When the new release starts on it
    await db.create_schema(engine)
    await db.create_schema(engine)  # twice: a second process starting finds nothing to do
    # Then the old row is intact and a 3e9-token record is stored as it came
    await db.insert_costs(engine, [db.row(record("new-row", prompt_tokens=3_000_000_000))])
    c = db.costs.c
    async with engine.connect() as conn:
        rows = dict((await conn.execute(select(c.job_id, c.prompt_tokens))).all())
    assert rows == {"old-row": 12, "new-row": 3_000_000_000}


async def _old_schema(engine) -> None:
    """cost_records as the release before 64-bit counts made it."""
    from sqlalchemy import BigInteger, Column, Integer, MetaData, Table

    old = Table("cost_records", MetaData(), *(
        Column(col.name, Integer if isinstance(col.type, BigInteger) and col.name != "cost_nano_usd" else col.type,
               nullable=col.nullable, primary_key=col.primary_key) for col in db.costs.columns))
    async with engine.begin() as conn:
        await conn.run_sync(old.metadata.create_all)


async def test_split_writes_isolate_each_poison_item_in_few_writes():
    writes: list[int] = []

    async def write(items):
        writes.append(len(items))
        if any(i in (3, 77) for i in items):
            raise ValueError("refused")

    refused = await db.write_splitting(write, list(range(100)))
    assert [i for i, _ in refused] == [3, 77] and len(writes) <= 2 * 2 * 7 + 1

    async def outage(items):
        raise OSError("connection refused")

    with pytest.raises(OSError):
        await db.write_splitting(outage, [1, 2])


@pytest.fixture(params=["sqlite", "postgres"])
async def key_store(request, tmp_path):
    from panelboard.broker.governance_store import Store
    from tests.support.ledger_dbs import PG_URL, drop_pg_schema, new_pg_schema

    schema = await new_pg_schema("pb_settle") if request.param == "postgres" else None
    store = Store.open(PG_URL if schema else f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}", schema=schema)
    await store.create()
    yield store
    await store.close()
    if schema:
        await drop_pg_schema(schema)


async def test_settlement_skips_a_poison_record_and_settles_every_other(js, key_store):
    from panelboard.broker.budgets import Estimate
    from panelboard.broker.governance_store import teams
    from panelboard.broker.settle import Settler
    from panelboard.schemas.job import Hop, Route

    # Given ten admitted jobs of one cent each
    store, team = key_store, "settle-" + uuid.uuid4().hex[:6]
    await store.set_team(team, budget_nano=db.NANO)
    key, prefix = await store.create_key(team)
    job = uuid.uuid4().hex[:8]
    route = Route(tier="fast", chain=(Hop("oa/small", "oa"),))
    for i in range(10):
        await store.admit(f"{job}-{i}", 0, key, route, Estimate(cost_nano=10_000_000, tokens=15, prompt_tokens=12, output_tokens=3, model="oa/small"), time.time())
    stopping = asyncio.Event()
    settler = Settler(js, store)
    await settler.prepare()
    task = asyncio.create_task(settler.run(stopping))
    try:
        # When their cost records arrive with a poison one (an attempt number beyond 64 bits) among them
        recs = [record(f"{job}-{i}", team=team, key_prefix=prefix, cost_usd=0.004) for i in range(10)]
        recs.insert(5, record(f"{job}-3", attempt=2**64 - 1, team=team, key_prefix=prefix, cost_usd=0.004, outcome="ServerError"))
        for r in recs:
            await bus.publish_cost(js, r)

        # Then every good record is settled (reservations released, real cost spent) and the poison one is skipped
        async def settled() -> bool:
            async with store.engine.connect() as conn:
                row = (await conn.execute(select(teams).where(teams.c.name == team))).one()
            return (row.spent_nano, row.reserved_nano) == (40_000_000, 0)

        await until("the ten jobs settled", settled)
        assert settler.skipped == 1
    finally:
        stopping.set()
        await task
