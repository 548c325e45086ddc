"""Encoders and decoders, built once: msgspec reuses their state across calls."""

from __future__ import annotations

import msgspec

from panelboard.schemas.chat import ChatChunk
from panelboard.schemas.job import Attempt, CostRecord, DeadLetter, Dispatch, Job, Result

encode = msgspec.json.Encoder().encode

decode_job = msgspec.json.Decoder(Job).decode
decode_dispatch = msgspec.json.Decoder(Dispatch).decode
decode_result = msgspec.json.Decoder(Result).decode
decode_cost = msgspec.json.Decoder(CostRecord).decode
decode_dead = msgspec.json.Decoder(DeadLetter).decode
decode_attempt = msgspec.json.Decoder(Attempt).decode
decode_chunk = msgspec.json.Decoder(ChatChunk).decode
