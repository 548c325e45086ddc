"""Per team: spend in the budget's period against the budget, and rate-limit headroom over the
live window, from the governance database. Read by `panelboard status` and, in a broker with
a metrics port, refreshed into the budget and headroom gauges."""

from __future__ import annotations

import asyncio
import time

import msgspec
from prometheus_client import Gauge
from sqlalchemy import func, select

from panelboard.broker import ratelimit
from panelboard.broker.budgets import NANO
from panelboard.broker.governance_store import Store, rate_buckets
from panelboard.broker.governance_tables import team_scope
from panelboard.transport import logs, meters

log = logs.get("teams")

REFRESH_S = 5.0

BUDGET = Gauge("panelboard_budget_usd", "The team's budget for its period.", ["team", "period"], registry=meters.REGISTRY)
SPENT = Gauge("panelboard_budget_spent_usd", "What the team spent in its budget's period (live and shadow calls).", ["team"],
              registry=meters.REGISTRY)
REMAINING = Gauge("panelboard_budget_remaining_usd", "Budget left in the period, after spend and reservations.", ["team"],
                  registry=meters.REGISTRY)
HEADROOM = Gauge("panelboard_rate_limit_headroom", "Requests (rpm) or tokens (tpm) the team may still send in the live window.",
                 ["team", "limit"], registry=meters.REGISTRY)


class TeamFigures(msgspec.Struct):
    team: str
    period: str  # none, daily, monthly
    spent_usd: float
    budget_usd: float | None
    remaining_usd: float | None
    rpm: int | None = None
    rpm_used: int = 0
    tpm: int | None = None
    tpm_used: int = 0


async def read(store: Store, now: float | None = None) -> list[TeamFigures]:
    now = time.time() if now is None else now
    teams = await store.list_teams()
    async with store.engine.connect() as conn:
        used = {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in (await conn.execute(
            select(rate_buckets.c.scope, func.sum(rate_buckets.c.requests), func.sum(rate_buckets.c.tokens))
            .where(rate_buckets.c.second > ratelimit.window_floor(now)).group_by(rate_buckets.c.scope))).all()}
    out = []
    for t in teams:
        rq, tk = used.get(team_scope(t["name"]), (0, 0))
        budget = t["budget_nano"]
        out.append(TeamFigures(team=t["name"], period=t["period"], spent_usd=t["spent_nano"] / NANO,
                               budget_usd=budget / NANO if budget is not None else None,
                               remaining_usd=t["remaining_nano"] / NANO if t.get("remaining_nano") is not None else None,
                               rpm=t["rpm"], rpm_used=rq, tpm=t["tpm"], tpm_used=tk))
    return out


def publish(figures: list[TeamFigures]) -> None:
    for f in figures:
        SPENT.labels(f.team).set(f.spent_usd)
        if f.budget_usd is not None:
            BUDGET.labels(f.team, f.period).set(f.budget_usd)
        if f.remaining_usd is not None:
            REMAINING.labels(f.team).set(f.remaining_usd)
        if f.rpm is not None:
            HEADROOM.labels(f.team, "rpm").set(max(0, f.rpm - f.rpm_used))
        if f.tpm is not None:
            HEADROOM.labels(f.team, "tpm").set(max(0, f.tpm - f.tpm_used))


async def follow() -> None:
    """While a metrics port is open: the gauges of the teams of this process's brokers' database."""
    while True:
        for b in list(meters.STATE.brokers):
            store = getattr(getattr(b, "governor", None), "store", None)
            if store is None:
                continue
            try:
                publish(await read(store))
            except Exception as e:  # the database is away: keep the last figures
                log.debug("teams.read_failed", error=type(e).__name__)
            break
        await asyncio.sleep(REFRESH_S)
