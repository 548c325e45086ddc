"""Keys, budgets, rate windows and settlement against real databases, SQLite and Postgres.
Several Store instances on one database stand for several broker processes: each has its own
engine and connection pool, so only the database itself can keep them from overspending."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from sqlalchemy import func, select

from panelboard.broker import budgets, keys
from panelboard.broker.governance_store import AdmitRequest, Admitted, Store, Throttled, admissions, rate_buckets, teams, virtual_keys
from panelboard.schemas.errors import BadKey, OverBudget
from panelboard.schemas.job import CostRecord, Hop, Route
from tests.support.ledger_dbs import PG_URL, drop_pg_schema, new_pg_schema

ROUTE = Route(tier="fast", chain=(Hop("oa/small", "oa"),))
CENT = 10_000_000  # nano-dollars


def est(cost_nano: int, tokens: int = 100) -> budgets.Estimate:
    return budgets.Estimate(cost_nano=cost_nano, tokens=tokens, prompt_tokens=10, output_tokens=tokens - 10, model="oa/small")


def cost(job_id: str, nano: int, outcome: str = "ok", tokens: int = 50, attempt: int = 0, team: str = "t", prefix: str | None = None) -> CostRecord:
    return CostRecord(job_id=job_id, team=team, key_prefix=prefix, feature=None, intent="fast", tier="fast", provider="oa", model="oa/small",
                      quantization=None, hop=0, attempt=attempt, prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2,
                      cost_usd=nano / 1e9, latency_ms=1.0, queue_ms=0.0, outcome=outcome, ts=time.time())


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request, tmp_path):
    """A factory of Stores on one fresh database (a Postgres schema of its own)."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}"
    else:
        url, schema = PG_URL, await new_pg_schema("pb_gov")
    made: list[Store] = []

    def make() -> Store:
        s = Store.open(url, schema=schema)
        made.append(s)
        return s

    await make().create()
    yield make
    for s in made:
        await s.close()
    if schema:
        await drop_pg_schema(schema)


async def team_row(store: Store, name: str):
    async with store.engine.connect() as conn:
        return (await conn.execute(select(teams).where(teams.c.name == name))).one()


async def key_row(store: Store, prefix: str):
    async with store.engine.connect() as conn:
        return (await conn.execute(select(virtual_keys).where(virtual_keys.c.prefix == prefix))).one()


async def test_a_budget_holds_against_concurrent_admissions_from_four_brokers(stores):
    """Given a $1.00 budget and four brokers, when 200 jobs of $0.02-$0.05 arrive at once,
    then what is reserved never passes $1.00 and a job is refused only if it did not fit."""
    brokers = [stores() for _ in range(4)]
    await brokers[0].set_team("race", budget_nano=100 * CENT, period="daily")
    key, prefix = await brokers[0].create_key("race")
    sizes = [(2 + i % 4) * CENT for i in range(200)]  # $0.02 .. $0.05
    now = time.time()
    outs = await asyncio.gather(*(brokers[i % 4].admit(f"race-{i}", 0, key, ROUTE, est(sizes[i]), now) for i in range(200)))

    admitted = [i for i, o in enumerate(outs) if isinstance(o, Admitted)]
    refused = [i for i, o in enumerate(outs) if isinstance(o, OverBudget)]
    assert len(admitted) + len(refused) == 200
    row = await team_row(brokers[0], "race")
    assert row.reserved_nano == sum(sizes[i] for i in admitted) <= 100 * CENT
    left = 100 * CENT - row.reserved_nano
    for i in refused:  # each refusal saw less than it needed, and even now it would not fit
        assert outs[i].remaining_usd * 1e9 < sizes[i] and sizes[i] > left
        assert f"{budgets.usd(sizes[i]):.6f}" in outs[i].message
    assert (await key_row(brokers[0], prefix)).inflight == len(admitted)

    # Settling the real costs (here: exactly the estimates) moves reserved into spent.
    await brokers[1].settle([cost(f"race-{i}", sizes[i], prefix=prefix, team="race") for i in admitted], [])
    row = await team_row(brokers[0], "race")
    assert (row.spent_nano, row.reserved_nano) == (sum(sizes[i] for i in admitted), 0)
    assert (await key_row(brokers[0], prefix)).inflight == 0


