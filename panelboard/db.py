"""The cost ledger in SQL: one table, the same schema on SQLite (the default, a file under the
stack home) and Postgres (for several nodes), through SQLAlchemy Core.

Money is stored as integer nano-dollars: sums of integers are exact, so SQLite and Postgres
give the same reports to the last digit, and a cent is never lost to float rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from schemas.config import Config
from schemas.job import CostRecord

URL_ENV = "PANELBOARD_DATABASE_URL"
NANO = 1_000_000_000

metadata = MetaData()

costs = Table(
    "cost_records",
    metadata,
    # One row per provider call. The key is the call's identity, so a redelivered record is
    # an insert that does nothing: billed exactly once. A shadow call mirrors a live one with
    # the same (job, run, hop, attempt), so the flag is part of the key.
    Column("job_id", String(128), nullable=False),
    Column("run", Integer, nullable=False),
    Column("hop", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("shadow", Boolean, nullable=False),
    Column("ts", Float, nullable=False),  # unix seconds, when the call started
    Column("team", String(128), nullable=False),
    Column("key_prefix", String(16)),
    Column("feature", String(128)),
    Column("intent", String(128)),
    Column("tier", String(128), nullable=False),
    Column("provider", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("quantization", String(32)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost_nano_usd", BigInteger, nullable=False),  # at the catalog price of that moment
    Column("latency_ms", Integer, nullable=False),  # the provider call; 0 for a lost call
    Column("queue_ms", Integer, nullable=False),  # admission to the start of the call
    Column("outcome", String(32), nullable=False),  # ok, RateLimited, ServerError, Timeout, ..., lost
    PrimaryKeyConstraint("job_id", "run", "hop", "attempt", "shadow", name="cost_records_pkey"),
    # Every report reads a time window.
    Index("ix_cost_records_ts", "ts"),
    # Shadow rows are few: a partial index finds them without touching live traffic. SQLite
    # uses it only for a query that repeats its WHERE term, and SQLAlchemy writes `shadow = 1`.
    Index("ix_cost_records_shadow_ts", "ts", sqlite_where=text("shadow = 1"), postgresql_where=text("shadow")),
)

COLUMNS = [c.name for c in costs.columns]

# Insert-or-skip: a row whose key is already there (a redelivered record) is left alone.
_INSERTS = {
    "postgresql": postgresql.insert(costs).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(costs).on_conflict_do_nothing(),
}


def row(rec: CostRecord) -> dict[str, Any]:
    return {
        "job_id": rec.job_id, "run": rec.run, "hop": rec.hop, "attempt": rec.attempt, "shadow": rec.shadow, "ts": rec.ts,
        "team": rec.team, "key_prefix": rec.key_prefix, "feature": rec.feature, "intent": rec.intent, "tier": rec.tier,
        "provider": rec.provider, "model": rec.model, "quantization": rec.quantization,
        "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
        "cost_nano_usd": round(rec.cost_usd * NANO), "latency_ms": round(rec.latency_ms), "queue_ms": round(rec.queue_ms),
        "outcome": rec.outcome,
    }


class epoch_day(FunctionElement):
    """Whole days since 1970 (UTC) of a unix-seconds column. Spelled per dialect: Postgres
    rounds a float cast to integer where SQLite truncates, and SQLite may lack floor()."""

    type = Integer()
    inherit_cache = True


@compiles(epoch_day, "sqlite")
def _epoch_day_sqlite(element: epoch_day, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} / 86400 AS INTEGER)"


@compiles(epoch_day, "postgresql")
def _epoch_day_pg(element: epoch_day, compiler: Any, **kw: Any) -> str:
    return f"CAST(floor({compiler.process(element.clauses, **kw)} / 86400) AS INTEGER)"


# -- where the ledger is ---------------------------------------------------------------------
def default_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'ledger.db'}"


def resolve_url(explicit: str | None, cfg: Config | None, home: Path) -> str:
    """--database-url, else $PANELBOARD_DATABASE_URL, else the config's database.url, else a
    SQLite file beside the embedded stack's data."""
    return explicit or os.environ.get(URL_ENV) or (cfg.database.url if cfg else None) or default_url(home)


def display(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") else None


class DatabaseError(ValueError):
    pass


def open_engine(url: str, schema: str | None = None) -> AsyncEngine:
    """An async engine for the ledger. `schema` places the table in a Postgres schema (the
    tests use one per run so that runs never collide)."""
    try:
        u = make_url(url)
        engine = create_async_engine(u) if u.get_backend_name() == "sqlite" else create_async_engine(u, pool_pre_ping=True)
    except (ArgumentError, ImportError) as e:
        raise DatabaseError(
            f"cannot use database URL {url!r}: {e}; use sqlite+aiosqlite:///path/ledger.db or postgresql+asyncpg://user@host/db"
        ) from None
    if engine.dialect.name not in _INSERTS:
        raise DatabaseError(f"the ledger runs on SQLite or Postgres, not {engine.dialect.name}: use sqlite+aiosqlite:/// or postgresql+asyncpg://")
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine.execution_options(schema_translate_map={None: schema}) if schema else engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: reports read while the ledger writes, without waiting for each other.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


async def create_schema(engine: AsyncEngine) -> None:
    if (path := sqlite_path(str(engine.url))) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def has_ledger(engine: AsyncEngine) -> bool:
    """Whether the table exists, without creating a SQLite file as a side effect."""
    if engine.dialect.name == "sqlite" and (path := sqlite_path(str(engine.url))) is not None and not path.exists():
        return False
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: inspect(c).has_table(costs.name, schema=schema))


async def insert_costs(engine: AsyncEngine, rows: Iterable[dict[str, Any]]) -> None:
    """One transaction: when it returns the rows are committed; a row already there (a
    redelivered record) is skipped."""
    rows = list(rows)
    if not rows:
        return
    async with engine.begin() as conn:
        await conn.execute(_INSERTS[engine.dialect.name], rows)


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(costs))).scalar_one()
