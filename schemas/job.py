"""What travels through the streams: the job, its dispatch envelope, results and cost records."""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from panelboard.schemas.chat import ChatRequest, ChatResponse, Usage
from panelboard.schemas.embeddings import EmbeddingsRequest, EmbeddingsResponse
from panelboard.schemas.errors import JobError

# What a cost record says one provider call came to: "ok", the Outcome class of a failed call
# (workers/outcome.py), or "lost" (its worker died mid-call).
CallOutcome = Literal["ok", "RateLimited", "Timeout", "ServerError", "ClientError", "Inexpressible", "StreamBroken", "lost"]
# What the worker did after an attempt (workers/decide.py), or "lost" (it never finished).
# realtime: a provider-batch line sent on to the realtime lane; standard: a flex call refused, redone on
# the standard tier of the same hop. Decoders enforce this set: a new decision must be added here.
AttemptDecision = Literal["succeed", "retry", "forward", "fail", "lost", "realtime", "standard"]

Priority = Literal["interactive", "batch"]

# Ids become subject tokens (pb.results.<team>.<job>): no dots, spaces or wildcards.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def request_id(job_id: str, run: int, hop: int, attempt: int, shadow: bool = False) -> str:
    base = f"{job_id}:{hop}:{attempt}" if run == 0 else f"{job_id}~{run}:{hop}:{attempt}"
    return base + ":s" if shadow else base


def _no_chat() -> ChatRequest:
    return ChatRequest(messages=[])


class Job(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    request: ChatRequest = msgspec.field(default_factory=_no_chat)  # a chat job's request
    embeddings: EmbeddingsRequest | None = None  # an embeddings job's request (then no chat request)
    client: str | None = None  # informational (which process sent it); results are addressed by team and id
    intent: str | None = None
    key: str | None = None
    team: str = "default"
    feature: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: Priority = "interactive"
    deadline: float | None = None  # unix seconds; a job past it is not started
    run: int = 0  # bumped by `panelboard dead replay`, so a replay is not deduped as a duplicate
    # None: chosen from the deadline (broker/lanes.py); "batch" asks for the provider's batch
    # API where the route's first hop has one; "realtime" never waits in one.
    lane: Literal["batch", "flex", "realtime"] | None = None


class Hop(msgspec.Struct, frozen=True):
    """One link of a fallback chain: a model on a provider."""

    model: str  # catalog name, e.g. "novita/llama-3.3-70b"
    provider: str


class Route(msgspec.Struct, frozen=True):
    tier: str
    chain: tuple[Hop, ...]


class Attempt(msgspec.Struct, omit_defaults=True):
    provider: str
    model: str
    hop: int
    attempt: int
    status: int  # HTTP status; 0 when no response (timeout, connection error)
    latency_ms: float
    error: str | None = None
    decision: AttemptDecision | None = None
    run: int = 0


class Dispatch(msgspec.Struct, kw_only=True):
    """The envelope a worker pool consumes from pb.dispatch.<provider>."""

    job: Job
    route: Route
    hop: int = 0
    history: list[Attempt] = msgspec.field(default_factory=list)
    admitted_at: float = 0.0
    shadow: bool = False  # a mirrored call: billed and recorded, never answered to the client
    lane: str | None = None  # "flex": call this hop on the provider's flex tier; None: standard


class Completed(msgspec.Struct, tag="completed", kw_only=True):
    job_id: str
    response: ChatResponse
    tier: str
    provider: str
    model: str
    cost_usd: float
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    latency_ms: float = 0.0
    queue_ms: float = 0.0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)  # the job's metadata, echoed back
    # The provider's own usage when it was implausible (see workers/usage.py); response.usage
    # then holds the clamped counts that were billed.
    reported_usage: Usage | None = None
    # A streamed job: the chunks sent on pb.chunks.<team>.<job> before this result, and when
    # the first one left the worker (ms from the start of the provider call).
    chunks: int | None = None
    ttft_ms: float | None = None
    lane: str | None = None  # "batch" / "flex": answered on that lane, at its discount


class Failed(msgspec.Struct, tag="failed", kw_only=True):
    job_id: str
    error: JobError
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)  # the job's metadata, echoed back


class Embedded(msgspec.Struct, tag="embedded", kw_only=True):
    """The terminal result of an embeddings job."""

    job_id: str
    response: EmbeddingsResponse
    tier: str
    provider: str
    model: str
    cost_usd: float
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    latency_ms: float = 0.0
    queue_ms: float = 0.0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


Result = Completed | Embedded | Failed


class CostRecord(msgspec.Struct, kw_only=True):
    job_id: str
    team: str
    key_prefix: str | None
    feature: str | None
    intent: str | None
    tier: str
    provider: str
    model: str
    quantization: str | None
    hop: int
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    queue_ms: float
    outcome: CallOutcome
    ts: float
    run: int = 0
    shadow: bool = False
    reported_usage: Usage | None = None  # the provider's counts when implausible; the tokens above are clamped
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic)
    reasoning_tokens: int = 0  # of completion_tokens
    ttft_ms: float | None = None  # a streamed call: time to its first forwarded chunk
    usage_unknown: bool = False  # a stream broken before the provider reported its usage: the counts are what was known
    lane: str | None = None  # "batch": a line of a provider batch, billed at its discount; None: realtime

    @property
    def request_id(self) -> str:
        """The id the provider saw (x-pb-request-id): cost records and provider logs join on it."""
        return request_id(self.job_id, self.run, self.hop, self.attempt, self.shadow)


class DeadLetter(msgspec.Struct, kw_only=True):
    reason: str
    job: Job | None
    raw: bytes | None = None  # the undecodable payload, kept so nothing is lost
    error: JobError
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    ts: float = 0.0
    # A publish refused before it was claimed: the team of the subject it came on. Only that
    # team is authenticated; the job's own `team` field is the publisher's word.
    subject_team: str | None = None
