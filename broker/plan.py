"""The routing plan for one job: intent -> tier -> strategy -> health order -> bounds. Pure.

    plan(job, cfg, table, health, load, rng, probe_share, now, bound) -> Plan

`Broker.handle` dispatches the route it returns and `panelboard route explain` describes the
same Plan, so the explanation cannot disagree with the decision.
"""

from __future__ import annotations

import random
from typing import Mapping

import msgspec

from panelboard.broker import admission, difficulty, health, routing, strategies
from panelboard.broker.classify import Classification, IntentSource, intent_for
from panelboard.schemas.config import Config
from panelboard.schemas.errors import DeadlineExceeded, JobError
from panelboard.schemas.job import Job, Route

class Plan(msgspec.Struct, frozen=True, kw_only=True):
    job: Job  # the job as it runs: the classified intent set, max_tokens bounded when asked
    intent: str | None
    intent_source: IntentSource
    classification: Classification | None = None
    configured: Route | None = None  # the tier's chain as configured (min_precision applied)
    chosen: Route | None = None  # after the tier's strategy ordered groups of equal deployments
    route: Route | None = None  # after health: the order the job runs its hops in
    error: JobError | None = None  # the job is refused with this instead

    @property
    def decision(self) -> Route | JobError:
        if self.route is not None:
            return self.route
        assert self.error is not None
        return self.error


def plan(job: Job, cfg: Config, table: Mapping[str, Route] | None, health_states: health.Health | None,
         load: Mapping[str, int], rng: random.Random, probe_share: float, now: float | None = None, bound: bool = False,
         router: difficulty.Scorer | None = None) -> Plan:
    """`health_states` None: health is not read (or not enabled), the chosen order stands.
    `probe_share`: the share of jobs that try a degraded hop first (0 shows what most get).
    `now` None: the deadline is not checked. `bound`: cap max_tokens at the chain's smallest
    output cap, as governance does (its reservation assumes no longer answer). `router`: the
    opt-in difficulty router (cfg.router), which may move a job within its tier pair."""
    intent, source, cls = intent_for(job, cfg)
    if source == "classified":
        job = msgspec.structs.replace(job, intent=intent)  # cost records carry it
    if now is not None and job.deadline is not None and job.deadline <= now:
        err: JobError = DeadlineExceeded(message=f"job {job.id} passed its deadline before it was admitted", hint="submit with a later deadline, or none")
        return Plan(job=job, intent=intent, intent_source=source, classification=cls, error=err)
    resolved = routing.resolve(job, cfg, dict(table) if table is not None else None)
    if not isinstance(resolved, Route):
        return Plan(job=job, intent=intent, intent_source=source, classification=cls, error=resolved)
    if router is not None and cfg.router is not None:
        tier, _ = difficulty.choose_tier(resolved.tier, job.request, cfg.router, router)
        if tier != resolved.tier:
            resolved = (table or {}).get(tier) or routing.tier_route(cfg, tier)
    chosen = strategies.choose(resolved, cfg, health_states or {}, load, rng)
    ordered = chosen if health_states is None or not cfg.health.enabled else health.order_chain(chosen, health_states, rng, probe_share)
    if bound:
        job = admission.bound(job, ordered, cfg)
    return Plan(job=job, intent=intent, intent_source=source, classification=cls, configured=resolved, chosen=chosen, route=ordered)
