"""The knn router and the MiniLM encoder it is distilled from."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import IN_CI

from panelboard.broker import difficulty
from panelboard.broker.knn import KnnModel, load
from panelboard.broker.wordpiece import Tokenizer
from panelboard.evals.replay import request_of

VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hard": 4, "easy": 5, "quaternion": 6, "##s": 7, "cat": 8}


def test_wordpiece_splits_lowercases_and_strips_accents():
    t = Tokenizer(VOCAB)
    assert t.ids("Quaternions, HÁRD!", 16) == [2, 6, 7, 1, 4, 1, 3]  # "," and "!" are not in this vocabulary


def tiny(tmp_path) -> KnnModel:
    table = np.eye(len(VOCAB), 4, dtype=np.float32)[:, :4]
    table[4], table[5] = [1, 0, 0, 0], [0, 1, 0, 0]  # "hard" and "easy" point different ways
    train = np.asarray([[1, 0, 0, 0]] * 3 + [[0, 1, 0, 0]] * 3, dtype=np.float32)
    labels = np.asarray([1, 1, 1, 0, 0, 0])  # hard prompts needed the strong model
    m = KnnModel(table, np.ones(len(VOCAB)), train, labels, 3, 0.5, VOCAB, "test")
    m.save(tmp_path / "r.npz")
    return load(tmp_path / "r.npz")


def test_neighbours_vote_and_the_file_round_trips(tmp_path):
    m = tiny(tmp_path)
    assert m.score(request_of("hard hard")) == 1.0 and m.score(request_of("easy")) == 0.0
    assert difficulty.load(tmp_path / "r.npz", "knn").threshold == 0.5


def test_a_broken_router_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(difficulty.ModelError, match="is not a knn router model"):
        difficulty.load(tmp_path / "bad.npz", "knn")


def test_minilm_in_numpy_matches_sentence_transformers():
    minilm = pytest.importorskip("panelboard.evals.minilm")
    try:
        enc = minilm.Encoder()
    except minilm.ModelMissing as e:
        if IN_CI:  # `make install` installs the weights: in CI their absence is a failure, not a skip
            raise
        pytest.skip(str(e))
    v = enc.embed(["That is a happy person", "That is a happy dog", "That is a very happy person", "Today is a sunny day"])
    # sentence-transformers' published similarities for all-MiniLM-L6-v2
    assert np.allclose(v[0] @ v[1:].T, [0.6946, 0.9429, 0.2569], atol=2e-3)
