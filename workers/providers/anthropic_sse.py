"""Anthropic's stream (message_start, content_block_start/delta/stop, message_delta,
message_stop, error) as OpenAI chat.completion.chunk objects: text deltas as content, tool_use
blocks as tool-call deltas (ids kept), the forced answer tool of response_format as content."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from panelboard.schemas.chat import ChatChunk, ChatRequest, ChunkChoice, Delta, FunctionDelta, ToolCallDelta, Usage
from panelboard.workers.providers.anthropic import _Usage, answer_tool, finish_reason, usage_of
from panelboard.workers.providers.sse import StreamError, Translator

_encode = msgspec.json.Encoder().encode


class _Event(msgspec.Struct):
    type: str
    message: dict[str, Any] | None = None
    index: int = 0
    content_block: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Event).decode


class EventReader(Translator):
    def __init__(self, request: ChatRequest):
        answer = answer_tool(request)
        self.answer = answer["name"] if answer else None
        self.id, self.model, self.created = "", "", int(time.time())
        self.raw_usage = _Usage()
        self.tools: dict[int, int] = {}  # block index -> tool-call index
        self.answer_blocks: set[int] = set()
        self.answered = False

    def _chunk(self, delta: Delta, finish: str | None = None) -> tuple[ChatChunk, bytes]:
        c = ChatChunk(id=self.id, model=self.model, created=self.created, choices=[ChunkChoice(0, delta, finish)])
        return c, _encode(c)

    def feed(self, event: str, data: bytes) -> list[tuple[ChatChunk, bytes]]:
        e = _decode(data)
        match e.type:
            case "message_start":
                m = e.message or {}
                self.id, self.model = str(m.get("id", "")), str(m.get("model", ""))
                self.raw_usage = msgspec.convert(m.get("usage") or {}, _Usage)
                self.usage = usage_of(self.raw_usage)
                return [self._chunk(Delta(role="assistant", content=""))]
            case "content_block_start":
                b = e.content_block or {}
                if b.get("type") != "tool_use":
                    return []
                if self.answer is not None and b.get("name") == self.answer:
                    self.answer_blocks.add(e.index)
                    return []
                n = self.tools[e.index] = len(self.tools)
                return [self._chunk(Delta(tool_calls=[ToolCallDelta(n, b.get("id"), "function", FunctionDelta(b.get("name"), ""))]))]
            case "content_block_delta":
                d = e.delta or {}
                if d.get("type") == "text_delta":
                    return [self._chunk(Delta(content=d.get("text", "")))]
                if d.get("type") == "input_json_delta":
                    part = d.get("partial_json", "")
                    if e.index in self.answer_blocks:
                        self.answered = True
                        return [self._chunk(Delta(content=part))] if part else []
                    return [self._chunk(Delta(tool_calls=[ToolCallDelta(self.tools.get(e.index, 0), function=FunctionDelta(arguments=part))]))]
                return []  # thinking and signature deltas are not part of the answer
            case "message_delta":
                if e.usage is not None:
                    self.raw_usage = msgspec.structs.replace(self.raw_usage, output_tokens=e.usage.output_tokens)
                    self.usage = usage_of(self.raw_usage)
                stop = (e.delta or {}).get("stop_reason")
                return [self._chunk(Delta(), finish_reason(stop, self.answered and not self.tools))] if stop else []
            case "message_stop":
                self.done = True
                assert self.usage is not None
                c = ChatChunk(id=self.id, model=self.model, created=self.created, choices=[], usage=self.usage)
                return [(c, _encode(c))]
            case "error":
                err = e.error or {}
                raise StreamError(f"{err.get('type', 'error')}: {err.get('message', '')}"[:300])
        return []  # ping


