"""The config file: the article's examples load as written; mistakes name the field and line."""

from __future__ import annotations

import json

import pytest

from panelboard.broker.routing import resolve
from panelboard.config import DEFAULT_CONFIG, EXAMPLES, ConfigError, load, parse
from panelboard.schemas.chat import ChatRequest, Message
from panelboard.schemas.errors import InvalidJob, UnknownIntent
from panelboard.schemas.job import Job, Route

ARTICLE_FALLBACKS = {
    "fallbacks": [
        {"primary": "novita/llama-3.3-70b", "on": ["429", "timeout>3000ms", "5xx"]},
        {"secondary": "deepinfra/llama-3.3-70b", "on": ["429", "timeout>3000ms", "5xx"]},
        {"tertiary": "fireworks/llama-3.3-70b", "note": "most expensive, most consistent throughput"},
    ],
    "retry_policy": {"max_retries": 2, "backoff": "exponential"},
}


def job(intent: str | None) -> Job:
    return Job(id="j1", client="c1", intent=intent, request=ChatRequest(messages=[Message(role="user", content="hi")]))


def test_shipped_examples_load():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        cfg = load(path)
        assert cfg.intents and cfg.tiers, path


def test_article_tiers_intents_and_prices():
    cfg = load(DEFAULT_CONFIG)
    assert set(cfg.tiers) == {"cheap-fast", "workhorse", "frontier"}
    assert [(cfg.intents[i]) for i in ("extraction", "summarization", "agent-planning")] == ["cheap-fast", "workhorse", "frontier"]
    fable = cfg.models["anthropic/claude-fable-5"]
    assert (fable.input_per_m, fable.output_per_m) == (10.0, 50.0)
    assert cfg.models["fireworks/llama-3.3-70b"].input_per_m == cfg.models["fireworks/llama-3.3-70b"].output_per_m == 0.90
    assert cfg.models["together/llama-3.3-70b"].input_per_m == 1.04


def test_article_fallback_json_loads_as_written_and_orders_the_chain():
    base = load(DEFAULT_CONFIG)
    text = (DEFAULT_CONFIG.read_text().split("tiers:")[0]
            + "tiers:\n  cheap-fast: " + json.dumps(ARTICLE_FALLBACKS) + "\nintents: {extraction: cheap-fast}\n")
    cfg = parse(text)
    route = resolve(job("extraction"), cfg)
    assert isinstance(route, Route)
    assert [h.provider for h in route.chain] == ["novita", "deepinfra", "fireworks"]
    assert cfg.tiers["cheap-fast"].fallbacks[0].on == ["429", "timeout>3000ms", "5xx"]
    assert cfg.tiers["cheap-fast"].retry_policy.max_retries == 2
    assert base.tiers["cheap-fast"].fallbacks == cfg.tiers["cheap-fast"].fallbacks


def test_type_errors_name_the_field_and_line():
    bad = DEFAULT_CONFIG.read_text().replace("retry_policy: {max_retries: 2, backoff: exponential}\n  workhorse", "retry_policy: {max_retries: two, backoff: exponential}\n  workhorse")
    with pytest.raises(ConfigError) as e:
        parse(bad, "cfg.yaml")
    msg = str(e.value)
    assert "max_retries" in msg and "cfg.yaml (line " in msg
    line = int(msg.split("(line ")[1].split(")")[0])
    assert "max_retries: two" in bad.splitlines()[line - 1]


def test_unknown_fields_and_dangling_names_are_errors_that_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown field `timout_ms`"):
        parse(DEFAULT_CONFIG.read_text().replace("timeout_ms: 30000}", "timout_ms: 30000}", 1))
    with pytest.raises(ConfigError, match=r"intents.extraction: unknown tier 'cheap'"):
        parse(DEFAULT_CONFIG.read_text().replace("extraction: cheap-fast", "extraction: cheap"))
    with pytest.raises(ConfigError, match="env:NAME"):
        parse(DEFAULT_CONFIG.read_text().replace("max_concurrency: 128", "api_key: sk-live-123, max_concurrency: 128"))
    with pytest.raises(ConfigError, match="trigger '4o4'"):
        parse(DEFAULT_CONFIG.read_text().replace('on: ["429", "timeout>3000ms", "5xx"]}', 'on: ["4o4"]}', 1))


def test_routing_errors_carry_hints():
    cfg = load(DEFAULT_CONFIG)
    unknown = resolve(job("astrology"), cfg)
    assert isinstance(unknown, UnknownIntent) and "extraction" in unknown.hint
    none = resolve(job(None), cfg)
    assert isinstance(none, InvalidJob) and "default_intent" in none.hint


def test_min_precision_skips_quantized_hops_and_rejects_an_empty_chain():
    base = DEFAULT_CONFIG.read_text()
    strict = parse(base.replace("    retry_policy: {max_retries: 2, backoff: exponential}\n  workhorse",
                                "    retry_policy: {max_retries: 2, backoff: exponential}\n    min_precision: bf16\n  workhorse"))
    route = resolve(job("extraction"), strict)
    # novita and deepinfra serve fp8 builds of Llama 3.3 70B: only fireworks' bf16 one is left
    assert [h.provider for h in route.chain] == ["fireworks"]
    with pytest.raises(ConfigError, match="leaves no hop"):
        parse(base.replace("{model: together/deepseek-v4-pro}\n    retry_policy", "{model: together/deepseek-v4-pro}\n    min_precision: fp32\n    retry_policy"))
