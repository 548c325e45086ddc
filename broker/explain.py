"""`panelboard route explain JOB.json`: the routing decision for one job, and why. Pure.

    explain(job, cfg, health=None, load=None) -> Explanation      render(Explanation) -> str

It runs the broker's own plan (broker/plan.py) and describes it: the intent (given, the config's default, or
classified, with the classifier's reasons), its tier, the tier's chain with each hop's price,
quantization, triggers and timeout, the hops min_precision leaves out, the order the tier's
strategy gives groups of equal deployments, and (when PB_HEALTH could be read) which hops are
degraded and so move behind the healthy ones. The probe share is reported, not drawn: the
chain shown is what most jobs get.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal, Mapping

import msgspec

from panelboard.broker import lanes, routing, strategies
from panelboard.broker.classify import Classification, IntentSource
from panelboard.broker.health import Health, HealthState
from panelboard.broker.plan import plan
from panelboard.schemas.config import Config, RetryPolicy
from panelboard.schemas.errors import JobError
from panelboard.schemas.job import Hop, Job, Route
from panelboard.schemas.triggers import link_timeout_ms


class HopInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    position: int  # in the chain the job gets
    configured: int  # in the tier's fallbacks
    model: str
    provider: str
    provider_model: str  # the provider's own model id
    input_per_m: float
    output_per_m: float
    quantization: str | None = None
    context_window: int = 0
    triggers: list[str] = []
    timeout_ms: int = 0
    note: str | None = None
    group: str | None = None
    choice: str | None = None  # the strategy's score, for a grouped hop
    health: Literal["healthy", "degraded", "unknown"] | None = None  # None: health not read
    p95_ms: float | None = None
    error_rate: float | None = None
    calls: int | None = None
    health_reason: str | None = None


class Excluded(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    provider: str
    quantization: str | None = None
    reason: str


class Explanation(msgspec.Struct, kw_only=True, omit_defaults=True):
    job_id: str
    intent: str | None
    intent_source: IntentSource
    classification: Classification | None = None
    tier: str | None = None
    strategy: str | None = None
    retry_policy: RetryPolicy | None = None
    min_precision: str | None = None
    chain: list[HopInfo] = []
    excluded: list[Excluded] = []
    health_read: bool = False
    probe_share: float = 0.0
    notes: list[str] = []
    error: JobError | None = None
    max_tokens: int | None = None  # the output cap the job runs with (its own, or the bound)
    lane: lanes.LaneChoice | None = None  # realtime or the first hop's provider batch, and why


def explain(job: Job, cfg: Config, health: Health | None = None, load: Mapping[str, int] | None = None,
            now: float | None = None, bound: bool = False) -> Explanation:
    """`health`: (provider, model) -> HealthState, or None when PB_HEALTH was not read.
    `load`: provider -> queued + running dispatches, for strategies that use it. `now`: check
    the job's deadline against it; `bound`: as under governance, cap max_tokens."""
    # The broker's own plan (broker/plan.py), with no probe drawn: the chain most jobs get.
    p = plan(job, cfg, None, health, load or {}, random.Random(0), 0.0, now, bound)
    base: dict[str, Any] = dict(job_id=job.id, intent=p.intent, intent_source=p.intent_source, classification=p.classification,
                                health_read=health is not None)
    if p.error is not None or p.route is None or p.configured is None or p.chosen is None:
        return Explanation(**base, error=p.error)
    tier_name = p.route.tier
    tier = cfg.tiers[tier_name]
    notes: list[str] = []

    excluded = [
        Excluded(model=lk.model, provider=cfg.models[lk.model].provider, quantization=cfg.models[lk.model].quantization,
                 reason=f"{cfg.models[lk.model].quantization or 'full precision'} is coarser than the tier's min_precision {tier.min_precision}")
        for lk in tier.fallbacks
        if lk.model in cfg.models and not routing.precise_enough(cfg.models[lk.model].quantization, tier.min_precision)
    ]
    configured, chosen, final = p.configured, p.chosen, p.route
    h: Health = health or {}
    ld = load or {}
    strategy = strategies.tier_strategy(cfg, tier_name)
    grouped = strategies.groups(cfg, configured)
    choice: dict[str, str] = {}
    for positions in grouped.values():
        cands = [strategies.candidate(cfg, configured, configured.chain[i], h, ld) for i in positions]
        if strategy == "simple-shuffle":
            total = sum(max(c.weight, 0.0) for c in cands) or 1.0
            for c in cands:
                choice[c.hop.model] = f"simple-shuffle: first {max(c.weight, 0.0) / total:.0%} of the time"
        else:
            for s in strategies.rank(strategy, cands, random.Random(0)):
                choice[s.candidate.hop.model] = f"{strategy}: {s.why} = {s.score:.3g}"
    if grouped:
        notes.append(f"groups of equal deployments are ordered per job by {strategy}"
                     + (" (a random draw: the order shown is one of them)" if strategy == "simple-shuffle" else ""))
    if final != chosen:
        notes.append("degraded hops were moved behind the healthy ones")
    if health is not None and all(_state(h, hop.provider, hop.model) == "degraded" for hop in final.chain):
        notes.append("every hop is degraded: the configured order is kept")
    if health is not None and cfg.health.enabled and any(_state(h, x.provider, x.model) == "degraded" for x in final.chain):
        notes.append(f"{cfg.health.probe_share:.0%} of jobs probe a degraded hop first, so its recovery is seen")
    if health is None:
        notes.append("health not read (no NATS server, or --no-health): degraded hops are not shown")

    index = {lk.model: i for i, lk in enumerate(tier.fallbacks)}
    chain = []
    for pos, hop in enumerate(final.chain):
        lk = tier.fallbacks[index[hop.model]]
        m = cfg.models[hop.model]
        st = h.get((hop.provider, hop.model))
        chain.append(HopInfo(
            position=pos, configured=index[hop.model], model=hop.model, provider=hop.provider, provider_model=m.model,
            input_per_m=m.input_per_m, output_per_m=m.output_per_m, quantization=m.quantization, context_window=m.context_window,
            triggers=list(lk.on), timeout_ms=link_timeout_ms(lk, cfg.providers[hop.provider].timeout_ms), note=lk.note,
            group=lk.group, choice=choice.get(hop.model),
            health=None if health is None else _state(h, hop.provider, hop.model),
            p95_ms=st.p95_ms if st else None, error_rate=st.error_rate if st else None, calls=st.calls if st else None,
            health_reason=st.reason if st and st.degraded else None,
        ))
    if not chain:
        notes.append("min_precision leaves no hop: the config check should have refused this tier")
    return Explanation(**base, tier=tier_name, strategy=strategy if grouped else None, retry_policy=tier.retry_policy,
                       min_precision=tier.min_precision, chain=chain, excluded=excluded, probe_share=cfg.health.probe_share,
                       max_tokens=p.job.request.max_tokens, notes=notes, lane=lanes.choose(p.job, final, cfg, time.time() if now is None else now))


