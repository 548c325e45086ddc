"""Choice among equals: which of several deployments of the same model goes first. Pure.

A tier's links that share a `group` name are deployments of one model (the same weights on
novita, deepinfra and fireworks, say). Per job the tier's `strategy` ranks them, and they are
laid back into the chain positions they hold, best first: the others stay in the chain as its
fallbacks. Links outside any group keep their place.

    tiers:
      cheap-fast:
        strategy: cost-latency          # default; or a LiteLLM name below
        fallbacks:
          - {model: novita/llama-3.3-70b,    group: llama-70b, on: ["429", "timeout>3000ms", "5xx"]}
          - {model: deepinfra/llama-3.3-70b, group: llama-70b, on: ["429", "timeout>3000ms", "5xx"]}
          - {model: fireworks/llama-3.3-70b}       # the backstop, always last

Strategies (LiteLLM's names, so its users recognise them, and ours):

| strategy        | first pick                                                          |
| --------------- | ------------------------------------------------------------------- |
| simple-shuffle  | random, in proportion to `weight` (default 1)                       |
| least-busy      | the lowest in-flight load (queued + running / the provider's cap)   |
| usage-based     | the fewest tokens used in the health window                         |
| latency-based   | the lowest rolling P95 (an unmeasured deployment counts as fastest) |
| cost-based      | the lowest catalog price (input + output $/M)                       |
| cost-latency    | price x P95 penalty x load penalty (below)                          |

cost-latency: `score = price * max(1, p95 / (p95_threshold / 2)) * (1 + load)`. The cheapest
deployment wins while its P95 stays under half its health threshold and it has free slots;
as it slows down or queues up, its effective price rises until a dearer one is cheaper. That
is the article's "cost floats with conditions while output quality stays constant".
Ties keep the chain's order, so a configuration's author decides between true equals.
"""

from __future__ import annotations

import random
from typing import Mapping, get_args

import msgspec

from panelboard.broker.health import Health, thresholds
from panelboard.schemas.config import Config, Strategy
from panelboard.schemas.job import Hop, Route

STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT = "cost-latency"
PRICE_FLOOR = 0.01  # $/M: a free (self-hosted) model still compares on latency and load


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    hop: Hop
    price_per_m: float  # input + output, $/M tokens
    p95_ms: float | None = None  # rolling P95; None: not measured yet
    p95_threshold_ms: float = 5_000.0  # the hop's health threshold
    inflight: int = 0  # the provider pool's queued + running dispatches
    capacity: int = 1  # the provider's max_concurrency
    tokens: int = 0  # tokens in the health window
    weight: float = 1.0

    @property
    def load(self) -> float:
        return self.inflight / max(1, self.capacity)


class Scored(msgspec.Struct, frozen=True):
    candidate: Candidate
    score: float  # lower is better (simple-shuffle: the draw's position)
    why: str


def _score(strategy: str, c: Candidate) -> tuple[float, str]:
    match strategy:
        case "least-busy":
            return c.load, f"load {c.inflight}/{c.capacity}"
        case "usage-based":
            return float(c.tokens), f"{c.tokens} tokens in the window"
        case "latency-based":
            return (c.p95_ms or 0.0), f"p95 {c.p95_ms:.0f} ms" if c.p95_ms is not None else "p95 not measured yet"
        case "cost-based":
            return c.price_per_m, f"${c.price_per_m:g}/M"
        case _:  # cost-latency
            price = max(c.price_per_m, PRICE_FLOOR)
            lat = max(1.0, (c.p95_ms or 0.0) / (c.p95_threshold_ms / 2))
            load = 1.0 + c.load
            return price * lat * load, f"${c.price_per_m:g}/M x latency {lat:.2f} x load {load:.2f}"


def rank(strategy: str, candidates: list[Candidate], rng: random.Random) -> list[Scored]:
    """The candidates, best first."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy == "simple-shuffle":
        pool = list(candidates)
        out: list[Scored] = []
        while pool:  # weighted draws without replacement
            weights = [max(c.weight, 0.0) for c in pool]
            total = sum(weights)
            i = rng.choices(range(len(pool)), weights=weights)[0] if total > 0 else rng.randrange(len(pool))
            c = pool.pop(i)
            out.append(Scored(c, float(len(out)), f"drawn {len(out) + 1} (weight {c.weight:g})"))
        return out
    scored = [Scored(c, *_score(strategy, c)) for c in candidates]
    return sorted(scored, key=lambda s: s.score)  # stable: ties keep the chain's order


def tier_strategy(cfg: Config, tier: str) -> str:
    t = cfg.tiers.get(tier)
    return (t.strategy if t is not None else None) or DEFAULT


def groups(cfg: Config, route: Route) -> dict[str, list[int]]:
    """Group name -> the chain positions its members hold in this route."""
    t = cfg.tiers.get(route.tier)
    if t is None:
        return {}
    of = {lk.model: lk.group for lk in t.fallbacks if lk.group}
    out: dict[str, list[int]] = {}
    for i, hop in enumerate(route.chain):
        g = of.get(hop.model)
        if g:
            out.setdefault(g, []).append(i)
    return {g: pos for g, pos in out.items() if len(pos) > 1}


def candidate(cfg: Config, route: Route, hop: Hop, health: Health, load: Mapping[str, int]) -> Candidate:
    m = cfg.models[hop.model]
    st = health.get((hop.provider, hop.model))
    t = cfg.tiers.get(route.tier)
    weight = next((lk.weight for lk in t.fallbacks if lk.model == hop.model and lk.weight is not None), 1.0) if t else 1.0
    return Candidate(
        hop=hop, price_per_m=m.input_per_m + m.output_per_m,
        p95_ms=st.p95_ms if st is not None else None,
        p95_threshold_ms=thresholds(cfg.health, hop.provider, hop.model).p95_ms,
        inflight=load.get(hop.provider, 0), capacity=cfg.providers[hop.provider].max_concurrency,
        tokens=st.tokens if st is not None else 0, weight=weight,
    )


def choose(route: Route, cfg: Config, health: Health, load: Mapping[str, int], rng: random.Random) -> Route:
    """The route with each group of equals ordered by the tier's strategy.

    `health`: (provider, model) -> HealthState, as read from PB_HEALTH (empty is fine).
    `load`: provider -> dispatches queued or running in its pool (empty is fine)."""
    gs = groups(cfg, route)
    if not gs:
        return route
    strategy = tier_strategy(cfg, route.tier)
    chain = list(route.chain)
    for positions in gs.values():
        ranked = rank(strategy, [candidate(cfg, route, route.chain[i], health, load) for i in positions], rng)
        for i, s in zip(positions, ranked):
            chain[i] = s.candidate.hop
    return Route(tier=route.tier, chain=tuple(chain))


def check(cfg: Config) -> list[str]:
    """Config mistakes msgspec cannot see (for panelboard.config.check)."""
    out = []
    for name, t in cfg.tiers.items():
        for i, lk in enumerate(t.fallbacks):
            if lk.weight is not None and lk.weight < 0:
                out.append(f"tiers.{name}.fallbacks[{i}].weight must be >= 0")
        counts: dict[str, int] = {}
        for lk in t.fallbacks:
            if lk.group:
                counts[lk.group] = counts.get(lk.group, 0) + 1
        for g, n in counts.items():
            if n < 2:
                out.append(f"tiers.{name}: group {g!r} has one link; a group needs at least two deployments to choose between")
    return out
