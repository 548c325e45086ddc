"""Admission in SQL, the hot path under governance: verify the key, check the rate limits,
reserve the budget, for a batch of one team's jobs in ONE transaction.

Why budgets hold across broker processes: the transaction locks the keys' rows and their
team's (`SELECT ... FOR UPDATE` on Postgres; `BEGIN IMMEDIATE` takes the database's write
lock on SQLite), reads the rate windows, decides each job in arrival order against what the
jobs before it in the batch took, and takes the batch's reservations with one conditional
`UPDATE ... SET reserved = reserved + :sum WHERE spent + reserved + :sum <= limit` per row.
Every job was checked against the running total, so the sum fits whenever each part did;
the condition re-checks exactly that under the lock, and a row that changed anyway makes the
transaction retry. Brokers that admit jobs of the same team at once queue on that lock, each
seeing the reservations committed before it: no check-then-record gap, no per-replica
counters. A batch costs the statements of one admission (four, six with rate limits)
whatever its size: that is where governance's cost per job goes down under load.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from sqlalchemy import and_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panelboard.broker import budgets, keys, ratelimit
from panelboard.broker.budgets import Budget, Estimate
from panelboard.broker.governance_tables import (
    KEY_AND_TEAM,
    KEY_WINDOW,
    TEAM_WINDOW,
    Conflict,
    StoreBase,
    TeamView,
    admissions,
    budget_of,
    bump_buckets,
    key_record,
    key_scope,
    rate_buckets,
    rolled_spent,
    team_scope,
    teams,
    virtual_keys,
)
from panelboard.broker.ratelimit import Bucket, Limited, Limits
from panelboard.schemas.errors import BadKey, OverBudget
from panelboard.schemas.job import Route


# -- what is asked, and what comes out ----------------------------------------------------------
@dataclass(frozen=True)
class AdmitRequest:
    job_id: str
    run: int
    key: str | None
    route: Route
    est: Estimate
    # False: delivered for the first time, so no earlier admission is looked for (the insert
    # would still notice one).
    redelivered: bool = True
    team: str | None = None  # the team the job was published for: a key of another team is refused
    shadow_nano: int = 0  # its shadow mirror's worst case, reserved with it when it fits


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


class _Again(Exception):
    """A job delivered for the first time had been admitted after all: redo the batch looking
    for earlier admissions of every job in it."""


@dataclass
class _Taken:
    """What a batch takes from one budget row: the running budget, and the sums to write."""

    first: Budget | None  # as read (rolled into this period); None: no row to charge
    now: Budget | None
    amount_nano: int = 0
    jobs: int = 0
    soft_crossings: int = 0


@dataclass
class _Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)  # admissions to insert
    keys: dict[str, _Taken] = field(default_factory=dict)
    teams: dict[str, _Taken] = field(default_factory=dict)
    buckets: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))


def decide_batch(reqs: list[AdmitRequest], priors: dict[tuple[str, int], Admitted], rows: dict[str, tuple[Any, Any]],
                 by_scope: dict[str, list[Bucket]], now: float) -> tuple[list[AdmitOutcome], _Batch]:
    """Every job's outcome in arrival order, and what the admitted ones take (the writes). Pure
    but for `by_scope`, which gains each admitted job's bucket. `rows`: (key row, team row or
    None) by prefix, as locked; `priors`: earlier admissions of redelivered jobs."""
    out: list[AdmitOutcome] = []
    batch = _Batch()
    decided: dict[tuple[str, int], int] = {}  # a job twice in one batch: the second is the first again
    for i, r in enumerate(reqs):
        ident = (r.job_id, r.run)
        if ident in priors:
            out.append(priors[ident])
        elif ident in decided:
            first = out[decided[ident]]
            out.append(replace(first, again=True, soft_crossed=()) if isinstance(first, Admitted) else first)
        else:
            decided[ident] = i
            out.append(_decide(r, rows, by_scope, batch, now))
    return out, batch


def _decide(r: AdmitRequest, rows: dict[str, tuple[Any, Any]], by_scope: dict[str, list[Bucket]], batch: _Batch, now: float) -> AdmitOutcome:
    """One job against the rows as the jobs before it in the batch left them. Pure apart
    from what it adds to `batch` and `by_scope` when it is admitted."""
    prefix = keys.prefix_of(r.key)
    krow, trow = rows.get(prefix, (None, None)) if prefix is not None else (None, None)
    verdict = keys.verify(r.key, key_record(krow) if krow is not None else None, r.route, now)
    if isinstance(verdict, BadKey):
        return verdict
    assert krow is not None and prefix is not None
    team = verdict.team
    if r.team is not None and team != r.team:
        return keys.team_mismatch(r.team, team)
    kt = batch.keys.get(prefix)
    if kt is None:
        b = budget_of(f"key {prefix}", krow).rolled(now)
        kt = batch.keys[prefix] = _Taken(first=b, now=b)
    tt = batch.teams.get(team)
    if tt is None:
        b2 = budget_of(f"team {team}", trow).rolled(now) if trow is not None else None
        tt = batch.teams[team] = _Taken(first=b2, now=b2)

    # rate limits: jobs in flight, then the key's and the team's minute windows
    key_limits = Limits(f"key {prefix}", krow.rpm, krow.tpm)
    team_limits = Limits(f"team {team}", trow.rpm, trow.tpm) if trow is not None else Limits(f"team {team}")
    limited = ratelimit.check_parallel(f"key {prefix}", krow.max_parallel, krow.inflight + kt.jobs)
    windowed = (KEY_WINDOW if key_limits.rpm is not None or key_limits.tpm is not None else 0) | (
        TEAM_WINDOW if team_limits.rpm is not None or team_limits.tpm is not None else 0)
    if limited is None and windowed:
        for scope, limits in ((key_scope(prefix), key_limits), (team_scope(team), team_limits)):
            limited = ratelimit.check(limits, by_scope[scope], r.est.tokens, now)
            if limited is not None:
                break
    if limited is not None:
        return Throttled(limited, krow.on_limit)

    # budgets: the key's (if it has one), then the team's
    est = r.est
    what = f"this job (up to {est.prompt_tokens} prompt + {est.output_tokens} output tokens at {est.model}'s price)"
    plan = budgets.reserve_all([kt.now, tt.now], est.cost_nano, r.shadow_nano, now, what)
    if isinstance(plan, OverBudget):
        return plan
    crossed: list[str] = []
    for t, res in ((kt, plan.reserved[0]), (tt, plan.reserved[1])):
        if res is None:
            continue
        t.now = res.after
        t.amount_nano += plan.amount_nano
        t.jobs += 1
        if res.soft_crossed and res.after is not None:
            t.soft_crossings += 1
            crossed.append(res.after.owner)

    second = int(now)
    batch.rows.append(dict(
        job_id=r.job_id, run=r.run, key_prefix=prefix, team=team, second=second, windowed=windowed,
        reserved_nano=est.cost_nano, est_tokens=est.tokens, consumed_nano=0, used_tokens=0, done=False, created_at=now,
        shadow_reserved_nano=plan.shadow_nano, shadow_consumed_nano=0, shadow_done=plan.shadow_nano == 0))
    for bit, scope in ((KEY_WINDOW, key_scope(prefix)), (TEAM_WINDOW, team_scope(team))):
        if windowed & bit:
            by_scope[scope].append(Bucket(second, 1, est.tokens))  # the next job of the batch counts it
            counts = batch.buckets[(scope, second)]
            counts[0] += 1
            counts[1] += est.tokens
    return Admitted(prefix=prefix, team=team, reserved_nano=est.cost_nano, soft_crossed=tuple(crossed), shadow_nano=plan.shadow_nano)



class Admission(StoreBase):
    async def admit(self, job_id: str, run: int, key: str | None, route: Route, est: Estimate, now: float,
                    redelivered: bool = True, team: str | None = None, shadow_nano: int = 0) -> AdmitOutcome:
        """One job: a batch of one (see admit_many)."""
        (out,) = await self.admit_many([AdmitRequest(job_id, run, key, route, est, redelivered, team, shadow_nano)], now)
        return out

    async def admit_many(self, reqs: Sequence[AdmitRequest], now: float) -> list[AdmitOutcome]:
        """Each job's outcome, decided in order in one transaction, as if admitted one after
        the other at `now`. Admitted.shadow_nano says whether its mirror's worst case was
        reserved with it."""
        batch = list(reqs)
        try:
            return await self._retrying(lambda: self._admit_many(batch, now))
        except _Again:
            again = [replace(r, redelivered=True) for r in batch]
            return await self._retrying(lambda: self._admit_many(again, now))

    async def _priors(self, conn: AsyncConnection, ids: list[tuple[str, int]]) -> dict[tuple[str, int], Admitted]:
        rows = (await conn.execute(
            select(admissions.c.job_id, admissions.c.run, admissions.c.key_prefix, admissions.c.team, admissions.c.reserved_nano,
                   admissions.c.shadow_reserved_nano)
            .where(tuple_(admissions.c.job_id, admissions.c.run).in_(ids)))).all()
        return {(r.job_id, r.run): Admitted(prefix=r.key_prefix, team=r.team, reserved_nano=r.reserved_nano, again=True,
                                            shadow_nano=r.shadow_reserved_nano) for r in rows}

    async def _lock_keys(self, conn: AsyncConnection, prefixes: list[str]) -> dict[str, tuple[Any, Any]]:
        """(key row, team row or None) per prefix, locked in prefix order, in one statement."""
        if not prefixes:
            return {}
        found: dict[str, tuple[Any, Any]] = {r.prefix: (r, TeamView(r)) for r in (await conn.execute(
            KEY_AND_TEAM.where(virtual_keys.c.prefix.in_(prefixes)).order_by(virtual_keys.c.prefix))).all()}
        if missing := [p for p in prefixes if p not in found]:  # keys whose team has no row (made by hand): the key alone
            for r in (await conn.execute(
                    select(virtual_keys).where(virtual_keys.c.prefix.in_(missing)).order_by(virtual_keys.c.prefix).with_for_update())).all():
                found[r.prefix] = (r, None)
        return found

    async def _admit_many(self, reqs: list[AdmitRequest], now: float) -> list[AdmitOutcome]:
        async with self.engine.begin() as conn:
            redelivered = [(r.job_id, r.run) for r in reqs if r.redelivered]
            priors = await self._priors(conn, redelivered) if redelivered else {}
            prefixes = sorted({p for r in reqs if (r.job_id, r.run) not in priors and (p := keys.prefix_of(r.key)) is not None})
            rows = await self._lock_keys(conn, prefixes)
            by_scope = await self._windows(conn, rows, now)

            out, batch = decide_batch(reqs, priors, rows, by_scope, now)
            if batch.rows:
                ins = self._insert(admissions).on_conflict_do_nothing().returning(admissions.c.job_id, admissions.c.run)
                if len((await conn.execute(ins, batch.rows)).all()) != len(batch.rows):
                    raise _Again()  # nothing written yet that the rollback does not undo
            for prefix, t in batch.keys.items():
                await self._take(conn, virtual_keys, virtual_keys.c.prefix == prefix, t, extra={"inflight": virtual_keys.c.inflight + t.jobs})
            for team, t in batch.teams.items():
                await self._take(conn, teams, teams.c.name == team, t, extra={})
            if batch.buckets:
                await bump_buckets(conn, self.dialect, [{"scope": s, "second": sec, "requests": n, "tokens": tok}
                                                        for (s, sec), (n, tok) in batch.buckets.items()])
        return out

    async def _windows(self, conn: AsyncConnection, rows: dict[str, tuple[Any, Any]], now: float) -> dict[str, list[Bucket]]:
        """The live one-second buckets of every key and team in the batch that has RPM or TPM."""
        scopes = set()
        for prefix, (krow, trow) in rows.items():
            if krow.rpm is not None or krow.tpm is not None:
                scopes.add(key_scope(prefix))
            if trow is not None and (trow.rpm is not None or trow.tpm is not None):
                scopes.add(team_scope(krow.team))
        by_scope: dict[str, list[Bucket]] = defaultdict(list)
        if scopes:
            for b in (await conn.execute(
                    select(rate_buckets.c.scope, rate_buckets.c.second, rate_buckets.c.requests, rate_buckets.c.tokens)
                    .where(rate_buckets.c.scope.in_(sorted(scopes)), rate_buckets.c.second >= ratelimit.window_floor(now)))).all():
                by_scope[b.scope].append(Bucket(b.second, b.requests, b.tokens))
        return by_scope

    async def _take(self, conn: AsyncConnection, table: Any, where: Any, t: _Taken, extra: dict[str, Any]) -> None:
        """The batch's reservations on one row, as one conditional UPDATE: it re-checks under
        the row lock what the decisions assumed, and a row that changed anyway makes the
        transaction retry."""
        if not t.jobs:
            return
        values: dict[str, Any] = {"reserved_nano": table.c.reserved_nano + t.amount_nano, **extra}
        cond = where
        if t.first is not None:
            pk = t.first.period_key
            spent = rolled_spent(table, pk)
            values |= {"spent_nano": spent, "shadow_spent_nano": rolled_spent(table, pk, "shadow_spent_nano"), "period_key": pk}
            if t.first.limit_nano is not None:
                cond = and_(where, spent + table.c.reserved_nano + t.amount_nano <= table.c.budget_nano)
            if t.soft_crossings:
                values |= {"soft_alerted": pk, "soft_alerts": table.c.soft_alerts + t.soft_crossings}
        res = await conn.execute(update(table).where(cond).values(**values))
        if res.rowcount != 1:
            raise Conflict(f"{table.name}: the budget row changed under its lock")
