"""The opt-in difficulty router (`router:` in the config) on the real stack: within its tier
pair, a prompt the model scores as hard is sent to the strong tier, an easy one stays cheap;
jobs of other tiers are left alone."""

from __future__ import annotations

import msgspec
import pytest

from panelboard.broker import difficulty
from panelboard.clients import Client
from panelboard.config import ConfigError, parse
from panelboard.stack import Stack

from tests.conftest import TEST_CONFIG

DIM = 1 << 10
HARD = "quaternion"


def hand_made_model() -> difficulty.Model:
    """A model whose only signal is one word: scores ~1 with it, ~0 without."""
    (bucket,) = difficulty.buckets(HARD, DIM)
    return difficulty.Model(kind="logistic", dim=DIM, idf={bucket: 1.0}, weights={bucket: 20.0}, shape=[0.0] * len(difficulty.SHAPE),
                            bias=-10.0, threshold=0.5)


def routed_config(tmp_path) -> str:
    path = tmp_path / "router.json"
    path.write_bytes(msgspec.json.encode(hand_made_model()))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(TEST_CONFIG.read_text() + f"\nrouter: {{model: {path}, cheap: fast, strong: claude, threshold: 0.5}}\n")
    return str(cfg)


def test_the_model_scores_the_word_and_nothing_else():
    m = hand_made_model()
    assert difficulty.score_text(m, f"What is a {HARD} rotation?") > 0.99
    assert difficulty.score_text(m, "What is the capital of France?") < 0.01


def test_router_config_errors_name_the_field(tmp_path):
    base = TEST_CONFIG.read_text()
    with pytest.raises(ConfigError, match="router.strong: unknown tier 'nope'"):
        parse(base + f"\nrouter: {{model: {routed_config(tmp_path).replace('config.yaml', 'router.json')}, cheap: fast, strong: nope}}\n")
    with pytest.raises(ConfigError, match="router.model: no file"):
        parse(base + "\nrouter: {model: /nonexistent/r.json, cheap: fast, strong: claude}\n")


async def test_hard_prompts_of_the_pair_go_strong_easy_ones_stay_cheap(tmp_path):
    with Stack(tmp_path / "stack", config=routed_config(tmp_path), mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=1)
        async with Client(s.nats_url) as c:
            hard = await (await c.submit(f"Multiply the {HARD} (1, 2, 3, 4) by i.", intent="fast", max_tokens=8)).result(timeout=120)
            easy = await (await c.submit("Extract the date: due 2026-12-01", intent="fast", max_tokens=8)).result(timeout=120)
            other = await (await c.submit(f"A {HARD} question on another tier", intent="capped", max_tokens=8)).result(timeout=120)
    assert (hard.tier, hard.model) == ("claude", "an/claude")
    assert (easy.tier, easy.model) == ("fast", "oa/small")
    assert other.tier == "capped"  # outside the pair: the intent map alone decides


async def test_a_knn_router_routes_in_the_broker_too(tmp_path):
    from tests.unit.test_knn_router import tiny  # a 9-word vocabulary: "hard" prompts needed the strong tier

    tiny(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(TEST_CONFIG.read_text() + f"\nrouter: {{kind: knn, model: {tmp_path / 'r.npz'}, cheap: fast, strong: claude}}\n")
    with Stack(tmp_path / "stack", config=str(cfg), mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=1)
        async with Client(s.nats_url) as c:
            hard = await (await c.submit("hard hard", intent="fast", max_tokens=8)).result(timeout=120)
            easy = await (await c.submit("easy", intent="claude", max_tokens=8)).result(timeout=120)
    assert hard.tier == "claude" and easy.tier == "fast"  # both ways within the pair, at the model's own threshold
