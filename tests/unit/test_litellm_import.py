"""`panelboard config import-litellm`: LiteLLM proxy configs into panelboard configs that load."""

from __future__ import annotations

import random

import pytest

from panelboard.broker.routing import tier_route
from panelboard.broker.strategies import choose
from panelboard.config import parse
from panelboard.litellm_import import ImportError_, convert, model_key

# The article's layer-1 config, as printed (its intent map is a comment block).
ARTICLE = """\
# litellm-style router config
model_list:
  - model_name: cheap-fast
    litellm_params:
      model: openai/llama-3.3-70b
      api_base: https://api.novita.ai/v3/openai
  - model_name: workhorse
    litellm_params:
      model: fireworks_ai/deepseek-v4-pro
  - model_name: frontier
    litellm_params:
      model: anthropic/claude-fable-5

router_settings:
  routing_strategy: usage-based-routing-v2

# app-level intent map
# extraction, formatting, classification -> cheap-fast
# summarization, drafting, RAG synthesis -> workhorse
# multi-step reasoning, agent planning  -> frontier
"""

# The article's layer-3 chain as a LiteLLM user writes it: two equal deployments, a backstop
# group reached through fallbacks, a context-window fallback, keys from the environment.
WITH_FALLBACKS = """\
model_list:
  - model_name: llama-70b
    litellm_params:
      model: openai/meta-llama/llama-3.3-70b-instruct
      api_base: https://api.novita.ai/v3/openai
      api_key: os.environ/NOVITA_KEY
      timeout: 3
      weight: 3
  - model_name: llama-70b
    litellm_params:
      model: deepinfra/meta-llama/Llama-3.3-70B-Instruct
      api_key: os.environ/DEEPINFRA_API_KEY
      timeout: 3
      weight: 1
  - model_name: llama-70b-backstop
    litellm_params:
      model: fireworks_ai/accounts/fireworks/models/llama-v3p3-70b-instruct
      api_key: os.environ/FIREWORKS_API_KEY
      max_parallel_requests: 40
  - model_name: big-context
    litellm_params:
      model: gpt-5.5
      api_key: sk-this-must-not-be-copied
  - model_name: local
    litellm_params:
      model: ollama/qwen3
      api_base: http://127.0.0.1:11434
      input_cost_per_token: 0.0000001
      output_cost_per_token: 0.0000002
router_settings:
  routing_strategy: latency-based-routing
  num_retries: 3
  timeout: 30
  fallbacks: [{"llama-70b": ["llama-70b-backstop"]}]
litellm_settings:
  context_window_fallbacks: [{"llama-70b": ["big-context"]}]
"""


def test_the_articles_config_converts_and_loads():
    conv = convert(ARTICLE, "article.yaml")
    cfg = parse(conv.yaml)
    assert conv.warnings == []
    assert cfg.providers["novita"].base_url == "https://api.novita.ai/v3/openai"
    assert cfg.providers["novita"].api_key == "env:NOVITA_API_KEY"
    assert cfg.providers["fireworks"].api == "openai" and cfg.providers["anthropic"].api == "anthropic"
    assert cfg.models["fireworks/deepseek-v4-pro"].model == "accounts/fireworks/models/deepseek-v4-pro"
    # prices from the built-in table: the article's figures
    m = cfg.models["anthropic/claude-fable-5"]
    assert (m.input_per_m, m.output_per_m) == (10.0, 50.0)
    assert [lk.model for lk in cfg.tiers["cheap-fast"].fallbacks] == ["novita/llama-3.3-70b"]
    # the app-level intent map, line for line, plus each model_name as an intent
    assert cfg.intents == {
        "cheap-fast": "cheap-fast", "workhorse": "workhorse", "frontier": "frontier",
        "extraction": "cheap-fast", "formatting": "cheap-fast", "classification": "cheap-fast",
        "summarization": "workhorse", "drafting": "workhorse", "rag-synthesis": "workhorse",
        "multi-step-reasoning": "frontier", "agent-planning": "frontier",
    }
    assert "usage-based-routing-v2 -> strategy: usage-based" in conv.yaml


