"""The cost/quality curve of a router over labelled prompts, and its baselines. Pure.

A router gives each prompt a score (higher: send it to the strong model). Sending the top k
scores to the strong model and the rest to the cheap one gives one point per k: the share
sent to the strong model, the accuracy (the picked model answered correctly), and the cost at
catalog prices. Prompts with equal scores cannot be told apart, so within a run of ties the
curve is the straight line between its ends: what breaking the ties at random gives on average.

Baselines: all-cheap, all-strong, a random router at the same share (its expected accuracy,
(1-p) * cheap + p * strong, a straight line), and the oracle (the strong model only where
the cheap one was wrong and the strong one right: the best any router can do).
"""

from __future__ import annotations

import math
from typing import Sequence

import msgspec

from panelboard.evals.mmlu import Item


class Point(msgspec.Struct, frozen=True):
    share: float  # of prompts sent to the strong model
    accuracy: float
    cost_usd: float
    threshold: float | None = None


class Curve(msgspec.Struct, frozen=True):
    name: str
    points: list[Point]  # share ascending, from 0 to 1
    operating: Point | None = None  # where its configured threshold puts it
    area_above_random: float = 0.0  # accuracy points x share, integrated over share 0..1
    accuracy_at_half: float = 0.0  # at 50% sent to the strong model
    share_for_goal: float | None = None  # the least share reaching all-strong minus the goal margin


def accuracy(items: Sequence[Item], strong: Sequence[bool]) -> float:
    return sum(it.strong_ok if s else it.cheap_ok for it, s in zip(items, strong)) / len(items)


def all_cheap(items: Sequence[Item], cost: Sequence[tuple[float, float]]) -> Point:
    return Point(0.0, sum(it.cheap_ok for it in items) / len(items), sum(c for c, _ in cost))


def all_strong(items: Sequence[Item], cost: Sequence[tuple[float, float]]) -> Point:
    return Point(1.0, sum(it.strong_ok for it in items) / len(items), sum(s for _, s in cost))


def oracle(items: Sequence[Item], cost: Sequence[tuple[float, float]]) -> Point:
    pick = [it.strong_ok and not it.cheap_ok for it in items]
    return Point(sum(pick) / len(items), accuracy(items, pick), sum(s if p else c for p, (c, s) in zip(pick, cost)))


def random_at(items: Sequence[Item], cost: Sequence[tuple[float, float]], share: float) -> Point:
    """A random router's expected point at this share."""
    lo, hi = all_cheap(items, cost), all_strong(items, cost)
    return Point(share, (1 - share) * lo.accuracy + share * hi.accuracy, (1 - share) * lo.cost_usd + share * hi.cost_usd)


def trace(items: Sequence[Item], scores: Sequence[float], cost: Sequence[tuple[float, float]]) -> list[Point]:
    """The curve's corners: one point after each run of equal scores, highest scores first.
    `cost[i]` is (cheap $, strong $) for prompt i. Each point's threshold is the lowest score
    sent to the strong model there (a router sending score >= threshold reproduces it)."""
    n = len(items)
    order = sorted(range(n), key=lambda i: -scores[i])
    right = sum(it.cheap_ok for it in items)
    dollars = sum(c for c, _ in cost)
    out = [Point(0.0, right / n, dollars, None)]
    k = 0
    while k < n:
        j = k
        while j < n and scores[order[j]] == scores[order[k]]:
            i = order[j]
            right += items[i].strong_ok - items[i].cheap_ok
            dollars += cost[i][1] - cost[i][0]
            j += 1
        out.append(Point(j / n, right / n, dollars, scores[order[k]]))
        k = j
    return out


def at_share(points: Sequence[Point], share: float) -> Point:
    """The curve at this share, on the line between its corners."""
    for a, b in zip(points, points[1:]):
        if a.share <= share <= b.share:
            t = 0.0 if b.share == a.share else (share - a.share) / (b.share - a.share)
            return Point(share, a.accuracy + t * (b.accuracy - a.accuracy), a.cost_usd + t * (b.cost_usd - a.cost_usd), b.threshold)
    return points[-1]


def area_above_random(points: Sequence[Point]) -> float:
    """Integral over share of (curve - random line), trapezoids on the corners (exact for the
    piecewise-linear curve). In accuracy x share: 0.01 is one point of accuracy on average."""
    lo, hi = points[0].accuracy, points[-1].accuracy
    area = 0.0
    for a, b in zip(points, points[1:]):
        gap_a = a.accuracy - (lo + a.share * (hi - lo))
        gap_b = b.accuracy - (lo + b.share * (hi - lo))
        area += (b.share - a.share) * (gap_a + gap_b) / 2
    return area


def share_for(points: Sequence[Point], target: float) -> float | None:
    """The least share at which the curve reaches `target` accuracy."""
    for a, b in zip(points, points[1:]):
        if b.accuracy >= target:
            if a.accuracy >= target:
                return a.share
            return a.share + (target - a.accuracy) / (b.accuracy - a.accuracy) * (b.share - a.share)
    return None


def operating(items: Sequence[Item], scores: Sequence[float], cost: Sequence[tuple[float, float]], threshold: float) -> Point:
    pick = [s >= threshold for s in scores]
    return Point(sum(pick) / len(items), accuracy(items, pick), sum(s if p else c for p, (c, s) in zip(pick, cost)), threshold)


def curve(name: str, items: Sequence[Item], scores: Sequence[float], cost: Sequence[tuple[float, float]],
          threshold: float | None = None, goal_margin: float = 0.05) -> Curve:
    pts = trace(items, scores, cost)
    strong = pts[-1].accuracy
    return Curve(
        name=name, points=pts,
        operating=operating(items, scores, cost, threshold) if threshold is not None else None,
        area_above_random=area_above_random(pts),
        accuracy_at_half=at_share(pts, 0.5).accuracy,
        share_for_goal=share_for(pts, strong - goal_margin),
    )


def binomial_sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)