async def test_batches_of_one_team_admit_in_order_and_their_sum_cannot_overspend(stores):
    """Given a $1.00 team budget, a key capped at 12 jobs in flight and another at 30 requests a
    minute, when four brokers each admit a batch of 25 jobs of $0.02-$0.05 at once (one
    transaction per batch), then the team's reservation is exactly what was admitted and at
    most $1.00, each cap holds across the batches, a job repeated inside a batch is admitted
    once, and a batch holding a job admitted before (delivered "for the first time" again)
    reserves nothing twice."""
    brokers = [stores() for _ in range(4)]
    await brokers[0].set_team("bt", budget_nano=100 * CENT, period="daily")
    k_par, p_par = await brokers[0].create_key("bt", max_parallel=12)
    k_rpm, p_rpm = await brokers[0].create_key("bt", rpm=30)
    sizes = {f"b{i}": (2 + i % 4) * CENT for i in range(100)}
    now = time.time()

    def req(job: str, key: str, redelivered: bool = False) -> AdmitRequest:
        return AdmitRequest(job, 0, key, ROUTE, est(sizes[job]), redelivered=redelivered, team="bt")

    batches = [[req(f"b{i}", k_par if i % 2 else k_rpm) for i in range(n * 25, n * 25 + 25)] for n in range(4)]
    batches[0].append(batches[0][0])  # the same delivery twice in one batch
    outs = await asyncio.gather(*(b.admit_many(batch, now) for b, batch in zip(brokers, batches)))
    by_job: dict[str, list] = {}
    for batch, out in zip(batches, outs):
        assert len(out) == len(batch)
        for r, o in zip(batch, out):
            by_job.setdefault(r.job_id, []).append(o)
    twice = by_job.pop("b0")
    # The four batches race for the budget, so b0 may be refused; either way its twin shares its fate.
    assert type(twice[0]) is type(twice[1])
    if isinstance(twice[0], Admitted):
        assert not twice[0].again and twice[1].again
    by_job["b0"] = twice[:1]
    admitted = [j for j, (o,) in by_job.items() if isinstance(o, Admitted)]
    assert all(isinstance(o, (Admitted, OverBudget, Throttled)) for (o,) in by_job.values())
    row = await team_row(brokers[0], "bt")
    assert row.reserved_nano == sum(sizes[j] for j in admitted) <= 100 * CENT
    left = 100 * CENT - row.reserved_nano
    for j, (o,) in by_job.items():
        if isinstance(o, OverBudget):  # it did not fit when it came, nor would it now
            assert o.remaining_usd * 1e9 < sizes[j] and sizes[j] > left
    assert (await key_row(brokers[0], p_par)).inflight == sum(1 for j in admitted if int(j[1:]) % 2) <= 12
    assert (await key_row(brokers[0], p_rpm)).inflight == sum(1 for j in admitted if not int(j[1:]) % 2) <= 30
    async with brokers[0].engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(admissions).where(admissions.c.team == "bt"))).scalar_one() == len(admitted)

    # Delivered again as if for the first time: found by the insert, nothing reserved twice.
    k_free, p_free = await brokers[0].create_key("free")
    first = AdmitRequest("x1", 0, k_free, ROUTE, est(CENT), redelivered=False, team="free")
    assert isinstance((await brokers[1].admit_many([first], now))[0], Admitted)
    again = await brokers[2].admit_many([first, AdmitRequest("x2", 0, k_free, ROUTE, est(CENT), redelivered=False, team="free")], now)
    assert isinstance(again[0], Admitted) and again[0].again and isinstance(again[1], Admitted) and not again[1].again
    assert (await key_row(brokers[0], p_free)).reserved_nano == 2 * CENT and (await key_row(brokers[0], p_free)).inflight == 2
    # The same delivery twice in one batch, with room in the budget: admitted once.
    x3 = AdmitRequest("x3", 0, k_free, ROUTE, est(CENT), redelivered=False, team="free")
    pair = await brokers[3].admit_many([x3, x3], now)
    assert isinstance(pair[0], Admitted) and not pair[0].again and isinstance(pair[1], Admitted) and pair[1].again
    assert (await key_row(brokers[0], p_free)).reserved_nano == 3 * CENT


