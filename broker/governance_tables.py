"""The governance tables (keys, teams, rate buckets, admissions, settled calls), how their rows
read as the pure decisions' types, and the engine they live behind. Same database as the cost
ledger (SQLite by default, Postgres for several nodes), through transport/db.py's engine.

The hot path lives in governance_admit.py (admission) and governance_settle.py (settlement),
the CLI's administration in governance_admin.py; governance_store.Store puts them together.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any, Awaitable, Callable, Self, TypeVar

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
    case,
    event,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from panelboard.transport import db
from panelboard.broker.budgets import Budget, Ticket
from panelboard.broker.keys import KeyRecord

T = TypeVar("T")

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

DIALECT_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _bump_statement(insert: Any) -> Any:
    ins = insert(rate_buckets)
    return ins.on_conflict_do_update(
        index_elements=["scope", "second"],
        set_={"requests": rate_buckets.c.requests + ins.excluded.requests, "tokens": rate_buckets.c.tokens + ins.excluded.tokens})


# Built once: one cached statement, run as an executemany over every bucket a batch touches.
BUMP_BUCKETS = {dialect: _bump_statement(insert) for dialect, insert in DIALECT_INSERT.items()}


async def bump_buckets(conn: AsyncConnection, dialect: str, rows: list[dict[str, Any]]) -> None:
    """Add requests and tokens to one-second buckets (in key order: a fixed lock order)."""
    await conn.execute(BUMP_BUCKETS[dialect], sorted(rows, key=lambda r: (r["scope"], r["second"])))


KEY_WINDOW, TEAM_WINDOW = 1, 2
KEEP_S = 7 * 86_400  # settled calls and ended admissions are kept this long


def key_scope(prefix: str) -> str:
    return f"key:{prefix}"


def team_scope(team: str) -> str:
    return f"team:{team}"


class Conflict(Exception):
    """A conditional update found the row changed under it: retry the transaction."""


def transient(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, Conflict) or any(s in text for s in ("deadlock detected", "could not serialize", "database is locked"))


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


def ticket(row: Any) -> Ticket:
    return Ticket(reserved_nano=row.reserved_nano, est_tokens=row.est_tokens, consumed_nano=row.consumed_nano,
                  used_tokens=row.used_tokens, done=row.done)


def shadow_ticket(row: Any) -> Ticket:
    return Ticket(reserved_nano=row.shadow_reserved_nano, est_tokens=0, consumed_nano=row.shadow_consumed_nano, done=row.shadow_done)


def rolled_spent(table: Table, pk: str, column: str = "spent_nano"):
    """`spent_nano` in the current period, in SQL: zero once the period has moved on."""
    return case((table.c.period_key == pk, table.c[column]), else_=literal(0, BigInteger))


def budget_defaults(now: float) -> dict[str, Any]:
    return {"budget_nano": None, "soft_nano": None, "period": "none", "period_key": "", "spent_nano": 0, "reserved_nano": 0,
            "soft_alerted": None, "soft_alerts": 0, "shadow_spent_nano": 0}


# The key's row and its team's, locked together (Postgres locks both joined rows; SQLite's
# BEGIN IMMEDIATE already holds the whole database).
_TEAM_COLS = [c.label(f"t_{c.name}") for c in teams.c]
KEY_AND_TEAM = select(virtual_keys, *_TEAM_COLS).join(teams, teams.c.name == virtual_keys.c.team).with_for_update()


class TeamView:
    """The team's columns of a joined row, under their own names."""

    __slots__ = ("_row",)

    def __init__(self, row: Any):
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, f"t_{name}")


class StoreBase:
    """The engine the tables live behind; the hot path (governance_admit, governance_settle) and
    the CLI's administration (governance_admin) are mixed into governance_store.Store."""

    def __init__(self, engine: AsyncEngine, durable: bool = True):
        self.engine = engine
        self.durable = durable  # SQLite's hot path fsyncs every commit (db.durable_for)
        self.dialect = engine.dialect.name
        self._insert: Any = DIALECT_INSERT[self.dialect]

    @classmethod
    def open(cls, url: str, schema: str | None = None, durable: bool = True) -> "Self":
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

        return cls(engine, durable)

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

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        for i in range(10):
            try:
                return await fn()
            except (DBAPIError, Conflict) as e:
                if i == 9 or not transient(e):
                    raise
                await asyncio.sleep(random.uniform(0, 0.005 * 2**i))
        raise AssertionError("unreachable")
