"""Difficulty-aware choice within a tier pair: a job routed to the pair's cheap tier (or its
strong one) goes to the strong tier when a trained model scores the prompt as one the cheap
model is likely to get wrong. Opt-in (`router:` in the config); the rule-based intent map
stays the default. Pure, and pure Python: no numerical library in the broker's hot path.

    router: {kind: logistic, model: routers/mmlu.json, threshold: 0.5, cheap: cheap-fast, strong: frontier}

Features are hashed word unigrams and bigrams of the last user message (log term frequency
times the training set's IDF, L2-normalised) plus a few shape features; the model is a
logistic regression over them, trained by `panelboard eval train`. It is a lexical model:
see the README's evals section for why, and for what it achieves on held-out subjects.
`score()` costs ~0.1-0.3 ms of CPU per job (BENCHMARKS.md).
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from typing import Protocol

import msgspec

from panelboard.schemas.chat import ChatRequest
from panelboard.schemas.config import RouterSettings

SCAN_CHARS = 4_000  # what is read of a long prompt
_WORD = re.compile(r"[a-z0-9]+")
SHAPE = ("len", "lines", "digits", "math", "statement", "scenario")
_MATH = re.compile(r"[=+^*/<>]|\\frac|\bsqrt\b")


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """A trained router, as `panelboard eval train` writes it (JSON)."""

    kind: str  # "logistic"
    dim: int  # hash buckets
    idf: dict[int, float]  # bucket -> IDF; buckets absent from training have idf 0 (ignored)
    weights: dict[int, float]  # bucket -> weight (non-zero only)
    shape: list[float]  # weights of SHAPE features, in order
    bias: float
    label: str = "strong-wins"  # what it predicts: the strong model right where the cheap one was wrong
    trained_on: str = ""  # data folder and split, for the record
    threshold: float = 0.5  # the training run's suggested operating point


def text_of(request: ChatRequest) -> str:
    users = [m.text() for m in request.messages if m.role == "user"]
    return (users[-1] if users else "")[:SCAN_CHARS]


def buckets(text: str, dim: int) -> dict[int, int]:
    """Hashed unigram and bigram counts. crc32 is stable across processes (hash() is salted)."""
    words = _WORD.findall(text.lower())
    out: dict[int, int] = {}
    prev = ""
    for w in words:
        for tok in (w, prev + " " + w) if prev else (w,):
            b = zlib.crc32(tok.encode()) % dim
            out[b] = out.get(b, 0) + 1
        prev = w
    return out


def shape(text: str) -> list[float]:
    n = max(len(text), 1)
    return [
        math.log1p(len(text)) / 8.0,
        math.log1p(text.count("\n")) / 4.0,
        sum(c.isdigit() for c in text) / n * 10.0,
        len(_MATH.findall(text)) / n * 10.0,
        1.0 if "Statement 1" in text else 0.0,
        1.0 if "Scenario 1" in text else 0.0,
    ]


def tfidf(counts: dict[int, int], idf: dict[int, float]) -> dict[int, float]:
    vec = {b: (1.0 + math.log(c)) * idf[b] for b, c in counts.items() if b in idf}
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {b: v / norm for b, v in vec.items()}


def score_text(model: Model, text: str) -> float:
    """P(the strong model is needed), 0..1."""
    vec = tfidf(buckets(text, model.dim), model.idf)
    z = model.bias + sum(v * model.weights.get(b, 0.0) for b, v in vec.items())
    z += sum(w * x for w, x in zip(model.shape, shape(text)))
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def score(model: Model, request: ChatRequest) -> float:
    return score_text(model, text_of(request))


class Scorer(Protocol):
    """A trained router: this Model (logistic, pure Python) or broker/knn.KnnModel (numpy)."""

    threshold: float

    def score(self, request: ChatRequest) -> float: ...


class Logistic:
    def __init__(self, model: Model):
        self.model, self.threshold = model, model.threshold

    def score(self, request: ChatRequest) -> float:
        return score(self.model, request)


def choose_tier(tier: str, request: ChatRequest, settings: RouterSettings, scorer: Scorer) -> tuple[str, float | None]:
    """(tier, score): a job of the pair's tiers goes to the strong one when its score is at or
    above the threshold, else to the cheap one; other tiers are left alone (score None)."""
    if tier not in (settings.cheap, settings.strong):
        return tier, None
    s = scorer.score(request)
    threshold = settings.threshold if settings.threshold is not None else scorer.threshold
    return (settings.strong if s >= threshold else settings.cheap), s


class ModelError(Exception):
    pass


def load(path: str | Path, kind: str = "logistic") -> Scorer:
    """A trained router file: JSON for `logistic`, .npz for `knn` (which needs numpy)."""
    try:
        if kind == "knn":
            from panelboard.broker import knn  # numpy, only where a knn router is configured

            return knn.load(path)
        return Logistic(msgspec.json.decode(Path(path).read_bytes(), type=Model))
    except ImportError as e:
        raise ModelError(f"the knn router needs numpy ({e}): pip install 'panelboard[evals]'") from None
    except OSError as e:
        raise ModelError(f"cannot read the router model {path}: {e.strerror or e}; train one with `panelboard eval train`") from None
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, KeyError) as e:
        raise ModelError(f"{path} is not a {kind} router model ({e}); train one with `panelboard eval train --kind {kind}`") from None


def kind_of(path: str | Path) -> str:
    return "knn" if str(path).endswith(".npz") else "logistic"