async def test_settlement_is_idempotent_and_order_free(stores):
    s = stores()
    await s.set_team("t", budget_nano=100 * CENT)
    key, prefix = await s.create_key("t")
    now = time.time()
    for j in ("a", "b", "c"):
        assert isinstance(await s.admit(j, 0, key, ROUTE, est(10 * CENT), now), Admitted)
    again = await s.admit("a", 0, key, ROUTE, est(10 * CENT), now)  # a redelivered job: no second reservation
    assert isinstance(again, Admitted) and again.again
    assert (await team_row(s, "t")).reserved_nano == 30 * CENT

    records = [cost("a", 0, outcome="Timeout", tokens=0), cost("a", 4 * CENT, attempt=1), cost("b", 0, outcome="ServerError", tokens=0)]
    for _ in range(2):  # redelivered: settled once
        await s.settle(records, [("b", 0)])
        await s.settle([], [("b", 0), ("nobody", 0)])
    row = await team_row(s, "t")
    # a: answered for $0.04 (released the rest); b: failed, released; c: still running.
    assert (row.spent_nano, row.reserved_nano) == (4 * CENT, 10 * CENT)
    assert (await key_row(s, prefix)).inflight == 1
    await s.settle([], [("c", 0)])
    await s.settle([cost("c", 0, outcome="lost", tokens=0)], [])  # a late record after the end
    row = await team_row(s, "t")
    assert (row.spent_nano, row.reserved_nano) == (4 * CENT, 0) and (await key_row(s, prefix)).inflight == 0
    # Calls of jobs admitted before governance still count as spend.
    await s.settle([cost("old-job", 1 * CENT, team="t")], [])
    assert (await team_row(s, "t")).spent_nano == 5 * CENT


async def test_rpm_holds_across_two_brokers_in_one_window_and_frees_in_the_next(stores):
    """100 jobs at once against 60 requests per minute through two brokers: exactly 60 are
    admitted; the others are told when to come back, and fit when that time comes."""
    a, b = stores(), stores()
    key, prefix = await a.create_key("t", rpm=60, on_limit="wait")
    now = float(int(time.time()))
    outs = await asyncio.gather(*((a if i % 2 else b).admit(f"r{i}", 0, key, ROUTE, est(0), now + i / 1000) for i in range(100)))
    ok = [o for o in outs if isinstance(o, Admitted)]
    waiting = [o for o in outs if isinstance(o, Throttled)]
    assert len(ok) == 60 and len(waiting) == 40
    assert all(w.on_limit == "wait" and w.limited.what == "rpm" and 59 < w.limited.retry_after_s <= 61 for w in waiting)
    # Still inside the window: nothing more.
    assert isinstance(await a.admit("late", 0, key, ROUTE, est(0), now + 60.5), Throttled)
    # The window has moved on: the next 60 fit, the 61st does not.
    later = await asyncio.gather(*((a if i % 2 else b).admit(f"n{i}", 0, key, ROUTE, est(0), now + 61.0) for i in range(61)))
    assert sum(isinstance(o, Admitted) for o in later) == 60
    async with a.engine.connect() as conn:
        per_second = (await conn.execute(select(rate_buckets.c.second, rate_buckets.c.requests)
                                         .where(rate_buckets.c.scope == f"key:{prefix}"))).all()
    assert sum(n for s, n in per_second if now - 60 <= s <= now + 60.5) <= 60


