"""Train the difficulty-aware routers on labelled prompts:
- logistic (broker/difficulty.py): hashed TF-IDF word uni/bigrams and shape features, fitted
  by full-batch Adam with an L2 penalty; the broker scores it in pure Python;
- knn (broker/knn.py): MiniLM static embeddings, k picked on validation subjects.

The label is "the strong model is needed": the cheap model got the question wrong and the
strong one right. Only the training split's subjects are ever read (cli.cmd_train).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from panelboard.broker import difficulty
from panelboard.broker import knn as knn_mod
from panelboard.broker.knn import KnnModel
from panelboard.evals import curve as cv
from panelboard.evals.mmlu import HELD_OUT_BUCKETS, Item
from panelboard.evals.replay import request_of

MIN_DF = 2  # a bucket seen in one training prompt only is noise


def label(it: Item) -> float:
    return 1.0 if it.strong_ok and not it.cheap_ok else 0.0


class Matrix:
    """Rows of sparse TF-IDF features (CSR as three numpy arrays) plus dense shape features."""

    def __init__(self, texts: Sequence[str], model_idf: dict[int, float], dim: int):
        idx: list[int] = []
        val: list[float] = []
        ptr = [0]
        for t in texts:
            vec = difficulty.tfidf(difficulty.buckets(t, dim), model_idf)
            idx.extend(vec)
            val.extend(vec.values())
            ptr.append(len(idx))
        self.indices = np.asarray(idx, dtype=np.int64)
        self.values = np.asarray(val, dtype=np.float64)
        self.rows = np.repeat(np.arange(len(texts)), np.diff(np.asarray(ptr)))
        self.shape = np.asarray([difficulty.shape(t) for t in texts], dtype=np.float64)
        self.n, self.dim = len(texts), dim

    def dot(self, w: np.ndarray, ws: np.ndarray, b: float) -> np.ndarray:
        return np.bincount(self.rows, weights=self.values * w[self.indices], minlength=self.n) + self.shape @ ws + b

    def grad(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        return (np.bincount(self.indices, weights=self.values * g[self.rows], minlength=self.dim),
                self.shape.T @ g, float(g.sum()))


def idf_of(texts: Sequence[str], dim: int) -> dict[int, float]:
    df: dict[int, int] = {}
    for t in texts:
        for b in difficulty.buckets(t, dim):
            df[b] = df.get(b, 0) + 1
    n = len(texts)
    return {b: math.log((n + 1) / (c + 1)) + 1.0 for b, c in df.items() if c >= MIN_DF}


def fit(items: Sequence[Item], *, dim: int = 1 << 18, l2: float = 1e-4, epochs: int = 300, lr: float = 0.05,
        source: str = "") -> tuple[difficulty.Model, list[str]]:
    texts = [difficulty.text_of(request_of(it.prompt)) for it in items]
    y = np.asarray([label(it) for it in items])
    idf = idf_of(texts, dim)
    X = Matrix(texts, idf, dim)
    w, ws, b = np.zeros(dim), np.zeros(X.shape.shape[1]), float(math.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6)))
    params = [w, ws, np.asarray([b])]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    loss = 0.0
    for step in range(1, epochs + 1):  # Adam, full batch
        p = 1.0 / (1.0 + np.exp(-np.clip(X.dot(params[0], params[1], float(params[2][0])), -30, 30)))
        loss = float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
        gw, gs, gb = X.grad((p - y) / X.n)
        grads = [gw + l2 * params[0], gs + l2 * params[1], np.asarray([gb])]
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
    w, ws, b = params[0], params[1], float(params[2][0])
    scores = 1.0 / (1.0 + np.exp(-X.dot(w, ws, b)))
    threshold = float(np.quantile(scores, 0.5))  # suggested operating point: half the training prompts go strong
    weights = {int(i): round(float(w[i]), 6) for i in np.nonzero(np.abs(w) > 1e-6)[0]}
    model = difficulty.Model(
        kind="logistic", dim=dim, idf={b_: round(v_, 5) for b_, v_ in idf.items()}, weights=weights,
        shape=[round(float(x), 6) for x in ws], bias=round(b, 6), trained_on=source, threshold=round(threshold, 6),
    )
    notes = [f"trained on {len(items)} prompts of {len({it.subject for it in items})} subjects; "
             f"{y.mean():.1%} need the strong model; {len(idf)} features; final log-loss {loss:.4f}",
             f"suggested threshold {threshold:.4f} (half of the training prompts at or above it)"]
    return model, notes


KS = (20, 50, 100, 200, 400)  # neighbour counts tried; picked on validation subjects inside the training split


def static_table(cache: Path) -> np.ndarray:
    """MiniLM's distilled token table, computed once (minutes on a CPU) and cached."""
    from panelboard.evals.minilm import Encoder

    f = cache / "minilm-static.npy"
    if f.exists():
        return np.load(f).astype(np.float32)
    table = Encoder().static_table()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, table.astype(np.float16))
    return table


def fit_knn(items: Sequence[Item], cache: Path, source: str = "") -> tuple[KnnModel, list[str]]:
    from panelboard.evals.minilm import load_tokenizer

    tok = load_tokenizer()
    table = static_table(cache)
    texts = [difficulty.text_of(request_of(it.prompt)) for it in items]
    ids = [tok.words(t[:knn_mod.SCAN_CHARS], knn_mod.MAX_TOKENS) for t in texts]
    df = np.zeros(len(table))
    for x in ids:
        df[list(set(x))] += 1
    idf = (np.log((len(items) + 1) / (df + 1)) + 1).astype(np.float32)
    labels = np.asarray([label(it) for it in items], dtype=np.float32)
    probe = KnnModel(table, idf, np.zeros((1, table.shape[1]), np.float32), np.zeros(1), 1, 0.5, tok.vocab)
    emb = np.stack([probe.embed(t) for t in texts])
    # k is chosen on a quarter of the training subjects (by hash), fitted on the rest: the
    # held-out split stays unseen.
    val = np.asarray([_bucket(it.subject) == 1 for it in items])
    fit_rows, val_rows = np.nonzero(~val)[0], np.nonzero(val)[0]
    val_items = [items[int(i)] for i in val_rows]
    sims = emb[val_rows] @ emb[fit_rows].T
    free = [(0.0, 1.0)] * len(val_rows)
    best, areas = KS[0], {}
    for k in KS:
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        scores = labels[fit_rows][top].mean(1)
        areas[k] = cv.area_above_random(cv.trace(val_items, [float(s) for s in scores], free))
        if areas[k] > areas[best]:
            best = k
    top = np.argpartition(-sims, best - 1, axis=1)[:, :best]
    threshold = float(np.quantile(labels[fit_rows][top].mean(1), 0.5))
    model = KnnModel(table, idf, emb, labels, best, threshold, tok.vocab, source)
    notes = [f"knn over MiniLM static embeddings: {len(items)} training prompts, {len(val_rows)} of them "
             f"({len({it.subject for it in val_items})} subjects) used to pick k",
             "validation area above random by k: " + ", ".join(f"k={k}: {a * 100:+.2f} pts" for k, a in areas.items()),
             f"k = {best}; suggested threshold {threshold:.4f} (half of the validation prompts at or above it)"]
    return model, notes


def _bucket(subject: str) -> int:
    return int(hashlib.sha256(subject.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS
