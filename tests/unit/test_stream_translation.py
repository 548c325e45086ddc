"""Streams, pure: SSE parsing however the bytes are cut, Anthropic events as OpenAI chunks
(judged by the openai SDK's ChatCompletionChunk), and chunks assembled to the completion."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from panelboard.loadgen.mock_sse import anthropic_events, split
from panelboard.loadgen.mock_provider import AnthropicResponse
from panelboard.schemas.chat import ChatRequest, assemble
from panelboard.workers.providers.anthropic import EventReader
from panelboard.workers.providers.sse import StreamError, events


def parse(raw: bytes, cut: int) -> list[tuple[str, bytes]]:
    async def pieces():
        for i in range(0, len(raw), cut):
            yield raw[i:i + cut]

    async def go():
        return [e async for e in events(pieces())]

    return asyncio.run(go())


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_sse_events_survive_any_cut(cut):
    raw = b"event: a\ndata: {\"x\": 1}\n\n: a comment\n\ndata: [DONE]\r\n\r\n"
    assert parse(raw, cut) == [("a", b'{"x": 1}'), ("message", b"[DONE]")]


def test_split_keeps_every_character():
    assert "".join(split("abcdefghij", 3)) == "abcdefghij" and len(split("abcdefghij", 3)) == 3 and split("ab", 5) == ["a", "b"]


def _reader_run(message: AnthropicResponse, request: ChatRequest, pieces: int = 4):
    reader = EventReader(request)
    chunks = []
    for raw in anthropic_events(message, pieces):
        [(name, data)] = parse(raw, 1000)
        chunks += [c for c, _ in reader.feed(name, data)]
    return reader, chunks


def test_anthropic_text_and_tool_use_events_become_openai_chunks():
    msg = AnthropicResponse(id="msg_1", model="claude", stop_reason="tool_use",
                            content=[{"type": "text", "text": "Let me check."},
                                     {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
                            usage={"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0})
    reader, chunks = _reader_run(msg, ChatRequest(messages=[]))
    for c in chunks:
        ChatCompletionChunk.model_validate(msgspec.to_builtins(c))
    done = ChatCompletion.model_validate(msgspec.to_builtins(assemble(chunks)))
    m = done.choices[0]
    assert reader.done and m.message.content == "Let me check." and m.finish_reason == "tool_calls"
    assert m.message.tool_calls[0].id == "toolu_1" and json.loads(m.message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.prompt_tokens_details.cached_tokens) == (25, 9, 5)


def test_anthropic_answer_tool_streams_as_json_content():
    req = msgspec.convert({"messages": [{"role": "user", "content": "x"}],
                           "response_format": {"type": "json_schema", "json_schema": {"name": "invoice", "schema": {"type": "object"}}}}, ChatRequest)
    msg = AnthropicResponse(id="msg_2", model="claude", stop_reason="tool_use",
                            content=[{"type": "tool_use", "id": "toolu_2", "name": "invoice", "input": {"total": 42}}],
                            usage={"input_tokens": 3, "output_tokens": 4})
    _, chunks = _reader_run(msg, req)
    done = assemble(chunks)
    assert json.loads(done.text) == {"total": 42} and done.choices[0].finish_reason == "stop" and not done.tool_calls


def test_an_anthropic_error_event_raises():
    reader = EventReader(ChatRequest(messages=[]))
    with pytest.raises(StreamError, match="overloaded_error"):
        reader.feed("error", b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}')
