"""Batch files and the batch manifest: the line formats users already have, and what a batch
keeps in NATS so that any process can report on it later.

A line of a batch file is one of

    OpenAI Batch API      {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "...", "messages": [...], "max_tokens": 64}}
    Anthropic Message     {"custom_id": "r1", "params": {"model": "...", "max_tokens": 64,
    Batches                "system": "...", "messages": [{"role": "user", "content": "..."}]}}

either may add `"intent": "..."` to override the batch's --intent for that line.

The manifest lives in the PB_BATCHES stream (one message kept per subject):

    pb.batch.<batch>.info          BatchInfo, written by the submitter (checkpoints, counts)
    pb.batch.<batch>.cancel        BatchCancel, written by `batch cancel`
    pb.batch.<batch>.tally         Tally, a cache of result counts written by `batch status`
    pb.batch.<batch>.job.<job>     JobEntry {custom_id, line}: one per job, published after
                                   the job itself, so every entry names a submitted job
    pb.batch.<batch>.done.<team>.<job>   Done {kind, subject}: written just before the job's
                                   terminal message (panelboard/bus.py), so a batch counts and
                                   reads its results without scanning the team's

Results go where every job's go, pb.results.<team>.<job> (or pb.rejects.<team>.<seq>); the
jobs keep `client: batch-<batch>` as an informational label.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from panelboard.schemas.chat import ChatRequest, ContentPart, Message

BATCHES_STREAM = "PB_BATCHES"
CLIENT_PREFIX = "batch-"
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
MAX_BATCH_ID = 100  # the client id "batch-<id>" must stay within the 128 characters of an id


def client_id(batch_id: str) -> str:
    return CLIENT_PREFIX + batch_id


def info_subject(batch_id: str) -> str:
    return f"pb.batch.{batch_id}.info"


def cancel_subject(batch_id: str) -> str:
    return f"pb.batch.{batch_id}.cancel"


def tally_subject(batch_id: str) -> str:
    return f"pb.batch.{batch_id}.tally"


def job_subject(batch_id: str, job_id: str) -> str:
    return f"pb.batch.{batch_id}.job.{job_id}"


def jobs_filter(batch_id: str) -> str:
    return f"pb.batch.{batch_id}.job.>"


def done_subject(batch_id: str, team: str, job_id: str) -> str:
    return f"pb.batch.{batch_id}.done.{team}.{job_id}"


def done_filter(batch_id: str, team: str) -> str:
    return f"pb.batch.{batch_id}.done.{team}.>"


class Done(msgspec.Struct):
    """A batch job's end: its result kind, and the subject in PB_RESULTS that holds it."""

    kind: str  # "completed", or the error kind of the Failed
    subject: str


def batch_of(jid: str, metadata: dict[str, Any]) -> str | None:
    """The batch a job belongs to: only when its id is the hash of that batch and custom_id,
    so a job cannot write itself into another batch by copying its metadata."""
    bid, cid = metadata.get("batch_id"), metadata.get("custom_id")
    if isinstance(bid, str) and isinstance(cid, str) and jid == job_id(bid, cid):
        return bid
    return None


def job_id(batch_id: str, custom_id: str) -> str:
    """The job id of a line: a hash of (batch id, custom_id), so resubmitting the same line
    is the same job (Nats-Msg-Id dedupe), and two batches never share a job id."""
    return hashlib.blake2b(f"{batch_id}\x00{custom_id}".encode(), digest_size=12).hexdigest()



# -- the line formats ---------------------------------------------------------------------


class OpenAIBody(ChatRequest):
    max_completion_tokens: int | None = None  # the newer name of max_tokens


class TextBlock(msgspec.Struct):
    type: str
    text: str | None = None


class AnthropicMessage(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]


class AnthropicParams(msgspec.Struct):
    messages: list[AnthropicMessage]
    max_tokens: int | None = None
    model: str | None = None
    system: str | list[TextBlock] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None


class Line(msgspec.Struct):
    custom_id: str
    method: str | None = None
    url: str | None = None
    body: OpenAIBody | None = None
    params: AnthropicParams | None = None
    intent: str | None = None


