"""The cost ledger in SQL: one table, the same schema on SQLite (the default, a file under the
stack home) and Postgres (for several nodes), through SQLAlchemy Core.

Money is stored as integer nano-dollars: sums of integers are exact, so SQLite and Postgres
give the same reports to the last digit, and a cent is never lost to float rounding.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

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
from sqlalchemy.exc import ArgumentError, IntegrityError, StatementError
from sqlalchemy.exc import DataError as SQLDataError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from panelboard.schemas.config import Config
from panelboard.schemas.job import CostRecord

URL_ENV = "PANELBOARD_DATABASE_URL"
NANO = 1_000_000_000
INT64_MAX = 2**63 - 1

metadata = MetaData()

costs = Table(
    "cost_records",
    metadata,
    # One row per provider call. The key is the call's identity, so a redelivered record is
    # an insert that does nothing: billed exactly once. A shadow call mirrors a live one with
    # the same (job, run, hop, attempt), so the flag is part of the key.
    Column("job_id", String(128), nullable=False),
    Column("run", BigInteger, nullable=False),
    Column("hop", BigInteger, nullable=False),
    Column("attempt", BigInteger, nullable=False),
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
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost_nano_usd", BigInteger, nullable=False),  # at the catalog price of that moment
    Column("latency_ms", BigInteger, nullable=False),  # the provider call; 0 for a lost call
    Column("queue_ms", BigInteger, nullable=False),  # admission to the start of the call
    Column("outcome", String(32), nullable=False),  # ok, RateLimited, ServerError, Timeout, ..., lost
    Column("cached_tokens", BigInteger, nullable=False, server_default=text("0")),  # of prompt_tokens
    Column("cache_write_tokens", BigInteger, nullable=False, server_default=text("0")),  # of prompt_tokens
    Column("reasoning_tokens", BigInteger, nullable=False, server_default=text("0")),  # of completion_tokens
    Column("ttft_ms", BigInteger),  # a streamed call's time to first chunk; NULL when not streamed
    Column("usage_unknown", Boolean, nullable=False, server_default=text("false")),  # a broken stream's usage was not reported
    Column("lane", String(16)),  # "batch": a provider-batch line, billed at its discount; NULL: realtime
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
        "outcome": rec.outcome, "cached_tokens": rec.cached_tokens, "cache_write_tokens": rec.cache_write_tokens,
        "reasoning_tokens": rec.reasoning_tokens, "ttft_ms": None if rec.ttft_ms is None else round(rec.ttft_ms),
        "usage_unknown": rec.usage_unknown,
        "lane": rec.lane,
    }


# The table's bounds, read once: problem() runs for every record the ledger and settlement see.
_INT_COLUMNS = [c.name for c in costs.columns if isinstance(c.type, Integer)]
_STR_COLUMNS = [(c.name, c.type.length) for c in costs.columns if isinstance(c.type, String)]


def problem(rec: CostRecord) -> str | None:
    """Why a record cannot be a row, or None. The same bounds on SQLite and Postgres (SQLite
    would store an over-long string that Postgres refuses): a record either lands on both or
    is quarantined on both. Counts and money are whole and non-negative, within 64 bits."""
    for name in ("cost_usd", "latency_ms", "queue_ms", "ts"):
        v = getattr(rec, name)
        if not math.isfinite(v) or v < 0:
            return f"{name} is {v!r}: not a finite, non-negative number"
    values = row(rec)
    for name in _INT_COLUMNS:
        if (v := values[name]) is not None and not isinstance(v, bool) and not 0 <= v <= INT64_MAX:
            return f"{name} is {v}: outside 0..2^63-1"
    for name, length in _STR_COLUMNS:
        if (v := values[name]) is None:
            continue
        if length is not None and len(v) > length:
            return f"{name} is {len(v)} characters long, over its {length}"
        if "\x00" in v:
            return f"{name} holds a NUL character"
    return None


def is_data_error(e: BaseException) -> bool:
    """Whether a failed write was refused for what it held (a value out of range, a bad string):
    writing it again can never succeed. Anything else (a lost connection, a locked or missing
    database) is an outage, which the same write survives once it ends."""
    if isinstance(e, (OverflowError, ValueError, TypeError, SQLDataError, IntegrityError,
                      sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError)):
        return True
    if isinstance(e, StatementError):  # DBAPIError included: asyncpg's errors come wrapped, their SQLSTATE says
        orig = e.orig
        state = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
        if state[:2] in ("22", "23"):  # data exception, integrity constraint violation
            return True
        return orig is not None and not isinstance(orig, StatementError) and is_data_error(orig)
    return False


T = TypeVar("T")


async def write_splitting(write: Callable[[Sequence[T]], Awaitable[None]], items: Sequence[T]) -> list[tuple[T, BaseException]]:
    """Write `items` in one go; when that is refused for a data reason, write each half on its
    own, down to single items: every good item lands, and the ones that can never be written
    come back with their error (a handful of poison records cost O(k log n) writes). An outage
    raises: the caller holds the whole batch (what did land is skipped on the retry)."""
    if not items:
        return []
    try:
        await write(items)
        return []
    except Exception as e:
        if not is_data_error(e):
            raise
        if len(items) == 1:
            return [(items[0], e)]
    mid = len(items) // 2
    return await write_splitting(write, items[:mid]) + await write_splitting(write, items[mid:])


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
    await upgrade(engine, metadata)


# -- schema upgrades ------------------------------------------------------------------------------
def upgrade_plan(dialect: str, table: Table, existing: dict[str, Any], qualified: str) -> list[str]:
    """The DDL that brings a table made by an older release up to `table`. Pure.

    - a column it lacks is added (new columns carry a server default, so old rows get one);
    - on Postgres an INTEGER column that is now BIGINT is widened (a token count or a run
      number over 2^31 would otherwise be refused). SQLite's INTEGER already holds 64 bits.
    On Postgres it is one statement, so a big table is rewritten once, not once a column.
    """
    from sqlalchemy.dialects import postgresql as pg, sqlite as sq

    d = pg.dialect() if dialect == "postgresql" else sq.dialect()
    clauses = []
    for col in table.columns:
        have = existing.get(col.name)
        if have is None:
            default = f" DEFAULT {col.server_default.arg.text}" if col.server_default is not None else ""  # type: ignore[attr-defined]
            null = " NOT NULL" if not col.nullable and default else ""
            guard = "IF NOT EXISTS " if dialect == "postgresql" else ""  # two processes may upgrade at once
            clauses.append(f'ADD COLUMN {guard}"{col.name}" {col.type.compile(dialect=d)}{default}{null}')
        elif (dialect == "postgresql" and isinstance(col.type, BigInteger)
              and isinstance(have, Integer) and not isinstance(have, BigInteger)):
            clauses.append(f'ALTER COLUMN "{col.name}" TYPE BIGINT')
    if not clauses:
        return []
    if dialect == "postgresql":
        return [f"ALTER TABLE {qualified} " + ", ".join(clauses)]
    return [f"ALTER TABLE {qualified} {c}" for c in clauses]  # SQLite: one change a statement


async def upgrade(engine: AsyncEngine, md: MetaData) -> None:
    """Create the tables, then bring ones made by an older release up to date: one
    transaction (Postgres DDL is transactional; a second process waits on its locks)."""
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)

    def go(sync_conn: Any) -> None:
        md.create_all(sync_conn)
        insp = inspect(sync_conn)
        for table in md.sorted_tables:
            existing = {c["name"]: c["type"] for c in insp.get_columns(table.name, schema=schema)}
            qualified = f'"{schema}"."{table.name}"' if schema else f'"{table.name}"'
            for ddl in upgrade_plan(engine.dialect.name, table, existing, qualified):
                sync_conn.exec_driver_sql(ddl)

    async with engine.begin() as conn:
        await conn.run_sync(go)


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


def durable_for(cfg: Config) -> bool:
    """Whether the SQLite hot paths fsync every commit: when the stream fsyncs more often than
    nats-server's default (`nats.sync` set). A database that kept less than the stream after a
    host crash would forget spend the stream had acked; one that keeps more buys nothing."""
    return cfg.nats.sync is not None


def _locked(e: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (extended codes included): another writer holds the lock."""
    return (getattr(e, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteInline:
    """One plain `sqlite3` connection in WAL mode for the hot paths that skip SQLAlchemy's and
    aiosqlite's layers (the ledger's inserts, governance's admissions and settlement).

    A transaction's statements are tens to hundreds of microseconds of work, so they run inline
    on the event loop: on a thread of their own each statement released the GIL and then
    waited to take it back from the busy loop (BENCHMARKS.md, stop 27). One transaction at a
    time; the caller resumes once it is committed.

    Durability follows the stream's (`durable`, from `nats.sync`; see `durable_for`):
    - durable: synchronous=FULL, COMMIT fsyncs, and goes to a thread so the loop runs on while
      the disk works;
    - not durable (nats-server's default, an fsync every 2 minutes): synchronous=NORMAL, a
      commit survives the process being killed but not the host crashing, as the stream's own
      acked messages do; COMMIT then writes to the WAL without an fsync, inline.

    The loop never waits on the lock: busy_timeout is 0, and a database another process holds
    is tried again after an awaited back-off, for up to `timeout_s`, then the lock error is
    raised (an outage to the caller)."""

    def __init__(self, path: Path, timeout_s: float, thread_name: str, durable: bool = True):
        self.path = path
        self.timeout_s = timeout_s
        self.durable = durable
        self.conn: sqlite3.Connection | None = None
        self.one = asyncio.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=thread_name) if durable else None
        self.committing: asyncio.Future[None] | None = None  # a commit whose caller was cancelled

    async def transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """body(conn) in one BEGIN IMMEDIATE transaction (the database's write lock), rolled
        back on any error; committed when it returns. body runs inline: it must not block."""
        async with self.one:
            if self.committing is not None:
                await asyncio.wait([self.committing])
                self.committing = None
            deadline = time.monotonic() + self.timeout_s
            delay = 0.001
            while True:
                try:
                    conn, out = self._begin_and_run(body)
                    break
                except sqlite3.OperationalError as e:
                    if not _locked(e) or time.monotonic() >= deadline:
                        raise
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 0.05)
            if self.pool is None:
                _commit(conn)
                return out
            commit = asyncio.get_running_loop().run_in_executor(self.pool, _commit, conn)
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                self.committing = commit  # it ends on its thread; the next transaction waits for it
                raise
            return out

    def _begin_and_run(self, body: Callable[[sqlite3.Connection], T]) -> tuple[sqlite3.Connection, T]:
        conn = self.conn
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            return conn, body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _commit(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteCostWriter(SqliteInline):
    """insert_costs on SQLite through the plain `sqlite3` module (SqliteInline): the same INSERT ... ON CONFLICT DO NOTHING in one transaction, without SQLAlchemy's and
    aiosqlite's layers (~75% of the ledger's CPU per record at c=64, py-spy; BENCHMARKS.md).
    The connection honours the URL's `timeout` (seconds to wait for another writer's lock) as
    aiosqlite does; a locked or missing database raises sqlite3.OperationalError: an outage."""

    SQL = (f"INSERT INTO cost_records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
           "ON CONFLICT DO NOTHING")

    def __init__(self, url: str, durable: bool = True):
        path = sqlite_path(url)
        assert path is not None, url
        super().__init__(path, float(make_url(url).query.get("timeout", 5.0)), "ledger-commit", durable)  # type: ignore[arg-type]

    async def insert(self, rows: Iterable[dict[str, Any]]) -> None:
        """As insert_costs: committed when it returns; a row already there is skipped."""
        values = [tuple(r[c] for c in COLUMNS) for r in rows]
        if values:
            await self.transaction(lambda conn: conn.executemany(self.SQL, values))


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(costs))).scalar_one()