async def test_team_rpm_and_tpm_and_parallel_caps(stores):
    s = stores()
    await s.set_team("t", rpm=3, tpm=1000)
    k1, _ = await s.create_key("t")
    k2, p2 = await s.create_key("t", max_parallel=1)
    now = time.time()
    # TPM: 600-token estimates, 1000 per minute: one fits, the second waits for settlement.
    assert isinstance(await s.admit("t1", 0, k1, ROUTE, est(0, tokens=600), now), Admitted)
    second = await s.admit("t2", 0, k2, ROUTE, est(0, tokens=600), now)
    assert isinstance(second, Throttled) and second.limited.what == "tpm" and second.limited.owner == "team t"
    await s.settle([cost("t1", 0, tokens=100)], [])  # it used 100 tokens, not 600
    assert isinstance(await s.admit("t2", 0, k2, ROUTE, est(0, tokens=600), now), Admitted)
    # Parallel: key 2 has one job in flight.
    par = await s.admit("t3", 0, k2, ROUTE, est(0, tokens=10), now)
    assert isinstance(par, Throttled) and par.limited.what == "parallel" and par.on_limit == "fail"
    # RPM of the team: three admitted this minute (t1, t2, t3 via key 1).
    assert isinstance(await s.admit("t3", 0, k1, ROUTE, est(0, tokens=10), now), Admitted)
    rpm = await s.admit("t4", 0, k1, ROUTE, est(0, tokens=10), now)
    assert isinstance(rpm, Throttled) and rpm.limited.what == "rpm" and rpm.limited.owner == "team t"
    # A job over the whole TPM never fits, however long it waits.
    never = await s.admit("t5", 0, k1, ROUTE, est(0, tokens=5000), now + 120)
    assert isinstance(never, Throttled) and never.limited.never


async def test_key_states_allow_lists_and_hostile_strings(stores):
    s = stores()
    key, prefix = await s.create_key("t", tiers=["cheap"])
    now = time.time()
    assert "may not use tier" in (await s.admit("j1", 0, key, ROUTE, est(1), now)).message
    key, prefix = await s.create_key("t", expires_at=now + 10)
    assert isinstance(await s.admit("j2", 0, key, ROUTE, est(1), now), Admitted)
    assert "expired" in (await s.admit("j3", 0, key, ROUTE, est(1), now + 11)).message
    assert await s.revoke_key(prefix) and not await s.revoke_key(prefix)
    assert "revoked" in (await s.admit("j4", 0, key, ROUTE, est(1), time.time() + 1)).message
    new_key, new_prefix = await s.rotate_key(prefix)
    assert isinstance(await s.admit("j5", 0, new_key, ROUTE, est(1), time.time() + 1), Admitted)
    hostile = ["pb_x'; DROP TABLE virtual_keys;--", "' OR '1'='1", prefix + "_' OR 1=1 --" + "x" * 20, "pb_\x00\x00\x00\x00\x00_" + "a" * 32]
    for i, k in enumerate(hostile):
        assert isinstance(await s.admit(f"h{i}", 0, k, ROUTE, est(1), now), BadKey)
    await s.set_team("x'); DROP TABLE teams;--", budget_nano=1)  # stored as a name, nothing more
    async with s.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(virtual_keys))).scalar_one() == 3
        assert sorted((await conn.execute(select(teams.c.name))).scalars().all()) == ["t", "x'); DROP TABLE teams;--"]
    # Only hashes are stored.
    async with s.engine.connect() as conn:
        stored = " ".join(str(v) for r in (await conn.execute(select(virtual_keys))).all() for v in r)
    assert new_key not in stored and keys.digest(new_key) in stored


