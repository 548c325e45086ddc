"""What the cost reports compute, as pure functions over rows the ledger queries return
(`panelboard.queries` is the I/O shell). Money arrives as integer nano-dollars, latency as
histogram buckets, so the same rows give the same report on SQLite and Postgres.

Every report says so when there is nothing to report, instead of failing.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Literal

import msgspec

from panelboard.schemas.config import Config, Model

NANO = 1_000_000_000
HOURS_PER_MONTH = 730  # 365 * 24 / 12: the article's "$6.49/hr ... about $4,740 a month"
NOT_OK = -1  # latency bucket of a failed call: counted, not timed

Dimension = Literal["intent", "team", "feature", "model", "provider", "day"]
DIMENSIONS: tuple[Dimension, ...] = ("intent", "team", "feature", "model", "provider", "day")


def usd(nano: int) -> float:
    return round(nano / NANO, 9)


def percentile(hist: dict[int, int], q: float) -> int | None:
    """Nearest-rank percentile of a {bucket ms: count} histogram; None when it is empty."""
    n = sum(hist.values())
    if n == 0:
        return None
    rank, seen = math.ceil(q * n), 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return bucket
    return max(hist)


def _label(by: str, key: str | int | None) -> str:
    if key is None:
        return "(none)"
    if by == "day":
        return (dt.date(1970, 1, 1) + dt.timedelta(days=int(key))).isoformat()
    return str(key)


# -- usage -------------------------------------------------------------------------------------
class UsageGroup(msgspec.Struct, array_like=True):
    """A query row: calls of one key in one latency bucket (NOT_OK for failed calls)."""

    key: str | int | None
    bucket: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nano_usd: int
    cached_tokens: int = 0  # of prompt_tokens
    reasoning_tokens: int = 0  # of completion_tokens


class TtftGroup(msgspec.Struct, array_like=True):
    """A query row: streamed calls of one key whose first chunk came in one bucket (ms)."""

    key: str | int | None
    bucket: int
    requests: int


class UsageRow(msgspec.Struct):
    key: str
    requests: int  # provider calls: a job retried twice counts three
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    p50_ms: int | None  # latency of successful calls
    p95_ms: int | None
    failure_rate: float
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    streamed: int = 0  # calls that streamed a first chunk
    ttft_p50_ms: int | None = None  # time to first chunk of streamed calls
    ttft_p95_ms: int | None = None


class UsageReport(msgspec.Struct):
    by: str
    days: float
    rows: list[UsageRow]
    total: UsageRow | None
    notes: list[str]
    empty: str | None = None


def _usage_row(key: str, groups: list[UsageGroup], ttft: list[TtftGroup] = []) -> UsageRow:
    requests = sum(g.requests for g in groups)
    first: dict[int, int] = {}
    for t in ttft:
        first[t.bucket] = first.get(t.bucket, 0) + t.requests
    hist: dict[int, int] = {}
    for g in groups:
        if g.bucket != NOT_OK:
            hist[g.bucket] = hist.get(g.bucket, 0) + g.requests
    failed = sum(g.requests for g in groups if g.bucket == NOT_OK)
    return UsageRow(
        key=key, requests=requests,
        prompt_tokens=sum(g.prompt_tokens for g in groups), completion_tokens=sum(g.completion_tokens for g in groups),
        cost_usd=usd(sum(g.cost_nano_usd for g in groups)),
        p50_ms=percentile(hist, 0.50), p95_ms=percentile(hist, 0.95),
        failure_rate=round(failed / requests, 4) if requests else 0.0,
        cached_tokens=sum(g.cached_tokens for g in groups), reasoning_tokens=sum(g.reasoning_tokens for g in groups),
        streamed=sum(first.values()), ttft_p50_ms=percentile(first, 0.50), ttft_p95_ms=percentile(first, 0.95),
    )


def usage(by: Dimension, days: float, groups: list[UsageGroup], shadow_calls: int = 0, shadow_nano_usd: int = 0,
          ttft: list[TtftGroup] = []) -> UsageReport:
    if not groups:
        return UsageReport(by=by, days=days, rows=[], total=None, notes=[], empty=f"the ledger has no cost records in the last {days:g} days")
    per_key: dict[str, list[UsageGroup]] = {}
    for g in groups:
        per_key.setdefault(_label(by, g.key), []).append(g)
    firsts: dict[str, list[TtftGroup]] = {}
    for t in ttft:
        firsts.setdefault(_label(by, t.key), []).append(t)
    rows = [_usage_row(k, gs, firsts.get(k, [])) for k, gs in per_key.items()]
    rows.sort(key=(lambda r: r.key) if by == "day" else (lambda r: (-r.cost_usd, r.key)))
    notes = ["requests are provider calls (a retried job counts each call); latency percentiles are over successful calls"]
    if shadow_calls:
        notes.append(f"not counted above: {shadow_calls} shadow call(s) costing ${usd(shadow_nano_usd):.6f} (see `panelboard report shadow`)")
    if ttft:
        notes.append("ttft: time from the start of a streamed call to its first chunk leaving the worker")
    return UsageReport(by=by, days=days, rows=rows, total=_usage_row("total", groups, ttft), notes=notes)


# -- savings -----------------------------------------------------------------------------------
class TokenGroup(msgspec.Struct, array_like=True):
    """A query row: the calls of one intent on one tier."""

    intent: str | None
    tier: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nano_usd: int


class TierPrice(msgspec.Struct):
    tier: str
    model: str  # the tier's first hop: where its jobs go when nothing fails
    input_per_m: float
    output_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1_000_000


class SavingsRow(msgspec.Struct):
    intent: str
    tiers: str
    requests: int
    tokens: int
    actual_usd: float
    all_frontier_usd: float
    all_cheapest_usd: float
    saved_vs_frontier_usd: float
    saved_vs_frontier_pct: float | None


class LaneGroup(msgspec.Struct, array_like=True):
    """A query row: the calls of one lane on one catalog model."""

    lane: str | None
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nano_usd: int


class LaneRow(msgspec.Struct):
    lane: str  # "realtime", "batch"
    requests: int
    actual_usd: float
    list_usd: float  # the same calls at the catalog's list price
    saved_usd: float
    saved_pct: float | None


class SavingsReport(msgspec.Struct):
    days: float
    frontier: TierPrice | None
    cheapest: TierPrice | None
    rows: list[SavingsRow]
    total: SavingsRow | None
    below_frontier_share: float | None  # requests that ran on a cheaper tier than the frontier one
    notes: list[str]
    empty: str | None = None
    lanes: list[LaneRow] = []  # what each lane saved against list price


def lane_savings(groups: list[LaneGroup], cfg: Config) -> list[LaneRow]:
    """Each lane's calls against the same calls at their model's list price (a model no longer
    in the catalog is taken at what it was billed)."""
    acc: dict[str, list[float]] = {}
    for g in groups:
        m = cfg.models.get(g.model)
        actual = usd(g.cost_nano_usd)
        listed = (g.prompt_tokens * m.input_per_m + g.completion_tokens * m.output_per_m) / 1_000_000 if m else actual
        row = acc.setdefault(g.lane or "realtime", [0, 0.0, 0.0])
        row[0] += g.requests
        row[1] += actual
        row[2] += listed
    out = []
    for lane, (n, actual, listed) in sorted(acc.items()):
        saved = round(listed - actual, 9)
        out.append(LaneRow(lane=lane, requests=int(n), actual_usd=round(actual, 9), list_usd=round(listed, 9), saved_usd=saved,
                           saved_pct=round(100 * saved / listed, 1) if listed else None))
    return out


def tier_prices(cfg: Config) -> list[TierPrice]:
    out = []
    for name, tier in cfg.tiers.items():
        m: Model = cfg.models[tier.fallbacks[0].model]
        out.append(TierPrice(tier=name, model=tier.fallbacks[0].model, input_per_m=m.input_per_m, output_per_m=m.output_per_m))
    return out


def _savings_row(intent: str, groups: list[TokenGroup], frontier: TierPrice, cheapest: TierPrice) -> SavingsRow:
    pt, ct = sum(g.prompt_tokens for g in groups), sum(g.completion_tokens for g in groups)
    actual = usd(sum(g.cost_nano_usd for g in groups))
    at_frontier = round(frontier.cost(pt, ct), 9)
    saved = round(at_frontier - actual, 9)
    return SavingsRow(
        intent=intent, tiers=",".join(sorted({g.tier for g in groups})), requests=sum(g.requests for g in groups), tokens=pt + ct,
        actual_usd=actual, all_frontier_usd=at_frontier, all_cheapest_usd=round(cheapest.cost(pt, ct), 9),
        saved_vs_frontier_usd=saved, saved_vs_frontier_pct=round(100 * saved / at_frontier, 1) if at_frontier else None,
    )


def savings(days: float, groups: list[TokenGroup], prices: list[TierPrice]) -> SavingsReport:
    """Actual cost against the same token counts priced on the frontier tier (the dearest for
    this traffic) and on the single cheapest tier, by intent."""
    if not groups:
        return SavingsReport(days=days, frontier=None, cheapest=None, rows=[], total=None, below_frontier_share=None, notes=[],
                             empty=f"the ledger has no cost records in the last {days:g} days")
    pt, ct = sum(g.prompt_tokens for g in groups), sum(g.completion_tokens for g in groups)
    ranked = sorted(prices, key=lambda p: (p.cost(pt, ct), p.tier))
    cheapest, frontier = ranked[0], ranked[-1]
    per_intent: dict[str, list[TokenGroup]] = {}
    for g in groups:
        per_intent.setdefault(g.intent or "(none)", []).append(g)
    rows = sorted((_savings_row(i, gs, frontier, cheapest) for i, gs in per_intent.items()), key=lambda r: (-r.actual_usd, r.intent))
    total = _savings_row("total", groups, frontier, cheapest)
    below = sum(g.requests for g in groups if g.tier != frontier.tier) / total.requests
    notes = [
        f"frontier: tier {frontier.tier} ({frontier.model}); cheapest: tier {cheapest.tier} ({cheapest.model}), each priced at its first hop",
        "the same token counts are repriced; a different model would answer at a different length, so read it as an order of magnitude",
    ]
    return SavingsReport(days=days, frontier=frontier, cheapest=cheapest, rows=rows, total=total,
                         below_frontier_share=round(below, 4), notes=notes)


# -- breakeven ---------------------------------------------------------------------------------
class Traffic(msgspec.Struct, array_like=True):
    """A query row: the window's live calls, all together."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nano_usd: int
    first_ts: float | None


