"""Choice among equals (broker/strategies.py), from tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from panelboard.broker.health import HealthState
from panelboard.broker.strategies import STRATEGIES, Candidate, check, choose, groups, rank
from panelboard.config import parse
from panelboard.schemas.job import Hop, Route

A, B, C = (Hop(model=f"{p}/llama", provider=p) for p in ("novita", "deepinfra", "fireworks"))


def cand(hop: Hop, price: float, p95: float | None = None, inflight: int = 0, cap: int = 10, tokens: int = 0, weight: float = 1.0) -> Candidate:
    return Candidate(hop=hop, price_per_m=price, p95_ms=p95, p95_threshold_ms=4000, inflight=inflight, capacity=cap, tokens=tokens, weight=weight)


# Given three deployments of one model (prices 0.5 < 1.0 < 2.0)...
@pytest.mark.parametrize(
    "strategy, cands, first",
    [
        # cost-based: the cheapest, whatever its state
        ("cost-based", [cand(A, 0.5, p95=9000, inflight=50), cand(B, 1.0), cand(C, 2.0)], A),
        # latency-based: the lowest P95; one never measured counts as fastest (it gets tried)
        ("latency-based", [cand(A, 0.5, p95=900), cand(B, 1.0, p95=300), cand(C, 2.0, p95=600)], B),
        ("latency-based", [cand(A, 0.5, p95=900), cand(B, 1.0, p95=300), cand(C, 2.0)], C),
        # least-busy: the lowest share of its own cap in use
        ("least-busy", [cand(A, 0.5, inflight=5, cap=10), cand(B, 1.0, inflight=8, cap=100), cand(C, 2.0, inflight=3, cap=4)], B),
        # usage-based: the fewest tokens in the window
        ("usage-based", [cand(A, 0.5, tokens=9_000), cand(B, 1.0, tokens=1_000), cand(C, 2.0, tokens=5_000)], B),
        # cost-latency: the cheapest while it is fast (p95 under half the threshold) and has slots...
        ("cost-latency", [cand(A, 0.5, p95=1500), cand(B, 1.0, p95=200), cand(C, 2.0, p95=100)], A),
        # ...until its P95 (x2.5 at 5 s against 4 s) outprices a dearer one
        ("cost-latency", [cand(A, 0.5, p95=5000), cand(B, 1.0, p95=200), cand(C, 2.0, p95=100)], A if 0.5 * 2.5 < 1.0 else B),
        ("cost-latency", [cand(A, 0.5, p95=9000), cand(B, 1.0, p95=200), cand(C, 2.0, p95=100)], B),
        # ...or its queue does: load 3x its cap -> x4
        ("cost-latency", [cand(A, 0.5, inflight=30, cap=10), cand(B, 1.0, inflight=1, cap=10), cand(C, 2.0)], B),
        # ties keep the chain's order
        ("cost-based", [cand(A, 1.0), cand(B, 1.0), cand(C, 1.0)], A),
    ],
)
def test_rank_picks(strategy, cands, first):
    ranked = rank(strategy, cands, random.Random(1))
    assert ranked[0].candidate.hop == first
    assert sorted(s.candidate.hop.provider for s in ranked) == sorted(c.hop.provider for c in cands)  # a permutation
    assert all(s.why for s in ranked)


def test_simple_shuffle_follows_the_weights():
    rng = random.Random(7)
    firsts = Counter(rank("simple-shuffle", [cand(A, 1, weight=3), cand(B, 1, weight=1), cand(C, 1, weight=0)], rng)[0].candidate.hop.provider
                     for _ in range(4000))
    assert firsts["fireworks"] == 0
    assert 0.70 < firsts["novita"] / 4000 < 0.80  # 3/4


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        rank("round-robin", [cand(A, 1)], random.Random())
    assert set(STRATEGIES) == {"simple-shuffle", "least-busy", "usage-based", "latency-based", "cost-based", "cost-latency"}


CONFIG = """
providers:
  novita: {api: openai, base_url: http://x/novita, max_concurrency: 10}
  deepinfra: {api: openai, base_url: http://x/deepinfra, max_concurrency: 10}
  fireworks: {api: openai, base_url: http://x/fireworks, max_concurrency: 10}
models:
  novita/llama: {provider: novita, model: l, input_per_m: 0.13, output_per_m: 0.39}
  deepinfra/llama: {provider: deepinfra, model: l, input_per_m: 0.23, output_per_m: 0.40}
  fireworks/llama: {provider: fireworks, model: l, input_per_m: 0.9, output_per_m: 0.9}
tiers:
  cheap:
    strategy: STRATEGY
    fallbacks:
      - {model: deepinfra/llama, group: llama}
      - {model: novita/llama, group: llama}
      - {model: fireworks/llama}
intents: {x: cheap}
"""


def route(cfg) -> Route:
    from panelboard.broker.routing import tier_route

    return tier_route(cfg, "cheap")


def test_choose_orders_a_group_within_its_positions_and_keeps_the_backstop_last():
    cfg = parse(CONFIG.replace("STRATEGY", "cost-based"))
    r = route(cfg)
    assert groups(cfg, r) == {"llama": [0, 1]}
    got = choose(r, cfg, {}, {}, random.Random(0))
    assert [h.provider for h in got.chain] == ["novita", "deepinfra", "fireworks"]


def test_cost_latency_moves_off_the_cheap_deployment_as_it_slows_and_back_when_it_recovers():
    cfg = parse(CONFIG.replace("STRATEGY", "cost-latency"))
    r = route(cfg)
    slow = {("novita", "novita/llama"): HealthState(provider="novita", model="novita/llama", p95_ms=12_000, calls=50)}
    assert choose(r, cfg, {}, {}, random.Random(0)).chain[0].provider == "novita"
    assert choose(r, cfg, slow, {}, random.Random(0)).chain[0].provider == "deepinfra"
    busy = {"novita": 40}  # 4x its cap queued
    assert choose(r, cfg, {}, busy, random.Random(0)).chain[0].provider == "deepinfra"
    assert choose(r, cfg, {}, {"novita": 2}, random.Random(0)).chain[0].provider == "novita"


def test_a_tier_without_groups_is_left_alone():
    cfg = parse(CONFIG.replace("STRATEGY", "least-busy").replace(", group: llama", ""))
    r = route(cfg)
    assert choose(r, cfg, {}, {"deepinfra": 99}, random.Random(0)) == r


def test_check_flags_a_lonely_group_and_negative_weights():
    assert check(parse(CONFIG.replace("STRATEGY", "cost-based"))) == []
    bad = CONFIG.replace("STRATEGY", "cost-based").replace("{model: deepinfra/llama, group: llama}", "{model: deepinfra/llama, group: other, weight: -1}")
    from panelboard.config import ConfigError

    with pytest.raises(ConfigError) as e:  # config.check runs these at load
        parse(bad)
    problems = str(e.value)
    assert "weight must be >= 0" in problems
    assert "group 'other' has one link" in problems and "group 'llama' has one link" in problems


def test_a_strategy_name_outside_the_list_is_a_config_error_with_its_line():
    from panelboard.config import ConfigError

    with pytest.raises(ConfigError, match=r"line 12.*strategy"):
        parse(CONFIG.replace("STRATEGY", "usage-based-routing-v2"))
