"""Keys, budgets, rate windows and reservations in SQL: the thin I/O around the pure decisions
of broker/keys.py, budgets.py and ratelimit.py. Same database as the cost ledger (SQLite by
default, Postgres for several nodes), through transport/db.py's engine.

Why budgets hold across broker processes: admission is ONE transaction that locks the key's
row and the team's row (`SELECT ... FOR UPDATE` on Postgres; `BEGIN IMMEDIATE` takes the
database's write lock on SQLite), reads the rate window, decides, and takes the reservation
with a conditional `UPDATE ... SET reserved = reserved + :x WHERE spent + reserved + :x <=
limit`. Brokers that admit jobs of the same team at once queue on that row lock, each seeing
the reservations committed before it: no check-then-record gap, no per-replica counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    case,
    or_,
    delete,
    event,
    func,
    inspect,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from panelboard.broker import budgets, keys, ratelimit
from panelboard.broker.budgets import NANO, Budget, Delta, Estimate, Ticket
from panelboard.broker.keys import KeyRecord
from panelboard.broker.ratelimit import Bucket, Limited, Limits
from panelboard.transport import db
from panelboard.schemas.errors import BadKey, OverBudget
from panelboard.schemas.job import CostRecord, Route

SCHEMA_ENV = "PANELBOARD_DATABASE_SCHEMA"  # a Postgres schema for these tables (tests, shared databases)

metadata = MetaData()


def _budget_columns() -> list[Column]:
    return [
        Column("budget_nano", BigInteger),  # None: no budget
        Column("soft_nano", BigInteger),  # crossing it logs a warning and counts an alert, once a period
        Column("period", String(8), nullable=False),  # none, daily, monthly
        Column("period_key", String(16), nullable=False),  # the period spent_nano belongs to
        Column("spent_nano", BigInteger, nullable=False),
        Column("reserved_nano", BigInteger, nullable=False),
        Column("soft_alerted", String(16)),
        Column("soft_alerts", BigInteger, nullable=False),
        # The shadow calls' part of spent_nano (which holds everything charged): `teams list`.
        Column("shadow_spent_nano", BigInteger, nullable=False, server_default=text("0")),
    ]


teams = Table(
    "teams",
    metadata,
    Column("name", String(128), primary_key=True),
    *_budget_columns(),
    Column("rpm", BigInteger),
    Column("tpm", BigInteger),
    Column("updated_at", Float, nullable=False),
)

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("prefix", String(16), primary_key=True),
    Column("hash", String(64), nullable=False),  # sha256 of the whole key; the key itself is never stored
    Column("team", String(128), nullable=False),
    Column("models", Text),  # JSON list: allow-list of catalog models; NULL: any
    Column("tiers", Text),  # JSON list: allow-list of tiers; NULL: any
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("rpm", BigInteger),
    Column("tpm", BigInteger),
    Column("max_parallel", BigInteger),
    Column("on_limit", String(8), nullable=False),  # wait | fail
    Column("inflight", BigInteger, nullable=False),  # jobs admitted and not yet ended
    Column("note", String(256)),
    Column("rotated_to", String(16)),
    *_budget_columns(),
    Index("ix_virtual_keys_team", "team"),
)

# One-second buckets of admissions per scope ("key:<prefix>" / "team:<name>"): see ratelimit.py.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("scope", String(160), nullable=False),
    Column("second", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope", "second", name="rate_buckets_pkey"),
)

# One row per admitted job (run): its reservation and how much of it is settled.
admissions = Table(
    "admissions",
    metadata,
    Column("job_id", String(128), nullable=False),
    Column("run", BigInteger, nullable=False),
    Column("key_prefix", String(16), nullable=False),
    Column("team", String(128), nullable=False),
    Column("second", BigInteger, nullable=False),  # its rate bucket
    Column("windowed", BigInteger, nullable=False),  # bit 1: counted in the key's window, bit 2: the team's
    Column("reserved_nano", BigInteger, nullable=False),
    Column("est_tokens", BigInteger, nullable=False),
    Column("consumed_nano", BigInteger, nullable=False),
    Column("used_tokens", BigInteger, nullable=False),
    Column("done", Boolean, nullable=False),
    # The shadow mirror's own reservation, taken with the job's and settled by its own chain.
    Column("shadow_reserved_nano", BigInteger, nullable=False, server_default=text("0")),
    Column("shadow_consumed_nano", BigInteger, nullable=False, server_default=text("0")),
    Column("shadow_done", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", Float, nullable=False),
    Column("done_at", Float),
    PrimaryKeyConstraint("job_id", "run", name="admissions_pkey"),
    Index("ix_admissions_open", "done", "created_at"),
)

# Cost records already settled: a redelivered one changes nothing.
settled_calls = Table(
    "settled_calls",
    metadata,
    Column("job_id", String(128), nullable=False),
    Column("run", BigInteger, nullable=False),
    Column("hop", BigInteger, nullable=False),
    Column("attempt", BigInteger, nullable=False),
    Column("shadow", Boolean, nullable=False),
    Column("ts", Float, nullable=False),
    PrimaryKeyConstraint("job_id", "run", "hop", "attempt", "shadow", name="settled_calls_pkey"),
    Index("ix_settled_calls_ts", "ts"),
)

# Both dialects' inserts have on_conflict_do_nothing / do_update and .excluded (the core one does not).
_DIALECT_INSERT: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
KEY_WINDOW, TEAM_WINDOW = 1, 2
KEEP_S = 7 * 86_400  # settled calls and ended admissions are kept this long


def key_scope(prefix: str) -> str:
    return f"key:{prefix}"


def team_scope(team: str) -> str:
    return f"team:{team}"


# -- results of an admission --------------------------------------------------------------------
@dataclass(frozen=True)
class Admitted:
    prefix: str
    team: str
    reserved_nano: int
    again: bool = False  # a redelivered job that was admitted before: nothing new reserved
    soft_crossed: tuple[str, ...] = ()  # owners whose soft limit this job crossed
    shadow_nano: int = 0  # reserved for its shadow mirror: 0, no mirror may be dispatched


@dataclass(frozen=True)
class Throttled:
    limited: Limited
    on_limit: keys.OnLimit


AdmitOutcome = Admitted | Throttled | BadKey | OverBudget


@dataclass
class SettleStats:
    costs: int = 0  # cost records newly settled
    ended: int = 0  # admissions that ended
    released_nano: int = 0


class _Conflict(Exception):
    """A conditional update found the row changed under it: retry the transaction."""


def _transient(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, _Conflict) or any(s in text for s in ("deadlock detected", "could not serialize", "database is locked"))


def _json_list(v: str | None) -> frozenset[str] | None:
    return None if v is None else frozenset(json.loads(v))


def key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        prefix=row.prefix, hash=row.hash, team=row.team, models=_json_list(row.models), tiers=_json_list(row.tiers),
        expires_at=row.expires_at, revoked_at=row.revoked_at, rpm=row.rpm, tpm=row.tpm, max_parallel=row.max_parallel,
        on_limit=row.on_limit,
    )


def budget_of(owner: str, row: Any) -> Budget:
    return Budget(owner=owner, limit_nano=row.budget_nano, period=row.period, period_key=row.period_key, spent_nano=row.spent_nano,
                  reserved_nano=row.reserved_nano, soft_nano=row.soft_nano, soft_alerted=row.soft_alerted)


def _ticket(row: Any) -> Ticket:
    return Ticket(reserved_nano=row.reserved_nano, est_tokens=row.est_tokens, consumed_nano=row.consumed_nano,
                  used_tokens=row.used_tokens, done=row.done)


def _shadow_ticket(row: Any) -> Ticket:
    return Ticket(reserved_nano=row.shadow_reserved_nano, est_tokens=0, consumed_nano=row.shadow_consumed_nano, done=row.shadow_done)


def _rolled_spent(table: Table, pk: str, column: str = "spent_nano"):
    """`spent_nano` in the current period, in SQL: zero once the period has moved on."""
    return case((table.c.period_key == pk, table.c[column]), else_=literal(0, BigInteger))


def _budget_defaults(now: float) -> dict[str, Any]:
    return {"budget_nano": None, "soft_nano": None, "period": "none", "period_key": "", "spent_nano": 0, "reserved_nano": 0,
            "soft_alerted": None, "soft_alerts": 0, "shadow_spent_nano": 0}


# The key's row and its team's, locked together (Postgres locks both joined rows; SQLite's
# BEGIN IMMEDIATE already holds the whole database).
_TEAM_COLS = [c.label(f"t_{c.name}") for c in teams.c]
_KEY_AND_TEAM = select(virtual_keys, *_TEAM_COLS).join(teams, teams.c.name == virtual_keys.c.team).with_for_update()


class _TeamView:
    """The team's columns of a joined row, under their own names."""

    __slots__ = ("_row",)

    def __init__(self, row: Any):
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, f"t_{name}")


