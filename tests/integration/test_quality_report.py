"""Shadow answers kept beside live ones: a mirrored tier whose provider answers differently on
a known share of prompts (the mock's scripted answers), and `report quality` finding that
share within binomial error."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from panelboard.clients import Client
from panelboard.evals import quality
from panelboard.schemas.chat import ChatResponse, Choice, ChoiceMessage
from panelboard.schemas.shadow import SHADOW_STREAM, ShadowAnswer
from panelboard.stack import Stack

from tests.conftest import TEST_CONFIG, run_cli

JOBS = 160
DIFFER = 0.3  # share of prompts on which the shadow tier's provider (an) answers otherwise


async def _stored(js, n: int, timeout: float = 120.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = (await js.stream_info(SHADOW_STREAM)).state.messages
        if got >= n or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_report_quality_finds_the_share_the_shadow_tier_differs_on(tmp_path):
    cfg = tmp_path / "config.yaml"  # every `mirrored` job is shadowed on the `claude` tier (provider an)
    cfg.write_text(TEST_CONFIG.read_text().replace("shadow: {tier: claude, sample: 0.1}", "shadow: {tier: claude, sample: 1.0}"))
    rng = random.Random(16)
    differs = [rng.random() < DIFFER for _ in range(JOBS)]
    with Stack(tmp_path / "stack", config=cfg, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=1)
        async with Client(s.nats_url) as c:
            handles = [await c.submit(f"Question {i}? [[mock-answer:answer {i}" + ("|differs-on:an" if d else "") + "]]",
                                      intent="mirrored", max_tokens=16) for i, d in enumerate(differs)]
            results = [await h.result(timeout=120) for h in handles]
            stored = await _stored(c.js, JOBS)
        assert all(r.response.text == f"answer {i}" for i, r in enumerate(results))  # the client sees the live answer only
        assert stored == JOBS
        js_run = await asyncio.to_thread(run_cli, "report", "quality", "--config", str(cfg), "--nats-url", s.nats_url, "--json")
        txt_run = await asyncio.to_thread(run_cli, "report", "quality", "--config", str(cfg), "--nats-url", s.nats_url,
                                          "--chart", str(tmp_path / "q.svg"))
    assert js_run.returncode == 0 and txt_run.returncode == 0, js_run.stderr + txt_run.stderr
    rep, text = json.loads(js_run.stdout), txt_run.stdout
    (row,) = rep["rows"]
    assert (row["intent"], row["live_tier"], row["shadow_tier"], row["jobs"]) == ("mirrored", "mirrored", "claude", JOBS)
    assert row["agreed"] == JOBS - sum(differs)  # every scripted disagreement found, nothing else
    found = 1 - row["agreement"]
    assert abs(found - DIFFER) < 3 * math.sqrt(DIFFER * (1 - DIFFER) / JOBS)
    assert row["cost_ratio"] > 1  # claude is dearer than oa/small
    assert "verdict: mirrored on claude agrees with mirrored on" in text and (tmp_path / "q.svg").read_text().startswith("<svg")


def _pair(live: str, shadow: str, fmt: dict | None = None) -> quality.Pair:
    resp = ChatResponse(id="r", model="m", choices=[Choice(message=ChoiceMessage(content=shadow))])
    ans = ShadowAnswer(job_id="j", team="t", intent="extraction", tier="cheap", provider="p", model="m", cost_usd=0.001,
                       response=resp, response_format=fmt)
    return quality.Pair(shadow=ans, live_tier="work", live_model="w", live_text=live, live_cost_usd=0.01)


def test_json_evaluator_checks_validity_schema_and_value():
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "object", "required": ["date"],
                                                             "properties": {"date": {"type": "string"}}}}}
    assert quality.score(_pair('{"date": "2026-12-01"}', '{ "date":"2026-12-01" }', fmt)).agree  # same value, other spacing
    bad = quality.score(_pair('{"date": "2026-12-01"}', '{"day": "2026-12-01"}', fmt))
    assert not bad.agree and bad.shadow_json_ok is False  # misses a required field
    assert quality.score(_pair('{"date": "x"}', "not json", fmt)).shadow_json_ok is False


def test_exact_and_similarity_evaluators():
    assert quality.score(_pair("Paris.", "  paris. ")).agree
    near = quality.score(_pair("the capital of France is Paris", "the capital of France is Lyon"), "similarity", 0.9)
    assert not near.agree and 0.4 < near.similarity < 0.9
    rep = quality.report([_pair("a", "a"), _pair("a", "b")], unmatched=1, days=1)
    assert rep.rows[0].agreement == 0.5 and rep.rows[0].cost_ratio == 0.1 and "1 shadow answer(s)" in rep.notes[0]


def test_embedding_evaluator_tells_a_paraphrase_from_another_answer():
    minilm = pytest.importorskip("panelboard.evals.minilm")
    try:
        enc = minilm.Encoder()
    except minilm.ModelMissing as e:
        pytest.skip(str(e))
    same = quality.score(_pair("The meeting is on Monday at 10am.", "The meeting takes place Monday at 10 am."), "embedding", 0.8, enc)
    other = quality.score(_pair("The meeting is on Monday at 10am.", "Bananas are rich in potassium."), "embedding", 0.8, enc)
    assert same.agree and not other.agree and same.similarity > other.similarity + 0.5


async def test_llm_judge_runs_as_jobs_through_the_queue_billed_as_eval(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(TEST_CONFIG.read_text().replace("shadow: {tier: claude, sample: 0.1}", "shadow: {tier: claude, sample: 1.0}"))
    jobs = 10
    with Stack(tmp_path / "stack", config=cfg, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=1)
        async with Client(s.nats_url) as c:
            # live "9", shadow "9 (no: an disagrees)": exact match says no; the judge (tier fast,
            # provider oa) reads the same scripted question and answers 9.
            handles = [await c.submit(f"Q{i} [[mock-answer:9|differs-on:an]]", intent="mirrored", max_tokens=16) for i in range(jobs)]
            for h in handles:
                await h.result(timeout=120)
            assert await _stored(c.js, jobs) == jobs
        r = await asyncio.to_thread(run_cli, "report", "quality", "--config", str(cfg), "--nats-url", s.nats_url, "--judge", "fast", "--json")
        assert r.returncode == 0, r.stderr
        (row,) = json.loads(r.stdout)["rows"]
        db_url = f"sqlite+aiosqlite:///{s.home / 'ledger.db'}"
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the ledger writes in batches
            u = await asyncio.to_thread(run_cli, "report", "usage", "--by", "feature", "--config", str(cfg), "--database-url", db_url, "--json")
            evals = [g for g in json.loads(u.stdout)["rows"] if g["key"] == "eval"] if u.returncode == 0 else []
            if (evals and evals[0]["requests"] == jobs) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
    assert row["agreed"] == 0 and row["judged"] == jobs and row["judge_mean"] == 0.9 and row["judge_agreement"] == 1.0
    assert row["judge_usd"] > 0 and evals and evals[0]["requests"] == jobs  # one judge job per pair, in the ledger as `eval`