class Breakeven(msgspec.Struct):
    hourly_usd: float
    per_million_usd: float
    price_source: str
    dedicated_monthly_usd: float
    breakeven_tokens_per_month: float
    breakeven_tokens_per_s: float
    days: float
    traffic_tokens: int
    traffic_days: float | None  # the part of the window the ledger covers
    traffic_tokens_per_s: float | None
    traffic_monthly_serverless_usd: float | None
    share_of_breakeven: float | None
    capacity_tokens_per_s: float | None
    utilisation: float | None
    verdict: str
    notes: list[str]


def blended_per_million(model: Model, prompt_tokens: int, completion_tokens: int) -> float:
    """A model's $/M on the traffic's own input/output mix (half and half with no traffic)."""
    total = prompt_tokens + completion_tokens
    if total == 0:
        return (model.input_per_m + model.output_per_m) / 2
    return (prompt_tokens * model.input_per_m + completion_tokens * model.output_per_m) / total


def breakeven(hourly_usd: float, per_million_usd: float, price_source: str, days: float, traffic: Traffic, now: float,
              capacity_tokens_per_s: float | None = None) -> Breakeven:
    """Dedicated (per hour, around the clock) against serverless (per token): the monthly
    cost, the tokens that money buys serverless, and the sustained tokens/s where they meet;
    then where the ledger's real traffic stands."""
    monthly = hourly_usd * HOURS_PER_MONTH
    be_tokens = monthly / per_million_usd * 1_000_000
    be_tps = be_tokens / (HOURS_PER_MONTH * 3600)
    tokens = traffic.prompt_tokens + traffic.completion_tokens
    notes = [f"a month is {HOURS_PER_MONTH} hours; the dedicated endpoint is billed around the clock"]
    t_days: float | None = None
    t_tps: float | None = None
    t_monthly: float | None = None
    share: float | None = None
    util: float | None = None
    if traffic.requests and traffic.first_ts is not None:
        t_days = max(min(days, (now - traffic.first_ts) / 86400), 1 / 24)  # at least an hour: a first record seconds old is no rate
        t_tps = tokens / (t_days * 86400)
        t_monthly = t_tps * HOURS_PER_MONTH * 3600 * per_million_usd / 1_000_000
        share = t_tps / be_tps
        if capacity_tokens_per_s:
            util = t_tps / capacity_tokens_per_s
    if t_tps is None:
        verdict = f"no traffic in the ledger for the last {days:g} days: the break-even point above is the bar your traffic would have to clear"
    elif t_tps < be_tps:
        verdict = (f"stay serverless: the traffic averages {t_tps:,.1f} tokens/s, {100 * t_tps / be_tps:.1f}% of the "
                   f"{be_tps:,.0f} tokens/s at which a dedicated endpoint pays for itself")
    else:
        verdict = (f"dedicated is cheaper on price alone: the traffic averages {t_tps:,.1f} tokens/s, above the "
                   f"{be_tps:,.0f} tokens/s break-even, if one endpoint can sustain it")
    if capacity_tokens_per_s:
        if capacity_tokens_per_s < be_tps:
            notes.append(f"an endpoint that sustains {capacity_tokens_per_s:,.0f} tokens/s can never reach the "
                         f"{be_tps:,.0f} tokens/s break-even: serverless wins on price at any load")
        if util is not None and util < 0.5:
            notes.append(f"utilisation {100 * util:.1f}% is under 50%: the article's rule is to stay serverless and revisit quarterly")
    else:
        notes.append("pass --capacity-tps (the tokens/s one dedicated endpoint sustains) to see its utilisation")
    return Breakeven(
        hourly_usd=hourly_usd, per_million_usd=per_million_usd, price_source=price_source,
        dedicated_monthly_usd=round(monthly, 2), breakeven_tokens_per_month=round(be_tokens), breakeven_tokens_per_s=round(be_tps, 1),
        days=days, traffic_tokens=tokens, traffic_days=round(t_days, 3) if t_days is not None else None,
        traffic_tokens_per_s=round(t_tps, 3) if t_tps is not None else None,
        traffic_monthly_serverless_usd=round(t_monthly, 2) if t_monthly is not None else None,
        share_of_breakeven=round(share, 6) if share is not None else None,
        capacity_tokens_per_s=capacity_tokens_per_s, utilisation=round(util, 6) if util is not None else None,
        verdict=verdict, notes=notes,
    )


