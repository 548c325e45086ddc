"""The LLM judge: for a shadow answer and the live one, a job through the queue to a judge
tier asks how well the shadow answer matches the live one, 0 to 10. Judge jobs carry
feature `eval`, so their cost records are reported apart (`report usage --by feature`)."""

from __future__ import annotations

import asyncio
import re
from typing import Sequence

import msgspec

from panelboard.evals.quality import Pair
from panelboard.schemas.config import Config
from panelboard.schemas.job import Completed

FEATURE = "eval"
AGREE_AT = 7  # of 10: a judged pair agrees at or above this
ANSWER_CHARS = 4_000
_SCORE = re.compile(r"\b(10|[0-9])\b")


class Judgement(msgspec.Struct, frozen=True):
    job_id: str  # the shadowed job
    score: float | None  # 0..1; None when the judge's reply held no 0-10 number or its job failed
    cost_usd: float


def prompt(pair: Pair) -> str:
    return ("You are grading whether a candidate answer matches a reference answer.\n\n"
            f"Question:\n{pair.shadow.question}\n\nReference answer:\n{pair.live_text[:ANSWER_CHARS]}\n\n"
            f"Candidate answer:\n{pair.shadow.response.text[:ANSWER_CHARS]}\n\n"
            "Reply with one integer from 0 (wrong or unrelated) to 10 (the same substance as the reference), and nothing else.")


def parse(reply: str) -> float | None:
    m = _SCORE.search(reply)
    return int(m.group(1)) / 10 if m else None


def judge_intent(cfg: Config, tier: str) -> str:
    intent = next((i for i, t in cfg.intents.items() if t == tier), None)
    if intent is None:
        raise ValueError(f"no intent maps to the judge tier {tier!r}; add one under intents")
    return intent


async def judge(client: object, cfg: Config, tier: str, pairs: Sequence[Pair], timeout_s: float = 180) -> list[Judgement]:
    """One judge job per pair, all in flight at once through the client (panelboard.clients.Client)."""
    from panelboard.clients import Client

    assert isinstance(client, Client)
    intent = judge_intent(cfg, tier)

    async def one(p: Pair) -> Judgement:
        h = await client.submit(prompt(p), intent=intent, feature=FEATURE, max_tokens=8, metadata={"eval_of": p.shadow.job_id})
        r = await h.result(timeout=timeout_s)
        if isinstance(r, Completed):
            return Judgement(p.shadow.job_id, parse(r.response.text), r.cost_usd)
        return Judgement(p.shadow.job_id, None, 0.0)

    return list(await asyncio.gather(*(one(p) for p in pairs)))
