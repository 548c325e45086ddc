"""A shadow call's answer, kept so it can be compared with the live answer of the same job
(`panelboard report quality`). Published by the worker on pb.shadow.<team>.<job> into
PB_SHADOW, which is bounded in age (as long as results are kept) and in size."""

from __future__ import annotations

from typing import Any

import msgspec

from panelboard.schemas.chat import ChatResponse
from panelboard.schemas.job import Dispatch

SHADOW_STREAM = "PB_SHADOW"
QUESTION_CHARS = 8_000  # of the last user message: enough for a judge, bounded for the stream
MAX_MSGS = 200_000
MAX_BYTES = 512 << 20


class ShadowAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    job_id: str
    team: str
    run: int = 0
    intent: str | None = None
    tier: str  # the shadow tier
    provider: str
    model: str
    cost_usd: float
    response: ChatResponse
    question: str = ""  # the job's last user message, cut to QUESTION_CHARS
    response_format: dict[str, Any] | None = None  # the job's, for schema conformance
    ts: float = 0.0


def subject(team: str, job_id: str) -> str:
    return f"pb.shadow.{team}.{job_id}"


def msg_id(team: str, job_id: str, run: int) -> str:
    return f"{team}.{job_id}:{run}:shadow-answer"


decode = msgspec.json.Decoder(ShadowAnswer).decode


def answer_of(d: Dispatch, response: ChatResponse, provider: str, model: str, cost_usd: float, now: float) -> ShadowAnswer:
    job = d.job
    users = [m.text() for m in job.request.messages if m.role == "user"]
    return ShadowAnswer(job_id=job.id, team=job.team, run=job.run, intent=job.intent, tier=d.route.tier, provider=provider, model=model,
                        cost_usd=cost_usd, response=response, question=(users[-1] if users else "")[:QUESTION_CHARS],
                        response_format=job.request.response_format, ts=now)
