"""The mock provider's streams: a finished answer cut into Server-Sent Events, on either wire.

    openai_chunks(completion, include_usage, pieces) -> [event]   chat.completion.chunk data lines
    anthropic_events(message, pieces) -> [event]                  message_start ... message_stop
    Stream(...).send(request, fault)                              writes them, `chunk_delay_ms` apart

Mid-stream faults hit after `after_chunks` events: `cut` drops the connection, `sse_error`
sends the wire's error event and ends, `stall` holds the stream for `hang_ms`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

_encode = msgspec.json.encode
Event = bytes


def split(text: str, pieces: int) -> list[str]:
    """`pieces` non-empty parts (fewer for a shorter text) whose join is the text."""
    n = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), n)
    out, at = [], 0
    for i in range(n):
        step = size + (i < extra)
        out.append(text[at:at + step])
        at += step
    return out if text else []


def _data(obj: Any) -> Event:
    return b"data: " + _encode(obj) + b"\n\n"


def _event(name: str, obj: Any) -> Event:
    return b"event: " + name.encode() + b"\n" + _data(obj)


def openai_chunks(c: Any, include_usage: bool, pieces: int) -> list[Event]:
    choice = c.choices[0]
    head = {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model, "system_fingerprint": c.system_fingerprint}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> Event:
        return _data({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in split(choice.message.content or "", pieces)]
    for i, tc in enumerate(choice.message.tool_calls or ()):
        events.append(chunk({"tool_calls": [{"index": i, "id": tc.id, "type": "function", "function": {"name": tc.function["name"], "arguments": ""}}]}))
        events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}) for part in split(tc.function["arguments"], pieces)]
    events.append(chunk({}, choice.finish_reason))
    if include_usage:
        events.append(_data({**head, "choices": [], "usage": c.usage}))
    return [*events, b"data: [DONE]\n\n"]


def anthropic_events(m: Any, pieces: int) -> list[Event]:
    usage = m.usage
    start = {"id": m.id, "type": "message", "role": "assistant", "model": m.model, "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(m.content):
        if block["type"] == "text":
            events.append(_event("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}))
            events += [_event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": part}})
                       for part in split(block["text"], pieces)]
        else:
            events.append(_event("content_block_start", {"type": "content_block_start", "index": i,
                                                         "content_block": {**block, "input": {}}}))
            events += [_event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": part}})
                       for part in split(_encode(block["input"]).decode(), pieces)]
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": m.stop_reason, "stop_sequence": None},
                                           "usage": {"output_tokens": usage["output_tokens"]}}))
    return [*events, _event("message_stop", {"type": "message_stop"})]


def error_event(api: str, message: str) -> Event:
    if api == "openai":
        return _data({"error": {"message": message, "type": "server_error", "code": None}})
    return _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": message}})


class Stream:
    def __init__(self, api: str, events: list[Event], delay_ms: float, after: int, hang_ms: float):
        self.api, self.events, self.delay_ms, self.after, self.hang_ms = api, events, delay_ms, after, hang_ms

    async def send(self, request: web.Request, fault: str | None, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache", **headers})
        await resp.prepare(request)
        for i, ev in enumerate(self.events):
            if i == self.after and fault in ("cut", "sse_error", "stall"):
                if fault == "stall":
                    await asyncio.sleep(self.hang_ms / 1000)
                elif fault == "sse_error":
                    await resp.write(error_event(self.api, f"mock fault sse_error after {i} events"))
                    break
                else:
                    assert request.transport is not None
                    request.transport.close()  # the connection drops mid-stream
                    return resp
            if i and self.delay_ms:
                await asyncio.sleep(self.delay_ms / 1000)
            await resp.write(ev)
        await resp.write_eof()
        return resp
