"""Settlement and housekeeping, the other half of governance's hot path: cost records replace
reservations with real cost, ended jobs release what they hold, the sweep releases what
never ended. One transaction per batch of events; every statement of it covers the whole
batch (admission rows are updated with one executemany, rate buckets with one upsert), so a
batch of 64 records costs about what one did.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import Table, bindparam, delete, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panelboard.broker import budgets, keys, ratelimit
from panelboard.broker.budgets import NANO, Delta
from panelboard.broker.governance_tables import (
    KEEP_S,
    KEY_WINDOW,
    TEAM_WINDOW,
    StoreBase,
    admissions,
    bump_buckets,
    key_scope,
    rate_buckets,
    rolled_spent,
    settled_calls,
    shadow_ticket,
    team_scope,
    teams,
    ticket,
    virtual_keys,
)
from panelboard.schemas.job import CostRecord

_WHERE_TICKET = (admissions.c.job_id == bindparam("k_job"), admissions.c.run == bindparam("k_run"))
_TICKET: dict[str, Any] = {c: bindparam(c) for c in ("consumed_nano", "used_tokens", "done", "done_at")}
_UPDATE_TICKET = update(admissions).where(*_WHERE_TICKET).values(**_TICKET)
_UPDATE_TICKET_SHADOW = update(admissions).where(*_WHERE_TICKET).values(
    **_TICKET, shadow_consumed_nano=bindparam("shadow_consumed_nano"), shadow_done=bindparam("shadow_done"))


@dataclass
class SettleStats:
    costs: int = 0  # cost records newly settled
    ended: int = 0  # admissions that ended
    released_nano: int = 0

@dataclass
class SettlePlan:
    """What one batch of settlement events writes: admission rows (by shape), the deltas of
    key and team rows, rate-bucket token corrections."""

    changed: list[dict[str, Any]]
    changed_shadow: list[dict[str, Any]]
    key_d: dict[str, Delta]
    team_d: dict[str, Delta]
    bumps: list[dict[str, Any]]


def plan_settlement(rows: dict[tuple[str, int], Any], costs: list[CostRecord], ended: Iterable[tuple[str, int]],
                    shadow_ended: Iterable[tuple[str, int]], now: float, stats: SettleStats) -> SettlePlan:
    """The events of a batch against the admissions they name (`rows`, locked). Pure but for
    the counts it adds to `stats`."""
    tickets = {k: ticket(r) for k, r in rows.items()}
    start = dict(tickets)
    mirrors = {k: shadow_ticket(r) for k, r in rows.items() if r.shadow_reserved_nano}  # jobs whose mirror reserved
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

    changed: list[dict[str, Any]] = []  # one executemany per shape, not a statement per admission
    changed_shadow: list[dict[str, Any]] = []
    for k, t in sorted(tickets.items()):
        m, m0 = mirrors.get(k), mirrors_start.get(k)
        if t != start[k] or m != m0:
            if t.done and not start[k].done:
                stats.ended += 1
                stats.released_nano += start[k].holds_nano() - t.holds_nano()
            values: dict[str, Any] = dict(k_job=k[0], k_run=k[1], consumed_nano=t.consumed_nano, used_tokens=t.used_tokens, done=t.done,
                                          done_at=now if t.done and (m is None or m.done) else None)
            if m is not None and m0 is not None:
                stats.released_nano += m0.holds_nano() - m.holds_nano() if m.done and not m0.done else 0
                changed_shadow.append(values | dict(shadow_consumed_nano=m.consumed_nano, shadow_done=m.done))
            else:
                changed.append(values)
    bumps = [{"scope": scope, "second": second, "requests": 0, "tokens": tokens} for (scope, second), tokens in bucket_d.items() if tokens]
    return SettlePlan(changed, changed_shadow, key_d, team_d, bumps)


class Settlement(StoreBase):
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
                     ended: list[tuple[str, int]], now: float, stats: SettleStats, shadow_ended: Iterable[tuple[str, int]] = ()) -> None:
        plan = plan_settlement(rows, costs, ended, shadow_ended, now, stats)
        for params, stmt in ((plan.changed, _UPDATE_TICKET), (plan.changed_shadow, _UPDATE_TICKET_SHADOW)):
            if params:
                await conn.execute(stmt, params)
        await self._charge(conn, virtual_keys, virtual_keys.c.prefix, plan.key_d, now)
        await self._charge(conn, teams, teams.c.name, plan.team_d, now)
        if plan.bumps:
            await bump_buckets(conn, self.dialect, plan.bumps)

    async def _charge(self, conn: AsyncConnection, table: Table, col: Any, deltas: dict[str, Delta], now: float) -> None:
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
                "spent_nano": rolled_spent(table, pk) + d.spent_nano,
                "shadow_spent_nano": rolled_spent(table, pk, "shadow_spent_nano") + d.shadow_spent_nano,
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