# -- shadow ------------------------------------------------------------------------------------
class ShadowPair(msgspec.Struct, array_like=True):
    """A query row: shadow calls of jobs whose live call went to `live_model`."""

    live_model: str
    shadow_model: str
    jobs: int
    live_nano_usd: int
    shadow_nano_usd: int
    shadow_failed: int


class PairBucket(msgspec.Struct, array_like=True):
    live_model: str
    shadow_model: str
    bucket: int
    n: int


class ShadowRow(msgspec.Struct):
    live_model: str
    shadow_model: str
    jobs: int
    live_usd: float
    shadow_usd: float
    cost_change_pct: float | None
    live_p50_ms: int | None
    live_p95_ms: int | None
    shadow_p50_ms: int | None
    shadow_p95_ms: int | None
    shadow_failure_rate: float


class ShadowReport(msgspec.Struct):
    days: float
    rows: list[ShadowRow]
    notes: list[str]
    empty: str | None = None


def shadow(days: float, pairs: list[ShadowPair], live_hist: list[PairBucket], shadow_hist: list[PairBucket]) -> ShadowReport:
    if not pairs:
        return ShadowReport(days=days, rows=[], notes=[], empty=(
            f"no shadow rows in the last {days:g} days: nothing was mirrored to a shadow route, so there is nothing to compare"))

    def hists(buckets: list[PairBucket]) -> dict[tuple[str, str], dict[int, int]]:
        out: dict[tuple[str, str], dict[int, int]] = {}
        for b in buckets:
            out.setdefault((b.live_model, b.shadow_model), {})[b.bucket] = b.n
        return out

    live_h, shadow_h = hists(live_hist), hists(shadow_hist)
    rows = []
    for p in pairs:
        lh, sh = live_h.get((p.live_model, p.shadow_model), {}), shadow_h.get((p.live_model, p.shadow_model), {})
        rows.append(ShadowRow(
            live_model=p.live_model, shadow_model=p.shadow_model, jobs=p.jobs,
            live_usd=usd(p.live_nano_usd), shadow_usd=usd(p.shadow_nano_usd),
            cost_change_pct=round(100 * (p.shadow_nano_usd - p.live_nano_usd) / p.live_nano_usd, 1) if p.live_nano_usd else None,
            live_p50_ms=percentile(lh, 0.5), live_p95_ms=percentile(lh, 0.95),
            shadow_p50_ms=percentile(sh, 0.5), shadow_p95_ms=percentile(sh, 0.95),
            shadow_failure_rate=round(p.shadow_failed / p.jobs, 4),
        ))
    rows.sort(key=lambda r: (r.live_model, r.shadow_model))
    notes = ["each shadow call is paired with the live call that answered the same job; latency is over successful calls"]
    return ShadowReport(days=days, rows=rows, notes=notes)


def serverless_price(cfg: Config, traffic: Traffic, per_million: float | None, model: str | None) -> tuple[float, str]:
    """The per-token price to weigh a dedicated endpoint against: given, a catalog model's
    (blended on the traffic's input/output mix), or what the traffic actually paid."""
    if per_million is not None:
        return per_million, "--per-million"
    if model is not None:
        if model not in cfg.models:
            raise ValueError(f"unknown model {model!r}; the catalog has: {', '.join(sorted(cfg.models))}")
        m = cfg.models[model]
        mix = "your traffic's input/output mix" if traffic.prompt_tokens + traffic.completion_tokens else "half input, half output"
        return blended_per_million(m, traffic.prompt_tokens, traffic.completion_tokens), f"{model} at ${m.input_per_m:g}/${m.output_per_m:g} in/out, on {mix}"
    tokens = traffic.prompt_tokens + traffic.completion_tokens
    if not tokens:
        raise ValueError("no traffic to take a price from: pass --per-million USD or --model NAME")
    return traffic.cost_nano_usd / NANO / tokens * 1_000_000, "what your traffic paid on average"