async def test_budgets_reset_each_period_and_keys_have_their_own(stores):
    s = stores()
    day = 86_400.0
    t0 = float(int(time.time() // day) * day) + 3600  # 01:00 UTC today
    await s.set_team("t", budget_nano=10 * CENT, period="daily", now=t0)
    key, prefix = await s.create_key("t", budget_nano=4 * CENT, period="monthly", now=t0)
    assert isinstance(await s.admit("d1", 0, key, ROUTE, est(3 * CENT), t0), Admitted)
    over = await s.admit("d2", 0, key, ROUTE, est(2 * CENT), t0)
    assert isinstance(over, OverBudget) and over.message.startswith(f"key {prefix}") and over.remaining_usd == pytest.approx(0.01)
    await s.settle([cost("d1", 3 * CENT, prefix=prefix, team="t")], [], now=t0)
    k2, _ = await s.create_key("t", now=t0)
    assert isinstance(await s.admit("d3", 0, k2, ROUTE, est(7 * CENT), t0), Admitted)
    refused = await s.admit("d4", 0, k2, ROUTE, est(1), t0)
    assert isinstance(refused, OverBudget) and refused.message.startswith("team t") and "daily budget" in refused.message
    await s.settle([cost("d3", 7 * CENT, team="t")], [], now=t0)
    # Tomorrow the team's daily spend starts again; the key's monthly one does not (if the month is the same).
    tomorrow = t0 + day
    assert isinstance(await s.admit("d5", 0, k2, ROUTE, est(10 * CENT), tomorrow), Admitted)
    same_month = budgets.period_key("monthly", t0) == budgets.period_key("monthly", tomorrow)
    assert isinstance(await s.admit("d6", 0, key, ROUTE, est(2 * CENT), tomorrow), OverBudget if same_month else Admitted)


async def test_stale_reservations_are_swept(stores):
    s = stores()
    await s.set_team("t", budget_nano=10 * CENT)
    key, prefix = await s.create_key("t")
    now = time.time()
    assert isinstance(await s.admit("lost", 0, key, ROUTE, est(6 * CENT), now - 7200), Admitted)
    stats = await s.sweep(ttl_s=3600, now=now)
    assert stats.ended == 1 and stats.released_nano == 6 * CENT
    assert (await team_row(s, "t")).reserved_nano == 0 and (await key_row(s, prefix)).inflight == 0
    async with s.engine.connect() as conn:
        assert (await conn.execute(select(admissions.c.done))).scalar_one() is True


async def test_soft_limit_alerts_once_a_period(stores):
    s = stores()
    await s.set_team("t", budget_nano=10 * CENT, soft_nano=5 * CENT, period="daily")
    key, _ = await s.create_key("t")
    now = time.time()
    first = await s.admit("s1", 0, key, ROUTE, est(3 * CENT), now)
    crossing = await s.admit("s2", 0, key, ROUTE, est(3 * CENT), now)
    after = await s.admit("s3", 0, key, ROUTE, est(1 * CENT), now)
    assert first.soft_crossed == () and crossing.soft_crossed == ("team t",) and after.soft_crossed == ()
    assert (await team_row(s, "t")).soft_alerts == 1


def shadow_cost(job_id: str, nano: int, outcome: str = "ok", team: str = "t", prefix: str | None = None) -> CostRecord:
    return msgspec.structs.replace(cost(job_id, nano, outcome=outcome, team=team, prefix=prefix), shadow=True)


async def test_shadow_mirrors_reserve_with_their_jobs_across_four_brokers(stores):
    """Given a $1.00 budget and four brokers, when 120 jobs of $0.02-$0.05 arrive at once, each
    with a $0.03 shadow mirror, then job and mirror are reserved together or the job alone,
    never past $1.00; settling live and shadow calls (half the mirrors failing) spends at most
    $1.00 and releases every reservation."""
    brokers = [stores() for _ in range(4)]
    await brokers[0].set_team("sh", budget_nano=100 * CENT, period="daily")
    key, prefix = await brokers[0].create_key("sh")
    sizes = [(2 + i % 4) * CENT for i in range(120)]
    now = time.time()
    outs = await asyncio.gather(*(brokers[i % 4].admit(f"sh-{i}", 0, key, ROUTE, est(sizes[i]), now, shadow_nano=3 * CENT)
                                  for i in range(120)))
    admitted = [i for i, o in enumerate(outs) if isinstance(o, Admitted)]
    mirrored = [i for i in admitted if outs[i].shadow_nano == 3 * CENT]
    assert mirrored and all(isinstance(outs[i], OverBudget) for i in range(120) if i not in admitted)
    row = await team_row(brokers[0], "sh")
    assert row.reserved_nano == sum(sizes[i] for i in admitted) + 3 * CENT * len(mirrored) <= 100 * CENT
    # A redelivered job finds its mirror's reservation: nothing reserved twice.
    again = await brokers[2].admit(f"sh-{mirrored[0]}", 0, key, ROUTE, est(sizes[mirrored[0]]), now, shadow_nano=3 * CENT)
    assert again.again and again.shadow_nano == 3 * CENT

    answered, failed = mirrored[::2], mirrored[1::2]
    records = [cost(f"sh-{i}", sizes[i], prefix=prefix, team="sh") for i in admitted]
    records += [shadow_cost(f"sh-{i}", 3 * CENT, prefix=prefix, team="sh") for i in answered]
    records += [shadow_cost(f"sh-{i}", 0, outcome="ClientError", prefix=prefix, team="sh") for i in failed]
    for _ in range(2):  # redelivered: settled once
        await brokers[1].settle(records, [], shadow_ended=[(f"sh-{i}", 0) for i in failed])
    row = await team_row(brokers[0], "sh")
    spent = sum(sizes[i] for i in admitted) + 3 * CENT * len(answered)
    assert (row.spent_nano, row.shadow_spent_nano, row.reserved_nano) == (spent, 3 * CENT * len(answered), 0) and spent <= 100 * CENT
    assert (await key_row(brokers[0], prefix)).inflight == 0
    listed = next(t for t in await brokers[3].list_teams() if t["name"] == "sh")
    assert (listed["live_spent_nano"], listed["shadow_spent_nano"]) == (sum(sizes[i] for i in admitted), 3 * CENT * len(answered))


async def test_a_mirror_that_never_ends_is_swept(stores):
    s = stores()
    await s.set_team("t", budget_nano=10 * CENT)
    key, _ = await s.create_key("t")
    now = time.time()
    assert (await s.admit("m", 0, key, ROUTE, est(4 * CENT), now - 7200, shadow_nano=5 * CENT)).shadow_nano == 5 * CENT
    await s.settle([cost("m", 4 * CENT, team="t")], [], now=now - 7000)  # the job answered; its mirror went silent
    assert (await team_row(s, "t")).reserved_nano == 5 * CENT
    await s.sweep(ttl_s=3600, now=now)
    assert (await team_row(s, "t")).reserved_nano == 0


async def test_an_old_key_database_is_upgraded_in_place(stores):
    """A database made before shadow reservations and 64-bit counts: its columns are added or
    widened when a new broker starts, and what it held stays."""
    s = stores()
    await s.set_team("t", budget_nano=10 * CENT)
    key, _ = await s.create_key("t")
    assert isinstance(await s.admit("before", 0, key, ROUTE, est(2 * CENT), time.time()), Admitted)
    async with s.engine.begin() as conn:  # back to the old layout
        for table, col in (("admissions", "shadow_reserved_nano"), ("admissions", "shadow_consumed_nano"),
                           ("admissions", "shadow_done"), ("teams", "shadow_spent_nano"), ("virtual_keys", "shadow_spent_nano")):
            await conn.exec_driver_sql(f"ALTER TABLE {_q(s, table)} DROP COLUMN {col}")
        if s.dialect == "postgresql":
            await conn.exec_driver_sql(f"ALTER TABLE {_q(s, 'settled_calls')} ALTER COLUMN attempt TYPE INTEGER")
    await stores().create()  # a new broker starts
    await s.settle([cost("before", 2 * CENT, team="t", attempt=3_000_000_000)], [])
    row = await team_row(s, "t")
    assert (row.spent_nano, row.reserved_nano, row.shadow_spent_nano) == (2 * CENT, 0, 0)


def _q(s: Store, table: str) -> str:
    schema = s.engine.get_execution_options().get("schema_translate_map", {}).get(None)
    return f'"{schema}"."{table}"' if schema else f'"{table}"'