class LineError(ValueError):
    """A malformed line: the message says what is wrong with it."""


_decode_line = msgspec.json.Decoder(Line).decode


def _text_blocks(blocks: list[TextBlock], where: str) -> list[ContentPart]:
    for b in blocks:
        if b.type != "text" or b.text is None:
            raise LineError(f"{where}: only text content blocks are supported (got a {b.type!r} block)")
    return [ContentPart(type="text", text=b.text) for b in blocks]


def anthropic_request(p: AnthropicParams) -> ChatRequest:
    """An Anthropic Messages request as our (OpenAI-shaped) ChatRequest."""
    msgs: list[Message] = []
    if p.system is not None:
        system = p.system if isinstance(p.system, str) else "".join(b.text or "" for b in _text_blocks(p.system, "params.system"))
        msgs.append(Message(role="system", content=system))
    for i, m in enumerate(p.messages):
        content = m.content if isinstance(m.content, str) else _text_blocks(m.content, f"params.messages[{i}].content")
        msgs.append(Message(role=m.role, content=content))
    user = (p.metadata or {}).get("user_id")
    return ChatRequest(messages=msgs, model=p.model, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                       stop=p.stop_sequences, user=user if isinstance(user, str) else None)


def openai_request(b: OpenAIBody) -> ChatRequest:
    fields = {f: getattr(b, f) for f in ChatRequest.__struct_fields__}
    if fields["max_tokens"] is None and b.max_completion_tokens is not None:
        fields["max_tokens"] = b.max_completion_tokens
    return ChatRequest(**fields)


def parse_line(raw: bytes) -> tuple[str, ChatRequest, str | None]:
    """(custom_id, request, intent override) of one line, or LineError saying what is wrong."""
    try:
        line = _decode_line(raw)
    except msgspec.ValidationError as e:
        raise LineError(f"invalid batch line: {e}") from None
    except msgspec.DecodeError as e:
        raise LineError(f"not JSON: {e}") from None
    if not line.custom_id:
        raise LineError("custom_id is empty")
    if (line.body is None) == (line.params is None):
        raise LineError("a line needs either `body` (OpenAI Batch API) or `params` (Anthropic Message Batches)")
    if line.body is not None:
        if line.url is not None and line.url not in CHAT_URLS:
            raise LineError(f"url {line.url!r} is not supported: batch lines go to /v1/chat/completions")
        if line.method is not None and line.method.upper() != "POST":
            raise LineError(f"method {line.method!r} is not supported: use POST")
        req = openai_request(line.body)
    else:
        assert line.params is not None
        req = anthropic_request(line.params)
    if not req.messages:
        raise LineError("the request has no messages")
    return line.custom_id, req, line.intent


# -- the manifest -------------------------------------------------------------------------


class BatchInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Written by the submitter: at each checkpoint (every second and every few thousand
    lines) and when it ends. `through_line`: every line up to it is in the stream (or was
    malformed); `started_line`: the last line handed to a publish at that checkpoint."""

    id: str
    client: str
    input: str
    fingerprint: str  # sha256 of the file: a resubmit of the same file resumes from the checkpoint
    intent: str | None = None
    team: str = "default"
    feature: str | None = None
    created_at: float
    updated_at: float
    deadline: float | None = None
    lines: int = 0  # lines in the file
    through_line: int = 0
    started_line: int = 0
    checkpoint_lines: int = 4096  # at most this many lines are started between two checkpoints
    malformed: int = 0
    state: Literal["sending", "sent", "stopped"] = "sending"
    submitter: str = ""  # host:pid of the process sending it


class BatchCancel(msgspec.Struct, kw_only=True, omit_defaults=True):
    requested_at: float
    finished_at: float | None = None
    cancelled: int = 0  # jobs taken out of the queues and given a `cancelled` result


class Tally(msgspec.Struct, kw_only=True):
    seq: int = 0  # the results stream sequence counted up to
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    last_ts: float = 0.0  # when the last counted result was stored


class JobEntry(msgspec.Struct, kw_only=True):
    custom_id: str
    line: int
