"""RouteLLM's MMLU routing oracle (one CSV per subject: prompt, then whether the cheap and the
strong model answered it correctly), loaded as given, and a split by subject.

The split is by subject so that a router tuned on the training subjects is scored on subjects
it has never seen, not on near-duplicates of its training questions. Which subjects are held
out is fixed by a hash of the subject's name (about one in four), not chosen by looking at
the data, so nobody can tune the split itself.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Literal

import msgspec

CHEAP_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COLUMN = "gpt-4-1106-preview"
PREFIX = "mmlu_"
HELD_OUT_BUCKETS = 4  # subject held out when its hash falls in bucket 0 of 4

Split = Literal["all", "train", "held-out"]


class Item(msgspec.Struct, frozen=True):
    subject: str
    prompt: str
    cheap_ok: bool
    strong_ok: bool


class DataError(Exception):
    """The data folder is not what `eval router` reads: the message says what and where."""


def _flag(value: str, where: str) -> bool:
    if value == "True":
        return True
    if value == "False":
        return False
    raise DataError(f"{where}: expected True or False, found {value[:40]!r}")


def load(folder: str | os.PathLike[str]) -> list[Item]:
    """Every question of every mmlu_<subject>.csv in the folder, in file then row order."""
    root = Path(folder)
    files = sorted(root.glob(f"{PREFIX}*.csv"))
    if not files:
        raise DataError(f"no {PREFIX}<subject>.csv files in {root}; point --data at the routellm-mmlu folder")
    items: list[Item] = []
    for f in files:
        subject = f.stem[len(PREFIX):]
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"prompt", CHEAP_COLUMN, STRONG_COLUMN} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{f}: missing column(s) {sorted(missing)}")
            for i, row in enumerate(reader, start=2):
                where = f"{f.name} line {i}"
                items.append(Item(subject, row["prompt"], _flag(row[CHEAP_COLUMN], where), _flag(row[STRONG_COLUMN], where)))
    return items


def held_out(subject: str) -> bool:
    return int(hashlib.sha256(subject.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS == 0


def split(items: list[Item], which: Split) -> list[Item]:
    if which == "all":
        return list(items)
    want = which == "held-out"
    return [it for it in items if held_out(it.subject) == want]
