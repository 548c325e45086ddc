"""The `knn` difficulty router: a prompt's MiniLM static embedding (model2vec-style: the
IDF-weighted mean of per-token vectors distilled from all-MiniLM-L6-v2, see
panelboard/evals/minilm.py), and the share of its k nearest training prompts (cosine) on
which the strong model was needed. Needs numpy where the broker runs (`pip install
panelboard[evals]`); the file holds the vocabulary, the token table and the training set.

    router: {kind: knn, model: routers/mmlu-knn.npz, threshold: 0.3, cheap: cheap-fast, strong: frontier}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from panelboard.broker.wordpiece import Tokenizer
from panelboard.schemas.chat import ChatRequest

MAX_TOKENS = 512
SCAN_CHARS = 4_000


class KnnModel:
    def __init__(self, table: np.ndarray, idf: np.ndarray, train: np.ndarray, labels: np.ndarray, k: int, threshold: float,
                 vocab: dict[str, int], trained_on: str = ""):
        self.table, self.idf = table.astype(np.float32), idf.astype(np.float32)
        self.train, self.labels = train.astype(np.float32), labels.astype(np.float32)
        self.k, self.threshold, self.trained_on = k, threshold, trained_on
        self.vocab = vocab
        self.tokenizer = Tokenizer(vocab)

    def embed(self, text: str) -> np.ndarray:
        ids = self.tokenizer.words(text[:SCAN_CHARS], MAX_TOKENS)
        if not ids:
            return np.zeros(self.table.shape[1], dtype=np.float32)
        w = self.idf[ids]
        v = (self.table[ids] * w[:, None]).sum(0) / w.sum()
        n = float(np.linalg.norm(v))
        return v / n if n else v

    def score_text(self, text: str) -> float:
        sims = self.train @ self.embed(text)
        k = min(self.k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        return float(self.labels[top].mean())

    def score(self, request: ChatRequest) -> float:
        users = [m.text() for m in request.messages if m.role == "user"]
        return self.score_text(users[-1] if users else "")

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, table=self.table.astype(np.float16), idf=self.idf, train=self.train.astype(np.float16),
                     labels=self.labels.astype(np.uint8), k=np.int64(self.k), threshold=np.float64(self.threshold),
                     vocab=np.frombuffer(json.dumps(self.vocab).encode(), dtype=np.uint8), trained_on=np.array(self.trained_on))


def load(path: str | Path) -> KnnModel:
    with np.load(path) as z:
        return KnnModel(z["table"], z["idf"], z["train"], z["labels"], int(z["k"]), float(z["threshold"]),
                        json.loads(bytes(z["vocab"]).decode()), str(z["trained_on"]))
