"""The curve arithmetic of `panelboard eval router` on prompts whose answers are known."""

from __future__ import annotations

from panelboard.evals import curve as cv
from panelboard.evals.mmlu import Item


def items(*pairs: tuple[bool, bool]) -> list[Item]:
    return [Item("s", f"q{i}", c, s) for i, (c, s) in enumerate(pairs)]


FREE = [(0.0, 1.0)] * 4


def test_a_perfect_scorer_traces_the_oracle():
    its = items((True, True), (False, True), (True, False), (False, False))
    scores = [0.1, 0.9, 0.0, 0.2]  # the one the strong model alone gets right scores highest
    pts = cv.trace(its, scores, FREE)
    assert pts[1].share == 0.25 and pts[1].accuracy == cv.oracle(its, FREE).accuracy == 0.75
    assert pts[-1].accuracy == 0.5  # all-strong
    assert cv.area_above_random(pts) > 0


def test_ties_are_a_straight_line_not_a_lucky_order():
    its = items((False, True), (True, False))
    pts = cv.trace(its, [0.5, 0.5], FREE)  # indistinguishable: one segment from all-cheap to all-strong
    assert [(p.share, p.accuracy) for p in pts] == [(0.0, 0.5), (1.0, 0.5)]
    assert cv.at_share(pts, 0.5).accuracy == 0.5


def test_goal_share_is_where_the_curve_crosses_the_target():
    its = items((False, True), (False, True), (True, True), (True, True))
    c = cv.curve("x", its, [0.9, 0.8, 0.1, 0.0], FREE, goal_margin=0.25)
    assert c.share_for_goal == 0.25  # 0.75 accuracy reached after one of four prompts
