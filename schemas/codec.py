"""Encoders and decoders, built once: msgspec reuses their state across calls."""

from __future__ import annotations

import msgspec

from panelboard.schemas.chat import ChatChunk
from panelboard.schemas.job import Attempt, AttemptDecision, CostRecord, DeadLetter, Dispatch, Job, Result

encode = msgspec.json.Encoder().encode

decode_job = msgspec.json.Decoder(Job).decode
decode_dispatch = msgspec.json.Decoder(Dispatch).decode
decode_result = msgspec.json.Decoder(Result).decode
decode_cost = msgspec.json.Decoder(CostRecord).decode
decode_dead = msgspec.json.Decoder(DeadLetter).decode
decode_attempt = msgspec.json.Decoder(Attempt).decode
decode_chunk = msgspec.json.Decoder(ChatChunk).decode


# Heads: only the field a reader needs is built into an object; msgspec skips the rest of the
# message unbuilt (settlement reads every result and attempt, and needs one field of each).
class _CompletedHead(msgspec.Struct, tag="completed"):
    pass


class _FailedHead(msgspec.Struct, tag="failed"):
    pass


class _AttemptHead(msgspec.Struct):
    decision: AttemptDecision | None = None


_decode_result_head = msgspec.json.Decoder(_CompletedHead | _FailedHead).decode
_decode_attempt_head = msgspec.json.Decoder(_AttemptHead).decode


def result_failed(data: bytes) -> bool:
    """Whether an encoded Result is a Failed one."""
    return isinstance(_decode_result_head(data), _FailedHead)


def attempt_decision(data: bytes) -> AttemptDecision | None:
    """What the worker did after an encoded Attempt."""
    return _decode_attempt_head(data).decision