class Store:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert = _DIALECT_INSERT[self.dialect]

    @classmethod
    def open(cls, url: str, schema: str | None = None) -> "Store":
        engine = db.open_engine(url, schema=schema if schema is not None else (os.environ.get(SCHEMA_ENV) or None))
        if engine.dialect.name == "sqlite":
            # Every transaction takes the write lock up front (BEGIN IMMEDIATE): two brokers'
            # admissions can never interleave between the read and the reservation.
            @event.listens_for(engine.sync_engine, "connect")
            def _connect(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None  # we BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def create(self) -> None:
        if (path := db.sqlite_path(str(self.engine.url))) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        await db.upgrade(self.engine, metadata)

    async def has_keys(self) -> bool:
        """Whether any virtual key was ever created (auto mode turns governance on then).
        Never creates a SQLite file as a side effect."""
        if (path := db.sqlite_path(str(self.engine.url))) is not None and not path.exists():
            return False
        schema = self.engine.get_execution_options().get("schema_translate_map", {}).get(None)
        async with self.engine.connect() as conn:
            if not await conn.run_sync(lambda c: inspect(c).has_table(virtual_keys.name, schema=schema)):
                return False
            return (await conn.execute(select(virtual_keys.c.prefix).limit(1))).first() is not None

    async def _retrying(self, fn):
        for i in range(10):
            try:
                return await fn()
            except (DBAPIError, _Conflict) as e:
                if i == 9 or not _transient(e):
                    raise
                await asyncio.sleep(random.uniform(0, 0.005 * 2**i))

    # -- admission: the hot path under governance -----------------------------------------------
    async def admit(self, job_id: str, run: int, key: str | None, route: Route, est: Estimate, now: float,
                    redelivered: bool = True, team: str | None = None, shadow_nano: int = 0) -> AdmitOutcome:
        """Verify the key, check the rate limits, reserve the budget: one transaction. A job
        delivered for the first time (`redelivered=False`) skips looking for an earlier
        admission; the insert would still notice one. `team`: the team the job was published
        for; a key of another team is refused before anything is reserved. `shadow_nano`: the
        worst case of the job's shadow mirror, reserved with it when it fits (Admitted.shadow_nano says)."""
        return await self._retrying(lambda: self._admit(job_id, run, key, route, est, now, redelivered, team, shadow_nano))

    async def _prior(self, conn: AsyncConnection, job_id: str, run: int) -> Admitted | None:
        prior = (await conn.execute(
            select(admissions.c.key_prefix, admissions.c.team, admissions.c.reserved_nano, admissions.c.shadow_reserved_nano)
            .where(admissions.c.job_id == job_id, admissions.c.run == run))).first()
        if prior is None:
            return None
        return Admitted(prefix=prior.key_prefix, team=prior.team, reserved_nano=prior.reserved_nano, again=True,
                        shadow_nano=prior.shadow_reserved_nano)

    async def _admit(self, job_id: str, run: int, key: str | None, route: Route, est: Estimate, now: float, redelivered: bool,
                     expect_team: str | None = None, shadow_nano: int = 0) -> AdmitOutcome:
        # Round trips are what an admission costs (and how long it holds the team's lock):
        # typically four statements, six with rate limits.
        async with self.engine.begin() as conn:
            if redelivered and (prior := await self._prior(conn, job_id, run)) is not None:
                return prior  # admitted before a crash or a lost ack: its reservation stands
            prefix = keys.prefix_of(key)
            krow = trow = None
            if prefix is not None:  # the key's row and its team's, both locked, in one statement
                row = (await conn.execute(_KEY_AND_TEAM.where(virtual_keys.c.prefix == prefix))).first()
                if row is not None:
                    krow, trow = row, _TeamView(row)
                else:  # a key whose team has no row (made by hand): the key alone
                    krow = (await conn.execute(select(virtual_keys).where(virtual_keys.c.prefix == prefix).with_for_update())).first()
            verdict = keys.verify(key, key_record(krow) if krow is not None else None, route, now)
            if isinstance(verdict, BadKey):
                return verdict
            assert krow is not None and prefix is not None
            team = verdict.team
            if expect_team is not None and team != expect_team:
                return keys.team_mismatch(expect_team, team)

            # rate limits: jobs in flight, then the key's and the team's minute windows
            key_limits = Limits(f"key {prefix}", krow.rpm, krow.tpm)
            team_limits = Limits(f"team {team}", trow.rpm, trow.tpm) if trow is not None else Limits(f"team {team}")
            limited = ratelimit.check_parallel(f"key {prefix}", krow.max_parallel, krow.inflight)
            windowed = (KEY_WINDOW if key_limits.rpm is not None or key_limits.tpm is not None else 0) | (
                TEAM_WINDOW if team_limits.rpm is not None or team_limits.tpm is not None else 0)
            if limited is None and windowed:
                scopes = {key_scope(prefix): key_limits, team_scope(team): team_limits}
                rows = (await conn.execute(
                    select(rate_buckets.c.scope, rate_buckets.c.second, rate_buckets.c.requests, rate_buckets.c.tokens)
                    .where(rate_buckets.c.scope.in_(list(scopes)), rate_buckets.c.second >= ratelimit.window_floor(now)))).all()
                by_scope: dict[str, list[Bucket]] = defaultdict(list)
                for r in rows:
                    by_scope[r.scope].append(Bucket(r.second, r.requests, r.tokens))
                for scope, limits in scopes.items():
                    limited = ratelimit.check(limits, by_scope[scope], est.tokens, now)
                    if limited is not None:
                        break
            if limited is not None:
                return Throttled(limited, krow.on_limit)

            # budgets: the key's (if it has one), then the team's
            what = f"this job (up to {est.prompt_tokens} prompt + {est.output_tokens} output tokens at {est.model}'s price)"
            plan = budgets.reserve_all([budget_of(f"key {prefix}", krow), budget_of(f"team {team}", trow) if trow is not None else None],
                                       est.cost_nano, shadow_nano, now, what)
            if isinstance(plan, OverBudget):
                return plan
            rk, rt = plan.reserved
            assert rk is not None

            second = int(now)
            res = await conn.execute(self._insert(admissions).on_conflict_do_nothing(), dict(
                job_id=job_id, run=run, key_prefix=prefix, team=team, second=second, windowed=windowed,
                reserved_nano=est.cost_nano, est_tokens=est.tokens, consumed_nano=0, used_tokens=0, done=False, created_at=now,
                shadow_reserved_nano=plan.shadow_nano, shadow_consumed_nano=0, shadow_done=plan.shadow_nano == 0))
            if res.rowcount != 1:  # admitted before after all; nothing written yet
                return await self._prior(conn, job_id, run) or Admitted(prefix=prefix, team=team, reserved_nano=0, again=True)
            await self._take(conn, virtual_keys, virtual_keys.c.prefix == prefix, rk, plan.amount_nano, extra={"inflight": virtual_keys.c.inflight + 1})
            if rt is not None:
                await self._take(conn, teams, teams.c.name == team, rt, plan.amount_nano, extra={})
            buckets = []
            if windowed & KEY_WINDOW:
                buckets.append({"scope": key_scope(prefix), "second": second, "requests": 1, "tokens": est.tokens})
            if windowed & TEAM_WINDOW:
                buckets.append({"scope": team_scope(team), "second": second, "requests": 1, "tokens": est.tokens})
            if buckets:
                await self._bump_buckets(conn, buckets)
            crossed = tuple(r.after.owner for r in (rk, rt) if r is not None and r.soft_crossed and r.after is not None)
            return Admitted(prefix=prefix, team=team, reserved_nano=est.cost_nano, soft_crossed=crossed, shadow_nano=plan.shadow_nano)

    async def _take(self, conn: AsyncConnection, table: Table, where, r: budgets.Reserved, amount: int, extra: dict[str, Any]) -> None:
        """The reservation, as one conditional UPDATE: it re-checks under the row lock exactly
        what reserve() decided, and a row that changed anyway makes the transaction retry."""
        values: dict[str, Any] = {"reserved_nano": table.c.reserved_nano + amount, **extra}
        cond = where
        if r.before is not None:
            pk = r.before.period_key
            spent = _rolled_spent(table, pk)
            values |= {"spent_nano": spent, "shadow_spent_nano": _rolled_spent(table, pk, "shadow_spent_nano"), "period_key": pk}
            if r.before.limit_nano is not None:
                cond = and_(where, spent + table.c.reserved_nano + amount <= table.c.budget_nano)
            if r.soft_crossed:
                values |= {"soft_alerted": pk, "soft_alerts": table.c.soft_alerts + 1}
        res = await conn.execute(update(table).where(cond).values(**values))
        if res.rowcount != 1:
            raise _Conflict(f"{table.name}: the budget row changed under its lock")

    async def _bump_buckets(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        """One multi-row upsert: this second's bucket of the key and of the team."""
        ins = self._insert(rate_buckets).values(sorted(rows, key=lambda r: (r["scope"], r["second"])))
        await conn.execute(ins.on_conflict_do_update(
            index_elements=["scope", "second"],
            set_={"requests": rate_buckets.c.requests + ins.excluded.requests, "tokens": rate_buckets.c.tokens + ins.excluded.tokens},
        ))

    # -- settlement ---------------------------------------------------------------------------
    async def settle(self, costs: Iterable[CostRecord], ended: Iterable[tuple[str, int]], now: float | None = None,
                     shadow_ended: Iterable[tuple[str, int]] = ()) -> SettleStats:
        """Cost records replace reservations with real cost; `ended` (job, run) pairs (Failed
        results) release what their jobs still hold, `shadow_ended` ones what their shadow
        mirrors hold (a shadow chain that failed). Idempotent: a redelivered record or result
        changes nothing. One transaction per batch."""
        costs, ended, shadow_ended = list(costs), list(ended), list(shadow_ended)
        now = time.time() if now is None else now
        return await self._retrying(lambda: self._settle(costs, ended, now, shadow_ended))

    async def _settle(self, costs: list[CostRecord], ended: list[tuple[str, int]], now: float,
                      shadow_ended: list[tuple[str, int]]) -> SettleStats:
        stats = SettleStats()
        async with self.engine.begin() as conn:
            new: list[CostRecord] = []
            if costs:
                uniq = {(r.job_id, r.run, r.hop, r.attempt, r.shadow): r for r in costs}
                ins = self._insert(settled_calls).on_conflict_do_nothing().returning(
                    settled_calls.c.job_id, settled_calls.c.run, settled_calls.c.hop, settled_calls.c.attempt, settled_calls.c.shadow)
                inserted = {tuple(r) for r in (await conn.execute(
                    ins, [{"job_id": k[0], "run": k[1], "hop": k[2], "attempt": k[3], "shadow": k[4], "ts": now} for k in uniq])).all()}
                new = [r for k, r in uniq.items() if k in inserted]
            stats.costs = len(new)
            wanted = sorted({(r.job_id, r.run) for r in new} | set(ended) | set(shadow_ended))
            tickets = await self._lock_admissions(conn, wanted)
            await self._apply(conn, tickets, new, ended, now, stats, shadow_ended)
        return stats

    async def _lock_admissions(self, conn: AsyncConnection, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], Any]:
        out: dict[tuple[str, int], Any] = {}
        for i in range(0, len(wanted), 400):
            chunk = wanted[i:i + 400]
            rows = (await conn.execute(
                select(admissions).where(tuple_(admissions.c.job_id, admissions.c.run).in_(chunk))
                .order_by(admissions.c.job_id, admissions.c.run).with_for_update())).all()
            out |= {(r.job_id, r.run): r for r in rows}
        return out

    async def _apply(self, conn: AsyncConnection, rows: dict[tuple[str, int], Any], costs: list[CostRecord],
                     ended: list[tuple[str, int]], now: float, stats: SettleStats, shadow_ended: Sequence[tuple[str, int]] = ()) -> None:
        tickets = {k: _ticket(r) for k, r in rows.items()}
        start = dict(tickets)
        mirrors = {k: _shadow_ticket(r) for k, r in rows.items() if r.shadow_reserved_nano}  # jobs whose mirror reserved
        mirrors_start = dict(mirrors)
        key_d: dict[str, Delta] = defaultdict(Delta)
        team_d: dict[str, Delta] = defaultdict(Delta)
        bucket_d: dict[tuple[str, int], int] = defaultdict(int)

        def charge(k: tuple[str, int], d: Delta) -> None:
            row = rows[k]
            key_d[row.key_prefix] += d
            team_d[row.team] += d
            if d.window_tokens:
                if row.windowed & KEY_WINDOW:
                    bucket_d[(key_scope(row.key_prefix), row.second)] += d.window_tokens
                if row.windowed & TEAM_WINDOW:
                    bucket_d[(team_scope(row.team), row.second)] += d.window_tokens

        for rec in costs:
            cost = round(rec.cost_usd * NANO)
            k = (rec.job_id, rec.run)
            if not rec.shadow and k in tickets:
                tickets[k], d = budgets.settle_cost(tickets[k], cost, rec.prompt_tokens + rec.completion_tokens, terminal=rec.outcome == "ok")
                charge(k, d)
            elif rec.shadow and k in mirrors:
                mirrors[k], d = budgets.settle_shadow_cost(mirrors[k], cost, terminal=rec.outcome == "ok")
                charge(k, d)
            elif cost:  # not admitted under governance (or a mirror admitted before shadow reservations): spend all the same
                d = Delta(spent_nano=cost, shadow_spent_nano=cost if rec.shadow else 0)
                if rec.key_prefix and keys.PREFIX_RE.match(rec.key_prefix):
                    key_d[rec.key_prefix] += d
                team_d[rec.team] += d
        for k in ended:
            if k in tickets:
                tickets[k], d = budgets.settle_done(tickets[k])
                charge(k, d)
        for k in shadow_ended:
            if k in mirrors:
                mirrors[k], d = budgets.settle_shadow_done(mirrors[k])
                charge(k, d)

        for k, t in sorted(tickets.items()):
            m, m0 = mirrors.get(k), mirrors_start.get(k)
            if t != start[k] or m != m0:
                if t.done and not start[k].done:
                    stats.ended += 1
                    stats.released_nano += start[k].holds_nano() - t.holds_nano()
                values: dict[str, Any] = dict(consumed_nano=t.consumed_nano, used_tokens=t.used_tokens, done=t.done,
                                              done_at=now if t.done and (m is None or m.done) else None)
                if m is not None and m0 is not None:
                    stats.released_nano += m0.holds_nano() - m.holds_nano() if m.done and not m0.done else 0
                    values |= dict(shadow_consumed_nano=m.consumed_nano, shadow_done=m.done)
                await conn.execute(update(admissions).where(admissions.c.job_id == k[0], admissions.c.run == k[1]).values(**values))
        await self._charge(conn, virtual_keys, virtual_keys.c.prefix, key_d, now)
        await self._charge(conn, teams, teams.c.name, team_d, now)
        if bucket_d:
            ins = self._insert(rate_buckets)
            stmt = ins.on_conflict_do_update(index_elements=["scope", "second"], set_={"tokens": rate_buckets.c.tokens + ins.excluded.tokens})
            for (scope, second), tokens in sorted(bucket_d.items()):
                if tokens:
                    await conn.execute(stmt, {"scope": scope, "second": second, "requests": 0, "tokens": tokens})

    async def _charge(self, conn: AsyncConnection, table: Table, col, deltas: dict[str, Delta], now: float) -> None:
        """Apply settled deltas to budget rows, in key order (a fixed lock order: no deadlocks)."""
        names = sorted(n for n, d in deltas.items() if d != Delta())
        if not names:
            return
        periods = {r[0]: r[1] for r in (await conn.execute(select(col, table.c.period).where(col.in_(names)).order_by(col).with_for_update())).all()}
        for name in names:
            if name not in periods:
                continue  # no row: nobody budgets or limits this team/key
            d = deltas[name]
            pk = budgets.period_key(periods[name], now)
            values: dict[str, Any] = {
                "spent_nano": _rolled_spent(table, pk) + d.spent_nano,
                "shadow_spent_nano": _rolled_spent(table, pk, "shadow_spent_nano") + d.shadow_spent_nano,
                "period_key": pk,
                "reserved_nano": table.c.reserved_nano + d.reserved_nano,
            }
            if table is virtual_keys and d.inflight:
                values["inflight"] = table.c.inflight + d.inflight
            await conn.execute(update(table).where(col == name).values(**values))

    async def sweep(self, ttl_s: float, now: float | None = None) -> SettleStats:
        """Housekeeping: release reservations of jobs that never ended (a lost terminal event),
        and drop rate buckets, settled calls and ended admissions nobody reads any more."""
        now = time.time() if now is None else now

        async def go() -> SettleStats:
            stats = SettleStats()
            async with self.engine.begin() as conn:
                stale = [(r.job_id, r.run) for r in (await conn.execute(
                    select(admissions.c.job_id, admissions.c.run)
                    .where(or_(admissions.c.done.is_(False), admissions.c.shadow_done.is_(False)), admissions.c.created_at < now - ttl_s)
                    .order_by(admissions.c.job_id, admissions.c.run).limit(1000))).all()]
                if stale:
                    await self._apply(conn, await self._lock_admissions(conn, stale), [], stale, now, stats, stale)
                await conn.execute(delete(rate_buckets).where(rate_buckets.c.second < int(now) - 5 * ratelimit.WINDOW_S))
                await conn.execute(delete(settled_calls).where(settled_calls.c.ts < now - KEEP_S))
                await conn.execute(delete(admissions).where(admissions.c.done.is_(True), admissions.c.done_at < now - KEEP_S))
            return stats

        return await self._retrying(go)

    # -- administration (the CLI) -------------------------------------------------------------------
    async def create_key(self, team: str, *, models: list[str] | None = None, tiers: list[str] | None = None,
                         expires_at: float | None = None, rpm: int | None = None, tpm: int | None = None,
                         max_parallel: int | None = None, on_limit: str = "fail", budget_nano: int | None = None,
                         soft_nano: int | None = None, period: str = "none", note: str | None = None,
                         spent_nano: int = 0, now: float | None = None) -> tuple[str, str]:
        """A new key for `team`: returns (key, prefix). The key is shown once and not kept."""
        now = time.time() if now is None else now
        await self.create()
        for _ in range(20):
            key, prefix = keys.generate()
            row = {
                "prefix": prefix, "hash": keys.digest(key), "team": team, "models": json.dumps(sorted(models)) if models is not None else None,
                "tiers": json.dumps(sorted(tiers)) if tiers is not None else None, "created_at": now, "expires_at": expires_at,
                "revoked_at": None, "rpm": rpm, "tpm": tpm, "max_parallel": max_parallel, "on_limit": on_limit, "inflight": 0,
                "note": note, "rotated_to": None, **_budget_defaults(now),
                "budget_nano": budget_nano, "soft_nano": soft_nano, "period": period, "period_key": budgets.period_key(period, now),  # type: ignore[arg-type]
                "spent_nano": spent_nano,
            }
            async with self.engine.begin() as conn:
                res = await conn.execute(self._insert(virtual_keys).on_conflict_do_nothing(), row)
                if res.rowcount == 1:
                    # Every key's team has a row (no budget, no limits until `teams set`), so that
                    # admission reads and locks both in one statement.
                    await conn.execute(self._insert(teams).on_conflict_do_nothing(), {
                        "name": team, **_budget_defaults(now), "rpm": None, "tpm": None, "updated_at": now})
                    return key, prefix
        raise RuntimeError("could not draw an unused key prefix")

    async def list_keys(self, team: str | None = None) -> list[dict[str, Any]]:
        await self.create()
        q = select(virtual_keys).order_by(virtual_keys.c.team, virtual_keys.c.created_at)
        if team is not None:
            q = q.where(virtual_keys.c.team == team)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d.pop("hash")  # never shown, not even hashed
            d["models"], d["tiers"] = (json.loads(d["models"]) if d["models"] else d["models"]), (json.loads(d["tiers"]) if d["tiers"] else d["tiers"])
            out.append(d)
        return out

    async def get_key(self, prefix: str) -> dict[str, Any] | None:
        rows = [k for k in await self.list_keys() if k["prefix"] == prefix]
        return rows[0] if rows else None

    async def revoke_key(self, prefix: str, at: float | None = None) -> bool:
        at = time.time() if at is None else at
        await self.create()
        async with self.engine.begin() as conn:
            res = await conn.execute(update(virtual_keys).where(virtual_keys.c.prefix == prefix, virtual_keys.c.revoked_at.is_(None)).values(revoked_at=at))
            return res.rowcount == 1

    async def rotate_key(self, prefix: str, grace_s: float = 0.0, now: float | None = None) -> tuple[str, str] | None:
        """A new key with the same team, limits and budget (its spend carried over); the old one
        stops working after `grace_s`."""
        now = time.time() if now is None else now
        old = await self.get_key(prefix)
        if old is None:
            return None
        key, new_prefix = await self.create_key(
            old["team"], models=old["models"], tiers=old["tiers"], expires_at=old["expires_at"], rpm=old["rpm"], tpm=old["tpm"],
            max_parallel=old["max_parallel"], on_limit=old["on_limit"], budget_nano=old["budget_nano"], soft_nano=old["soft_nano"],
            period=old["period"], note=old["note"], spent_nano=old["spent_nano"] if old["period_key"] == budgets.period_key(old["period"], now) else 0,
            now=now)
        async with self.engine.begin() as conn:
            await conn.execute(update(virtual_keys).where(virtual_keys.c.prefix == prefix).values(
                rotated_to=new_prefix, revoked_at=func.coalesce(virtual_keys.c.revoked_at, now + grace_s)))
        return key, new_prefix

    async def set_team(self, name: str, now: float | None = None, **fields: Any) -> None:
        """Create or change a team's budget and limits. Only the given fields change; spend
        and reservations are kept (a new period keeps the spend of the current one)."""
        now = time.time() if now is None else now
        await self.create()
        allowed = {"budget_nano", "soft_nano", "period", "rpm", "tpm"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown team fields {sorted(unknown)}")
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(teams).where(teams.c.name == name).with_for_update())).first()
            if row is None:
                values = {"name": name, **_budget_defaults(now), "rpm": None, "tpm": None, "updated_at": now, **fields}
                values["period_key"] = budgets.period_key(values["period"], now)
                await conn.execute(teams.insert().values(**values))
                return
            values = {**fields, "updated_at": now}
            if "period" in fields and fields["period"] != row.period:
                current = budgets.period_key(row.period, now)
                values["spent_nano"] = row.spent_nano if row.period_key == current else 0
                values["shadow_spent_nano"] = row.shadow_spent_nano if row.period_key == current else 0
                values["period_key"] = budgets.period_key(fields["period"], now)
            await conn.execute(update(teams).where(teams.c.name == name).values(**values))

    async def list_teams(self) -> list[dict[str, Any]]:
        await self.create()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(teams).order_by(teams.c.name))).all()
        now = time.time()
        out = []
        for r in rows:
            d = dict(r._mapping)
            b = budget_of(f"team {r.name}", r).rolled(now)
            d["spent_nano"] = b.spent_nano  # live and shadow calls
            d["shadow_spent_nano"] = d["shadow_spent_nano"] if b.period_key == r.period_key else 0
            d["live_spent_nano"] = b.spent_nano - d["shadow_spent_nano"]
            d["remaining_nano"] = b.remaining_nano()
            out.append(d)
        return out
