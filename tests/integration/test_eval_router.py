"""`panelboard eval router` on RouteLLM's MMLU oracle (../shared/data/routellm-mmlu): baselines
reproduced from the CSVs, the random router within binomial error, the held-out split."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from panelboard.cli import main
from panelboard.evals import curve as cv
from panelboard.evals import mmlu

ROOT = Path(__file__).resolve().parents[2]
# The data sit beside the project (../shared); a clone elsewhere on the same machine finds
# them at the workplace's shared folder, or where PANELBOARD_MMLU_DATA says.
_CANDIDATES = [ROOT.parent / "shared" / "data" / "routellm-mmlu", Path("/work/shared/data/routellm-mmlu")]
DATA = Path(os.environ.get("PANELBOARD_MMLU_DATA") or next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0]))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"RouteLLM MMLU data not at {DATA} (set PANELBOARD_MMLU_DATA)")


def run_json(capsys, *args: str) -> dict:
    assert main(["eval", "router", "--data", str(DATA), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


_ALL: dict = {}


def report_all(capsys) -> dict:
    """The whole set through the CLI once (the classifier replay takes seconds)."""
    if not _ALL:
        _ALL.update(run_json(capsys, "--split", "all"))
    return _ALL


def counted_from_csvs() -> tuple[int, int, int, int]:
    """(prompts, cheap right, strong right, either right), read with nothing but csv."""
    n = cheap = strong = either = 0
    for f in sorted(DATA.glob("mmlu_*.csv")):
        with f.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                c = row["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True"
                s = row["gpt-4-1106-preview"] == "True"
                n, cheap, strong, either = n + 1, cheap + c, strong + s, either + (c or s)
    return n, cheap, strong, either


@needs_data
def test_baselines_are_the_csvs_own_accuracies(capsys):
    n, cheap, strong, either = counted_from_csvs()
    rep = report_all(capsys)
    assert rep["prompts"] == n == 14042
    assert rep["all_cheap"]["accuracy"] == cheap / n
    assert rep["all_strong"]["accuracy"] == strong / n
    assert rep["oracle"]["accuracy"] == either / n
    assert (rep["all_cheap"]["share"], rep["all_strong"]["share"]) == (0.0, 1.0)
    assert rep["all_strong"]["cost_usd"] > rep["all_cheap"]["cost_usd"] * 10  # frontier vs cheap-fast catalog prices


@needs_data
def test_random_router_within_binomial_error_of_its_line(capsys):
    rep = report_all(capsys)
    rnd = next(c for c in rep["curves"] if c["name"].startswith("random"))
    op = rnd["operating"]
    lo, hi = rep["all_cheap"]["accuracy"], rep["all_strong"]["accuracy"]
    expected = (1 - op["share"]) * lo + op["share"] * hi
    assert abs(op["share"] - 0.5) < 4 * cv.binomial_sigma(0.5, rep["prompts"])
    assert abs(op["accuracy"] - expected) < 4 * cv.binomial_sigma(expected, rep["prompts"])
    assert abs(rnd["area_above_random"]) < 0.01  # a random curve hugs the line


@needs_data
def test_held_out_split_is_subjects_no_training_sees(capsys):
    held = run_json(capsys, "--split", "held-out")
    train = mmlu.split(mmlu.load(DATA), "train")
    assert held["subjects"] and not set(held["subjects"]) & {it.subject for it in train}
    assert held["prompts"] + len(train) == 14042


def test_bad_data_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "router", "--data", str(tmp_path)]) == 2
    assert "no mmlu_<subject>.csv files" in capsys.readouterr().err
