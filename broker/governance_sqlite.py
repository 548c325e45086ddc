"""Governance's hot path on SQLite through the plain `sqlite3` module: admission and
settlement as the same transactions as governance_admit's and governance_settle's (the same
pure planning, decide_batch and plan_settlement, and the same statements), without
SQLAlchemy's and aiosqlite's layers, which cost ~0.5 ms a statement here against a few
microseconds for the statement itself (BENCHMARKS.md, "Speed").

One connection, its statements run inline on the event loop (transport/db.SqliteInline): one
transaction at a time, under `BEGIN IMMEDIATE` (the database's write lock, as the SQLAlchemy
path takes it), so two brokers' admissions and settlements never interleave between a read
and its write. The sweep and the CLI stay on SQLAlchemy (rare, and they take the same lock).
The SQL is built from the Table definitions in governance_tables.py, so the columns cannot
drift.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from panelboard.broker import keys, ratelimit
from panelboard.broker import budgets
from panelboard.broker.budgets import Delta
from panelboard.broker.governance_admit import AdmitOutcome, AdmitRequest, Admitted, _Batch, decide_batch
from panelboard.broker.governance_settle import SettleStats, plan_settlement
from panelboard.broker.governance_tables import admissions, key_scope, team_scope, teams, virtual_keys
from panelboard.broker.ratelimit import Bucket
from panelboard.schemas.job import CostRecord
from panelboard.transport.db import SqliteInline

_KEY_COLS = [c.name for c in virtual_keys.c]
_TEAM_COLS = [c.name for c in teams.c]
_ADMISSION_COLS = [c.name for c in admissions.c if c.name != "done_at"]
_KEY_AND_TEAM = ("SELECT " + ", ".join(f"k.{c}" for c in _KEY_COLS) + ", " + ", ".join(f"t.{c} AS t_{c}" for c in _TEAM_COLS)
                 + " FROM virtual_keys k JOIN teams t ON t.name = k.team WHERE k.prefix IN ({})")
_KEY_ALONE = "SELECT " + ", ".join(_KEY_COLS) + " FROM virtual_keys WHERE prefix IN ({})"
_PRIOR = "SELECT key_prefix, team, reserved_nano, shadow_reserved_nano FROM admissions WHERE job_id = ? AND run = ?"
_WINDOWS = "SELECT scope, second, requests, tokens FROM rate_buckets WHERE second >= ? AND scope IN ({})"
_INSERT = f"INSERT INTO admissions ({', '.join(_ADMISSION_COLS)}) VALUES ({', '.join('?' * len(_ADMISSION_COLS))}) ON CONFLICT DO NOTHING"
_BUMP = ("INSERT INTO rate_buckets (scope, second, requests, tokens) VALUES (?, ?, ?, ?) ON CONFLICT (scope, second) "
         "DO UPDATE SET requests = requests + excluded.requests, tokens = tokens + excluded.tokens")
_ROLLED = "(CASE WHEN period_key = ? THEN {col} ELSE 0 END)"
_ALL_ADMISSION_COLS = [c.name for c in admissions.c]
_SETTLED = "INSERT INTO settled_calls (job_id, run, hop, attempt, shadow, ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
_ADMISSION = f"SELECT {', '.join(_ALL_ADMISSION_COLS)} FROM admissions WHERE job_id = ? AND run = ?"
_TICKET = "UPDATE admissions SET consumed_nano = ?, used_tokens = ?, done = ?, done_at = ? WHERE job_id = ? AND run = ?"
_TICKET_SHADOW = ("UPDATE admissions SET consumed_nano = ?, used_tokens = ?, done = ?, done_at = ?, shadow_consumed_nano = ?, shadow_done = ? "
                  "WHERE job_id = ? AND run = ?")


class _Again(Exception):
    pass


class _Conflict(Exception):
    pass


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqliteHotPath(SqliteInline):
    def __init__(self, path: Path, durable: bool = True):
        super().__init__(path, timeout_s=30.0, thread_name="admit-commit", durable=durable)

    async def admit_many(self, reqs: list[AdmitRequest], now: float) -> list[AdmitOutcome]:
        for _ in range(10):
            try:
                return await self._retrying(lambda conn: self._transaction(conn, reqs, now))
            except _Again:
                reqs = [replace(r, redelivered=True) for r in reqs]
        raise _Conflict("admission kept finding earlier admissions")

    async def settle(self, costs: list[CostRecord], ended: list[tuple[str, int]], now: float,
                     shadow_ended: list[tuple[str, int]]) -> SettleStats:
        return await self._retrying(lambda conn: self._settle(conn, costs, ended, now, shadow_ended))

    async def _retrying(self, body: Any) -> Any:
        """body(conn) in one BEGIN IMMEDIATE transaction, retried on a conflict (the lock's
        own waits are SqliteInline.transaction's)."""
        for i in range(10):
            try:
                return await self.transaction(body)
            except _Conflict:
                if i == 9:
                    raise
            except (sqlite3.IntegrityError, sqlite3.DataError) as e:
                raise ValueError(f"the database refused it: {e}") from None  # a data error: db.write_splitting splits the batch
            await asyncio.sleep(random.uniform(0, 0.005 * 2**i))
        raise AssertionError("unreachable")

    def _transaction(self, conn: sqlite3.Connection, reqs: list[AdmitRequest], now: float) -> list[AdmitOutcome]:
        priors: dict[tuple[str, int], Admitted] = {}
        for r in reqs:
            if r.redelivered and (p := conn.execute(_PRIOR, (r.job_id, r.run)).fetchone()) is not None:
                priors[(r.job_id, r.run)] = Admitted(prefix=p[0], team=p[1], reserved_nano=p[2], again=True, shadow_nano=p[3])
        prefixes = sorted({p for r in reqs if (r.job_id, r.run) not in priors and (p := keys.prefix_of(r.key)) is not None})
        rows: dict[str, tuple[Any, Any]] = {}
        if prefixes:
            n = len(_KEY_COLS)
            for row in conn.execute(_KEY_AND_TEAM.format(_marks(len(prefixes))), prefixes):
                k = SimpleNamespace(**dict(zip(_KEY_COLS, row[:n])))
                rows[k.prefix] = (k, SimpleNamespace(**dict(zip(_TEAM_COLS, row[n:]))))
            if missing := [p for p in prefixes if p not in rows]:
                for row in conn.execute(_KEY_ALONE.format(_marks(len(missing))), missing):
                    k = SimpleNamespace(**dict(zip(_KEY_COLS, row)))
                    rows[k.prefix] = (k, None)
        by_scope = self._windows(conn, rows, now)
        out, batch = decide_batch(reqs, priors, rows, by_scope, now)
        self._write(conn, batch)
        return out

    def _windows(self, conn: sqlite3.Connection, rows: dict[str, tuple[Any, Any]], now: float) -> dict[str, list[Bucket]]:
        scopes = set()
        for prefix, (krow, trow) in rows.items():
            if krow.rpm is not None or krow.tpm is not None:
                scopes.add(key_scope(prefix))
            if trow is not None and (trow.rpm is not None or trow.tpm is not None):
                scopes.add(team_scope(krow.team))
        by_scope: dict[str, list[Bucket]] = {s: [] for s in scopes}
        if scopes:
            for scope, second, requests, tokens in conn.execute(_WINDOWS.format(_marks(len(scopes))), [ratelimit.window_floor(now), *sorted(scopes)]):
                by_scope[scope].append(Bucket(second, requests, tokens))
        return _DefaultList(by_scope)

    def _write(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        if batch.rows:
            before = conn.total_changes
            conn.executemany(_INSERT, [[r[c] for c in _ADMISSION_COLS] for r in batch.rows])
            if conn.total_changes - before != len(batch.rows):
                raise _Again()  # a job delivered "for the first time" was admitted before: look again
        for table, col, owners, extra in (("virtual_keys", "prefix", batch.keys, True), ("teams", "name", batch.teams, False)):
            for name, t in owners.items():
                if not t.jobs:
                    continue
                sets = ["reserved_nano = reserved_nano + ?"]
                args: list[Any] = [t.amount_nano]
                if extra:
                    sets.append("inflight = inflight + ?")
                    args.append(t.jobs)
                where, wargs = f"{col} = ?", list[Any]([name])
                if t.first is not None:
                    pk = t.first.period_key
                    sets += [f"spent_nano = {_ROLLED.format(col='spent_nano')}", f"shadow_spent_nano = {_ROLLED.format(col='shadow_spent_nano')}",
                             "period_key = ?"]
                    args += [pk, pk, pk]
                    if t.first.limit_nano is not None:  # the sum, re-checked under the lock
                        where += f" AND {_ROLLED.format(col='spent_nano')} + reserved_nano + ? <= budget_nano"
                        wargs += [pk, t.amount_nano]
                    if t.soft_crossings:
                        sets += ["soft_alerted = ?", "soft_alerts = soft_alerts + ?"]
                        args += [pk, t.soft_crossings]
                if conn.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE {where}", [*args, *wargs]).rowcount != 1:
                    raise _Conflict(f"{table}: the budget row changed under its lock")
        if batch.buckets:
            conn.executemany(_BUMP, sorted((s, sec, n, tok) for (s, sec), (n, tok) in batch.buckets.items()))

    def _settle(self, conn: sqlite3.Connection, costs: list[CostRecord], ended: list[tuple[str, int]], now: float,
                shadow_ended: list[tuple[str, int]]) -> SettleStats:
        stats = SettleStats()
        uniq = {(r.job_id, r.run, r.hop, r.attempt, r.shadow): r for r in costs}
        new = [r for k, r in uniq.items() if conn.execute(_SETTLED, (k[0], k[1], k[2], k[3], int(k[4]), now)).rowcount == 1]
        stats.costs = len(new)
        rows: dict[tuple[str, int], Any] = {}
        for job_id, run in sorted({(r.job_id, r.run) for r in new} | set(ended) | set(shadow_ended)):
            if (row := conn.execute(_ADMISSION, (job_id, run)).fetchone()) is not None:
                rows[(job_id, run)] = SimpleNamespace(**dict(zip(_ALL_ADMISSION_COLS, row)))
        plan = plan_settlement(rows, new, ended, shadow_ended, now, stats)
        if plan.changed:
            conn.executemany(_TICKET, [(v["consumed_nano"], v["used_tokens"], v["done"], v["done_at"], v["k_job"], v["k_run"]) for v in plan.changed])
        if plan.changed_shadow:
            conn.executemany(_TICKET_SHADOW, [(v["consumed_nano"], v["used_tokens"], v["done"], v["done_at"], v["shadow_consumed_nano"],
                                               v["shadow_done"], v["k_job"], v["k_run"]) for v in plan.changed_shadow])
        self._charge(conn, "virtual_keys", "prefix", plan.key_d, now, inflight=True)
        self._charge(conn, "teams", "name", plan.team_d, now, inflight=False)
        if plan.bumps:
            conn.executemany(_BUMP, sorted((b["scope"], b["second"], 0, b["tokens"]) for b in plan.bumps))
        return stats

    def _charge(self, conn: sqlite3.Connection, table: str, col: str, deltas: dict[str, Delta], now: float, inflight: bool) -> None:
        """Settled deltas onto budget rows (their spend rolled into the current period)."""
        for name in sorted(n for n, d in deltas.items() if d != Delta()):
            period = conn.execute(f"SELECT period FROM {table} WHERE {col} = ?", (name,)).fetchone()
            if period is None:
                continue  # no row: nobody budgets or limits this team/key
            d = deltas[name]
            pk = budgets.period_key(period[0], now)
            sets = [f"spent_nano = {_ROLLED.format(col='spent_nano')} + ?", f"shadow_spent_nano = {_ROLLED.format(col='shadow_spent_nano')} + ?",
                    "period_key = ?", "reserved_nano = reserved_nano + ?"]
            args: list[Any] = [pk, d.spent_nano, pk, d.shadow_spent_nano, pk, d.reserved_nano]
            if inflight and d.inflight:
                sets.append("inflight = inflight + ?")
                args.append(d.inflight)
            conn.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE {col} = ?", [*args, name])

class _DefaultList(dict[str, list[Bucket]]):
    """A scope nobody limits has no buckets (decide_batch appends to them all the same)."""

    def __missing__(self, scope: str) -> list[Bucket]:
        self[scope] = []
        return self[scope]
