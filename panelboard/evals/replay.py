"""Replay labelled prompts through routing decisions, with no provider calls, and score them.

Each prompt becomes the Job the broker would see (one user message, no intent), so the
rule-based path is the broker's own: classifier, intent map, tier. A trained router scores the
same request with the function the broker calls. Prices come from the config's catalog: the
first hop of each tier of the pair, at an estimated token count (UTF-8 bytes / 4 in, a fixed
number out), since the oracle holds correctness only.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Sequence

import msgspec

from panelboard.broker import classify, difficulty
from panelboard.schemas import pricing
from panelboard.evals import curve as cv
from panelboard.evals.mmlu import Item
from panelboard.schemas.chat import ChatRequest, Message
from panelboard.schemas.config import Config
from panelboard.schemas.job import Job

BYTES_PER_TOKEN = 4.0


class Side(msgspec.Struct, frozen=True):
    tier: str
    model: str  # the tier's first hop
    label: str  # the oracle column it stands for


class RulePoint(msgspec.Struct, frozen=True):
    point: cv.Point
    tiers: dict[str, int]  # prompts per tier the intent map sent them to


class Report(msgspec.Struct, frozen=True, kw_only=True):
    data: str
    split: str
    prompts: int
    subjects: list[str]
    cheap: Side
    strong: Side
    output_tokens: int
    all_cheap: cv.Point
    all_strong: cv.Point
    oracle: cv.Point
    random_half: cv.Point  # the random line at 50%
    rules: RulePoint  # the broker's default decision: classifier + intent map
    curves: list[cv.Curve]  # trained model(s) and a seeded random router
    goal_margin: float
    verdicts: list[str]


def request_of(prompt: str) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=prompt)])


def costs(items: Sequence[Item], cfg: Config, cheap: str, strong: str, output_tokens: int) -> list[tuple[float, float]]:
    mc = cfg.models[cfg.tiers[cheap].fallbacks[0].model]
    ms = cfg.models[cfg.tiers[strong].fallbacks[0].model]
    out = []
    for it in items:
        tokens = int(len(it.prompt.encode()) / BYTES_PER_TOKEN) + 1
        out.append((pricing.call_cost(mc, tokens, output_tokens), pricing.call_cost(ms, tokens, output_tokens)))
    return out


def rule_tiers(items: Sequence[Item], cfg: Config) -> list[str | None]:
    """The tier the broker's default decision (classifier, intent map) gives each prompt."""
    out: list[str | None] = []
    for i, it in enumerate(items):
        job = Job(id=f"eval-{i}", request=request_of(it.prompt))
        intent, _, _ = classify.intent_for(job, cfg)
        out.append(cfg.intents.get(intent) if intent else None)
    return out


def model_scores(items: Sequence[Item], model: difficulty.Scorer) -> list[float]:
    return [model.score(request_of(it.prompt)) for it in items]


def evaluate(items: Sequence[Item], cfg: Config, *, data: str, split: str, cheap: str, strong: str,
             models: Sequence[tuple[str, difficulty.Scorer, float | None]] = (), output_tokens: int = 8,
             goal_margin: float = 0.05, seed: int = 0) -> Report:
    if not items:
        raise ValueError("no prompts to evaluate (empty split?)")
    cost = costs(items, cfg, cheap, strong, output_tokens)
    tiers = rule_tiers(items, cfg)
    pick = [t == strong for t in tiers]
    rules = RulePoint(
        cv.Point(sum(pick) / len(items), cv.accuracy(items, pick), sum(s if p else c for p, (c, s) in zip(pick, cost))),
        dict(Counter(t or "(none)" for t in tiers)),
    )
    curves = [cv.curve(name, items, model_scores(items, m), cost, th if th is not None else m.threshold, goal_margin)
              for name, m, th in models]
    rng = random.Random(seed)
    curves.append(cv.curve(f"random (seed {seed})", items, [rng.random() for _ in items], cost, 0.5, goal_margin))
    lo, hi = cv.all_cheap(items, cost), cv.all_strong(items, cost)
    rep = Report(
        data=data, split=split, prompts=len(items), subjects=sorted({it.subject for it in items}),
        cheap=Side(cheap, cfg.tiers[cheap].fallbacks[0].model, "Mixtral-8x7B-Instruct"),
        strong=Side(strong, cfg.tiers[strong].fallbacks[0].model, "GPT-4-1106-preview"),
        output_tokens=output_tokens, all_cheap=lo, all_strong=hi, oracle=cv.oracle(items, cost),
        random_half=cv.random_at(items, cost, 0.5), rules=rules, curves=curves, goal_margin=goal_margin, verdicts=[],
    )
    return msgspec.structs.replace(rep, verdicts=verdicts(rep))


def verdicts(rep: Report) -> list[str]:
    target = rep.all_strong.accuracy - rep.goal_margin
    lo, hi = rep.all_cheap.accuracy, rep.all_strong.accuracy
    out = []
    if hi > lo:  # the bar the goal sets, for the record: a random router already clears it at this share
        out.append(f"random (expected) reaches all-strong minus {rep.goal_margin * 100:g} points ({target:.1%}) at "
                   f"{max(0.0, (target - lo) / (hi - lo)):.0%} strong: a router must beat that share to add anything")
    for c in rep.curves:
        half = c.accuracy_at_half
        rnd = rep.random_half.accuracy
        reach = (f"reaches all-strong minus {rep.goal_margin * 100:g} points ({target:.1%}) at {c.share_for_goal:.0%} strong"
                 if c.share_for_goal is not None else f"never reaches all-strong minus {rep.goal_margin * 100:g} points ({target:.1%})")
        ok = c.share_for_goal is not None and c.share_for_goal <= 0.5
        out.append(f"{c.name} on {rep.split} ({rep.prompts} prompts): {half:.1%} at 50% strong vs random {rnd:.1%} "
                   f"({(half - rnd) * 100:+.1f} points); area above random {c.area_above_random * 100:+.2f} points; "
                   f"{reach}: goal (<= 50% strong) {'met' if ok else 'NOT met'}")
    return out
