"""Layer 2, latency-based failover: the pure parts.

    Window.add(record) / Window.stats(now) -> WindowStats     per (provider, model), sliding
    assess(stats, thresholds, previous, now) -> HealthState   with hysteresis
    order_chain(route, health, rng, probe_share) -> Route     degraded hops go last

A window is a ring of time buckets (`bucket_s` wide, `window_s` long) keyed by the cost
record's own timestamp, so every aggregator that reads the same records computes the same
window. Each bucket holds call and error counts, tokens, and a log-scale latency histogram
(5% wide bins), so merging buckets is adding counts and a P95 costs ~300 additions whatever
the traffic. The I/O shell (broker/health_aggregator.py) feeds it cost records from PB_COSTS and
writes the states into the PB_HEALTH KV bucket; brokers read them back and call order_chain.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Literal, Mapping

import msgspec

from panelboard.schemas.config import Config, HealthSettings
from panelboard.schemas.job import CostRecord, Route

# Outcomes that count against a provider. A ClientError (400, context length) is the
# request's fault; a `lost` call died with its worker and measured nothing.
ERROR_OUTCOMES = frozenset({"RateLimited", "ServerError", "Timeout"})
IGNORED_OUTCOMES = frozenset({"lost"})

_RATIO = 1.05  # histogram bin width: latencies are known to within 5%
_LOG_RATIO = math.log(_RATIO)


def _bin(latency_ms: float) -> int:
    return 0 if latency_ms <= 1.0 else int(math.log(latency_ms) / _LOG_RATIO) + 1


def _bin_value(b: int) -> float:
    """The bin's upper edge: a P95 is never reported below the latencies it stands for."""
    return 1.0 if b == 0 else _RATIO**b


Key = tuple[str, str]  # (provider, catalog model name)


class Bucket:
    __slots__ = ("calls", "errors", "tokens", "hist")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.tokens = 0
        self.hist: dict[int, int] = {}


class WindowStats(msgspec.Struct, frozen=True):
    provider: str
    model: str
    calls: int
    errors: int
    tokens: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


