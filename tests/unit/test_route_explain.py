"""`panelboard route explain`: the decision for one job and why (broker/explain.py)."""

from __future__ import annotations

import json

import msgspec

from panelboard.broker.explain import explain, render, route_of
from panelboard.broker.health import HealthState
from panelboard.broker.routing import resolve, routes
from panelboard.config import DEFAULT_CONFIG, load, parse
from panelboard.schemas.job import Job

CFG = load(DEFAULT_CONFIG)


def job(content: str, intent: str | None = None, **kw) -> Job:
    return msgspec.convert({"id": "j1", "client": "c", "intent": intent, "request": {"messages": [{"role": "user", "content": content}], **kw}}, Job)


def test_a_given_intent_gives_the_same_route_the_broker_resolves():
    j = job("Extract the date: due 2026-12-01", intent="extraction")
    e = explain(j, CFG)
    assert e.intent_source == "given" and e.tier == "cheap-fast" and e.classification is None
    assert route_of(e) == resolve(j, CFG, routes(CFG))
    first = e.chain[0]
    assert (first.model, first.provider, first.input_per_m, first.quantization, first.timeout_ms) == ("novita/llama-3.3-70b", "novita", 0.13, "fp8", 3000)
    assert first.triggers == ["429", "timeout>3000ms", "5xx"]
    text = render(e)
    assert "given by the job" in text and "timeout 3000 ms" in text and "$0.13/M in" in text


def test_a_job_with_no_intent_is_classified_and_the_reasons_are_shown():
    e = explain(job("Write a polite email to a client telling them the delivery will be two weeks late."), CFG)
    assert (e.intent, e.intent_source, e.tier) == ("drafting", "classified", "workhorse")
    assert e.classification is not None and e.classification.reasons
    text = render(e)
    assert "classified: drafting" in text and "asks to write" in text


def test_min_precision_exclusions_are_listed():
    cfg = msgspec.structs.replace(CFG, tiers={**CFG.tiers, "cheap-fast": msgspec.structs.replace(CFG.tiers["cheap-fast"], min_precision="bf16")})
    e = explain(job("x", intent="extraction"), cfg)
    assert [x.model for x in e.chain] == ["fireworks/llama-3.3-70b"]
    assert {x.model for x in e.excluded} == {"novita/llama-3.3-70b", "deepinfra/llama-3.3-70b"}
    assert "coarser than the tier's min_precision bf16" in render(e)


def test_degraded_hops_move_behind_healthy_ones_and_are_marked():
    bad = HealthState(provider="novita", model="novita/llama-3.3-70b", state="degraded", p95_ms=3100, error_rate=0.4, calls=80,
                      reason="p95 3100 ms > 2500 ms over 80 calls")
    e = explain(job("x", intent="extraction"), CFG, health={("novita", "novita/llama-3.3-70b"): bad})
    assert [x.provider for x in e.chain] == ["deepinfra", "fireworks", "novita"]
    assert e.chain[2].health == "degraded" and e.chain[0].health == "unknown" and e.chain[2].configured == 0
    text = render(e)
    assert "health: DEGRADED" in text and "configured #1" in text and "probe a degraded hop" in text


def test_an_unknown_intent_is_explained_as_the_rejection_it_gets():
    e = explain(job("x", intent="poetry"), CFG)
    assert e.error is not None and e.tier is None
    assert "maps to no tier" in render(e)
    off = msgspec.structs.replace(CFG, classifier="off")
    assert explain(job("hello"), off).error is not None


def test_groups_show_the_strategys_scores():
    cfg = parse(DEFAULT_CONFIG.read_text().replace("{primary: novita/llama-3.3-70b,", "{primary: novita/llama-3.3-70b, group: llama,")
                .replace("{secondary: deepinfra/llama-3.3-70b,", "{secondary: deepinfra/llama-3.3-70b, group: llama,"))
    e = explain(job("x", intent="extraction"), cfg, load={"novita": 1000})
    assert e.strategy == "cost-latency" and e.chain[0].provider == "deepinfra"  # novita is 8x over its cap
    assert all(x.choice and "cost-latency" in x.choice for x in e.chain[:2])
    assert "group llama" in render(e)


def test_cli_json_output(tmp_path):
    from tests.conftest import run_cli

    p = tmp_path / "job.json"
    p.write_text(json.dumps({"id": "a1", "client": "c", "intent": "agent-planning", "request": {"messages": [{"role": "user", "content": "plan"}]}}))
    r = run_cli("route", "explain", str(p), "--json", "--no-health")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tier"] == "frontier" and [h["model"] for h in out["chain"]][0] == "anthropic/claude-fable-5"
    p.write_text("{not json")
    assert run_cli("route", "explain", str(p), "--no-health").returncode == 2
