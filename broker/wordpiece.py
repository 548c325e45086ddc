"""BERT's uncased WordPiece tokenizer (lower-case, accents stripped, punctuation split, greedy
longest-match sub-words), in pure Python: what the MiniLM-based router needs per job, with
the vocabulary it was trained with (stored in the router file, so no model package is needed
where the broker runs)."""

from __future__ import annotations

import re
import unicodedata

MAX_WORD = 100
_PUNCT = re.compile(r"(\W)", re.UNICODE)


def basic_split(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn" and (c.isprintable() or c.isspace()))
    out: list[str] = []
    for word in text.split():
        out.extend(p for p in _PUNCT.split(word) if p)
    return out


class Tokenizer:
    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab
        self.unk, self.cls, self.sep = vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"]

    def wordpieces(self, word: str) -> list[int]:
        if len(word) > MAX_WORD:
            return [self.unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def words(self, text: str, most: int) -> list[int]:
        """Sub-word ids of the text, no [CLS]/[SEP], at most `most`."""
        out: list[int] = []
        for w in basic_split(text):
            out.extend(self.wordpieces(w))
            if len(out) >= most:
                break
        return out[:most]

    def ids(self, text: str, max_len: int) -> list[int]:
        return [self.cls, *self.words(text, max_len - 2), self.sep]