class Window:
    """The sliding window of one (provider, model)."""

    def __init__(self, provider: str, model: str, window_s: float = 60.0, bucket_s: float = 10.0):
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.provider = provider
        self.model = model
        self.bucket_s = bucket_s
        self.n = max(1, round(window_s / bucket_s))
        self.buckets: dict[int, Bucket] = {}

    def add(self, ts: float, latency_ms: float, error: bool, tokens: int = 0, now: float | None = None) -> None:
        idx = int((min(ts, now) if now is not None else ts) // self.bucket_s)  # a skewed clock lands in the present
        if now is not None and idx <= int(now // self.bucket_s) - self.n:
            return  # already out of the window
        b = self.buckets.get(idx)
        if b is None:
            b = self.buckets[idx] = Bucket()
        b.calls += 1
        b.errors += error
        b.tokens += tokens
        k = _bin(latency_ms)
        b.hist[k] = b.hist.get(k, 0) + 1

    def add_record(self, rec: CostRecord, now: float | None = None) -> bool:
        if rec.outcome in IGNORED_OUTCOMES:
            return False
        self.add(rec.ts, rec.latency_ms, rec.outcome in ERROR_OUTCOMES, rec.prompt_tokens + rec.completion_tokens, now)
        return True

    def evict(self, now: float) -> None:
        floor = int(now // self.bucket_s) - self.n
        for idx in [i for i in self.buckets if i <= floor]:
            del self.buckets[idx]

    def stats(self, now: float) -> WindowStats:
        self.evict(now)
        calls = errors = tokens = 0
        hist: dict[int, int] = {}
        for b in self.buckets.values():
            calls += b.calls
            errors += b.errors
            tokens += b.tokens
            for k, c in b.hist.items():
                hist[k] = hist.get(k, 0) + c
        return WindowStats(self.provider, self.model, calls, errors, tokens, _quantile(hist, calls, 0.50), _quantile(hist, calls, 0.95))


def _quantile(hist: dict[int, int], n: int, q: float) -> float | None:
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= rank:
            return round(_bin_value(k), 1)
    return None  # unreachable: the counts add up to n


class Thresholds(msgspec.Struct, frozen=True):
    p95_ms: float
    error_rate: float
    min_calls: int
    min_probe_calls: int
    cooldown_s: float


def thresholds(h: HealthSettings, provider: str, model: str) -> Thresholds:
    """The global thresholds with the provider's, then the model's, overrides on top."""
    p95, err = h.p95_ms, h.error_rate
    for name in (provider, model):
        o = h.overrides.get(name)
        if o is not None:
            p95 = o.p95_ms if o.p95_ms is not None else p95
            err = o.error_rate if o.error_rate is not None else err
    return Thresholds(p95_ms=p95, error_rate=err, min_calls=h.min_calls, min_probe_calls=h.min_probe_calls, cooldown_s=h.cooldown_s)


class HealthState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One (provider, model)'s state, as stored in PB_HEALTH. A wire struct: unknown fields
    are kept for newer writers, and every field has a default for older ones."""

    provider: str
    model: str
    state: Literal["healthy", "degraded"] = "healthy"
    since: float = 0.0  # when it entered this state
    reason: str | None = None  # why it is degraded (or what restored it)
    recovering_since: float | None = None  # degraded, but healthy by its numbers since then
    p95_ms: float | None = None
    p50_ms: float | None = None
    error_rate: float = 0.0
    calls: int = 0
    tokens: int = 0  # prompt + completion tokens in the window (usage-based choice)
    updated: float = 0.0

    @property
    def degraded(self) -> bool:
        return self.state == "degraded"


def _verdict(s: WindowStats, t: Thresholds) -> str | None:
    """Why these numbers are bad, or None if they are fine."""
    why = []
    if s.p95_ms is not None and s.p95_ms > t.p95_ms:
        why.append(f"p95 {s.p95_ms:.0f} ms > {t.p95_ms:.0f} ms")
    if s.error_rate > t.error_rate:
        why.append(f"error rate {s.error_rate:.0%} > {t.error_rate:.0%}")
    return f"{' and '.join(why)} over {s.calls} calls" if why else None


def assess(stats: WindowStats, t: Thresholds, previous: HealthState | None, now: float) -> HealthState:
    """The next state. Healthy -> degraded as soon as a window of at least `min_calls` calls
    is past a threshold; degraded -> healthy only once windows of at least `min_probe_calls`
    calls have stayed within both thresholds for `cooldown_s`. A window with too few calls
    changes nothing: a degraded hop that gets no traffic stays degraded."""
    prev = previous or HealthState(provider=stats.provider, model=stats.model, since=now)
    common: dict[str, Any] = dict(provider=stats.provider, model=stats.model, p95_ms=stats.p95_ms, p50_ms=stats.p50_ms,
                  error_rate=round(stats.error_rate, 4), calls=stats.calls, tokens=stats.tokens, updated=now)
    bad = _verdict(stats, t)
    if not prev.degraded:
        if stats.calls >= t.min_calls and bad:
            return HealthState(state="degraded", since=now, reason=bad, **common)
        return HealthState(state="healthy", since=prev.since, reason=prev.reason, **common)
    if stats.calls < t.min_probe_calls:
        return HealthState(state="degraded", since=prev.since, reason=prev.reason, recovering_since=prev.recovering_since, **common)
    if bad:
        return HealthState(state="degraded", since=prev.since, reason=bad, **common)
    recovering = prev.recovering_since if prev.recovering_since is not None else now
    if now - recovering >= t.cooldown_s:
        return HealthState(state="healthy", since=now, reason=f"recovered: healthy for {now - recovering:.0f} s over {stats.calls} calls", **common)
    return HealthState(state="degraded", since=prev.since, reason=prev.reason, recovering_since=recovering, **common)


Health = Mapping[Key, HealthState]


def is_degraded(health: Health, provider: str, model: str) -> bool:
    st = health.get((provider, model))
    return st is not None and st.degraded


def order_chain(route: Route, health: Health, rng: random.Random, probe_share: float) -> Route:
    """Healthy hops first, degraded hops after them in their own order: nothing is dropped, so
    a degraded hop is still a last resort. A `probe_share` of jobs instead go to a degraded hop
    first, so that its recovery shows in the window. With no hop (or every hop) degraded the
    route is returned as it is."""
    degraded = [h for h in route.chain if is_degraded(health, h.provider, h.model)]
    if not degraded or len(degraded) == len(route.chain):
        return route
    healthy = [h for h in route.chain if not is_degraded(health, h.provider, h.model)]
    if probe_share > 0 and rng.random() < probe_share:
        probe = degraded[rng.randrange(len(degraded))] if len(degraded) > 1 else degraded[0]
        return Route(tier=route.tier, chain=(probe, *healthy, *(h for h in degraded if h is not probe)))
    return Route(tier=route.tier, chain=(*healthy, *degraded))


# -- KV keys ----------------------------------------------------------------------------
# KV keys allow [-/_=.A-Za-z0-9]; catalog names may hold anything else, escaped as =XX.
_UNSAFE = re.compile(r"[^-/_.A-Za-z0-9]")


def kv_key(provider: str, model: str) -> str:
    esc = lambda s: _UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), s).strip(".") or "_"  # noqa: E731
    return f"{esc(provider)}.{esc(model)}"


def tracked(cfg: Config) -> list[Key]:
    """Every (provider, model) the config can route to."""
    return [(m.provider, name) for name, m in cfg.models.items()]


def check(cfg: Config) -> list[str]:
    """Config mistakes msgspec cannot see (for panelboard.config.check)."""
    h = cfg.health
    out = []
    for name in h.overrides:
        if name not in cfg.models and name not in cfg.providers:
            out.append(f"health.overrides.{name}: not a provider or a model of this config")
    if not 0 <= h.probe_share <= 1:
        out.append("health.probe_share must be between 0 and 1")
    if h.bucket_s <= 0 or h.window_s < h.bucket_s:
        out.append("health: need 0 < bucket_s <= window_s")
    return out