def test_fallbacks_become_chains_and_deployments_become_groups():
    conv = convert(WITH_FALLBACKS, "litellm.yaml")
    cfg = parse(conv.yaml)
    t = cfg.tiers["llama-70b"]
    assert [(lk.model, lk.group, lk.weight) for lk in t.fallbacks] == [
        ("novita/llama-3.3-70b", "llama-70b", 3.0),
        ("deepinfra/llama-3.3-70b", "llama-70b", 1.0),
        ("fireworks/llama-3.3-70b", None, None),  # fallbacks: the backstop group
        ("openai/gpt-5.5", None, None),  # context_window_fallbacks
    ]
    assert t.strategy == "latency-based" and t.retry_policy.max_retries == 3
    assert t.fallbacks[0].on == ["429", "5xx", "timeout>3000ms"]
    assert cfg.providers["novita"].api_key == "env:NOVITA_KEY"
    assert cfg.providers["fireworks"].max_concurrency == 40 and cfg.providers["novita"].timeout_ms == 30_000
    assert cfg.models["novita/llama-3.3-70b"].model == "meta-llama/llama-3.3-70b-instruct"
    assert cfg.models["deepinfra/llama-3.3-70b"].input_per_m == 0.23  # built-in table through the model key
    assert cfg.models["ollama/qwen3"].input_per_m == pytest.approx(0.1)  # the config's own per-token price
    assert cfg.providers["ollama"].api_key is None  # LiteLLM sent no key to it either
    # a literal key is never copied, and is reported
    assert "sk-this" not in conv.yaml and cfg.providers["openai"].api_key == "env:OPENAI_API_KEY"
    assert any("literal api_key" in w for w in conv.warnings)
    assert any("ollama" in w and "OpenAI-compatible" in w for w in conv.warnings)
    # and the chain runs: the strategy orders the two equals, the backstop stays behind them
    route = choose(tier_route(cfg, "llama-70b"), cfg, {}, {}, random.Random(0))
    assert route.chain[2].provider == "fireworks"


def test_an_unknown_price_is_a_flagged_placeholder():
    conv = convert("model_list:\n  - model_name: m\n    litellm_params: {model: groq/some-new-model}\n")
    cfg = parse(conv.yaml)
    assert cfg.models["groq/some-new-model"].input_per_m == 0.0
    assert "PRICE UNKNOWN" in conv.yaml and any("placeholder prices" in w for w in conv.warnings)


def test_not_a_litellm_config_is_refused():
    with pytest.raises(ImportError_, match="model_list"):
        convert("providers: {}\n")


@pytest.mark.parametrize("model_id, key", [
    ("meta-llama/Llama-3.3-70B-Instruct", "llama-3.3-70b"),
    ("accounts/fireworks/models/llama-v3p3-70b-instruct", "llama-3.3-70b"),
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "llama-3.3-70b"),
    ("claude-opus-4-8", "claude-opus-4.8"),
    ("deepseek-ai/DeepSeek-V4-Pro", "deepseek-v4-pro"),
])
def test_model_keys(model_id, key):
    assert model_key(model_id) == key


def test_cli_writes_a_config_that_route_explain_reads(tmp_path):
    from tests.conftest import run_cli

    src = tmp_path / "litellm.yaml"
    src.write_text(ARTICLE)
    out = tmp_path / "panelboard.yaml"
    job = tmp_path / "job.json"
    job.write_text('{"messages": [{"role": "user", "content": "Extract the invoice number from: INV-7 due 2026-01-02"}]}')
    r = run_cli("config", "import-litellm", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = run_cli("route", "explain", str(job), "--config", str(out), "--no-health")
    assert r.returncode == 0, r.stderr
    assert "intent   extraction (classified" in r.stdout and "novita/llama-3.3-70b" in r.stdout
    assert run_cli("config", "import-litellm", str(src), "-o", str(out)).returncode == 2  # no silent overwrite