def _state(h: Health, provider: str, model: str) -> Literal["healthy", "degraded", "unknown"]:
    st: HealthState | None = h.get((provider, model))
    return "unknown" if st is None else st.state


def route_of(e: Explanation) -> Route | None:
    """The chain the explanation describes, as the broker would dispatch it."""
    if e.tier is None:
        return None
    return Route(tier=e.tier, chain=tuple(Hop(model=x.model, provider=x.provider) for x in e.chain))


def render(e: Explanation) -> str:
    out = [f"job {e.job_id}"]
    match e.intent_source:
        case "given":
            out.append(f"intent   {e.intent} (given by the job)")
        case "default":
            out.append(f"intent   {e.intent} (the config's default_intent: the job has none)")
        case "classified":
            assert e.classification is not None
            out.append(f"intent   {e.intent} (classified: {e.classification.category}, confidence {e.classification.confidence:.2f})")
        case _:
            out.append("intent   none")
    if e.classification is not None:
        for r in e.classification.reasons:
            out.append(f"           - {r}")
        others = sorted(((s, c) for c, s in e.classification.scores.items() if c != e.classification.category), reverse=True)[:3]
        if others:
            out.append("           runners-up: " + ", ".join(f"{c} {s:g}" for s, c in others))
    if e.error is not None:
        out.append(f"rejected {e.error.message}")
        out.append(f"hint     {e.error.hint}")
        return "\n".join(out)
    rp = e.retry_policy
    out.append(f"tier     {e.tier}" + (f" (min_precision {e.min_precision})" if e.min_precision else "")
               + (f", strategy {e.strategy}" if e.strategy else ""))
    if e.max_tokens is not None:
        out.append(f"output   at most {e.max_tokens:,} tokens (max_tokens)")
    if rp is not None:
        out.append(f"retries  {rp.max_retries} per hop, {rp.backoff} backoff from {rp.base_ms} ms (max {rp.max_delay_ms} ms)")
    out.append("chain")
    for x in e.chain:
        moved = f" (configured #{x.configured + 1})" if x.configured != x.position else ""
        quant = x.quantization or "full precision"
        out.append(f"  {x.position + 1}. {x.model}{moved}  [{x.provider}: {x.provider_model}]")
        out.append(f"     ${x.input_per_m:g}/M in, ${x.output_per_m:g}/M out, {quant}, {x.context_window:,} ctx")
        out.append(f"     moves on at: {', '.join(x.triggers) or 'never'}; timeout {x.timeout_ms} ms" + (f"; note: {x.note}" if x.note else ""))
        if x.group:
            out.append(f"     group {x.group}" + (f": {x.choice}" if x.choice else ""))
        if x.health is not None:
            nums = []
            if x.p95_ms is not None:
                nums.append(f"p95 {x.p95_ms:.0f} ms")
            if x.error_rate is not None:
                nums.append(f"errors {x.error_rate:.0%}")
            if x.calls is not None:
                nums.append(f"{x.calls} calls")
            line = f"     health: {x.health.upper() if x.health == 'degraded' else x.health}" + (f" ({', '.join(nums)})" if nums else "")
            out.append(line + (f": {x.health_reason}" if x.health_reason else ""))
    for ex in e.excluded:
        out.append(f"  excluded {ex.model} [{ex.provider}]: {ex.reason}")
    if e.lane is not None:
        out.append(f"lane     {e.lane.lane}: {e.lane.why}")
    for n in e.notes:
        out.append(f"note     {n}")
    return "\n".join(out)
