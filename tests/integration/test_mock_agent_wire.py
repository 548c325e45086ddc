"""The mock provider speaks agent traffic on both wires, judged by the official SDKs: tool
calls chosen by the request, images counted and logged, JSON-schema answers, SSE streams with
a set chunk count and faults mid-stream."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.mock_server import claude, mock, oai  # noqa: F401  (pytest fixtures)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                                                             "required": ["city"]}}}
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


async def test_openai_wire_calls_the_named_tool_then_answers_from_its_result(oai):
    msgs: list = [{"role": "user", "content": "Paris"}]
    first = await oai.chat.completions.create(model="m", messages=msgs, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 5}
    msgs += [first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    final = await oai.chat.completions.create(model="m", messages=msgs, tools=[WEATHER])
    assert final.choices[0].finish_reason == "stop" and "sunny, 21C" in final.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="no earlier assistant message called"):
        await oai.chat.completions.create(model="m", messages=[*msgs[:1], {"role": "tool", "tool_call_id": "nope", "content": "x"}])


async def test_anthropic_wire_calls_the_named_tool_then_answers_from_its_result(claude):
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    msgs: list = [{"role": "user", "content": "Paris"}]
    first = await claude.messages.create(model="c", max_tokens=100, messages=msgs, tools=[tool])
    use = next(b for b in first.content if b.type == "tool_use")
    assert first.stop_reason == "tool_use" and use.input == {"city": "Paris", "days": 5}
    msgs += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]}]
    final = await claude.messages.create(model="c", max_tokens=100, messages=msgs, tools=[tool])
    assert final.stop_reason == "end_turn" and "sunny, 21C" in final.content[0].text


async def test_images_are_counted_and_logged_on_both_wires(oai, claude, mock):
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]
    plain = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "what is this?"}])
    seen = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + 85
    media, data = PNG[5:].split(";base64,")
    await claude.messages.create(model="c", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}]}])
    assert [e.images for e in mock.log()] == [[], [PNG], [PNG]]


async def test_json_schema_answers_validate(oai):
    schema = {"type": "object", "properties": {"total": {"type": "number"}, "currency": {"enum": ["USD", "EUR"]}}, "required": ["total", "currency"]}
    r = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "total?"}],
                                          response_format={"type": "json_schema", "json_schema": {"name": "total", "schema": schema}})
    assert json.loads(r.choices[0].message.content) == {"total": 3.0, "currency": "USD"}


async def test_openai_stream_has_the_set_chunk_count_and_assembles_to_the_answer(oai, mock):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    whole = await oai.chat.completions.create(model="m", messages=msgs)
    mock.control("novita", stream_chunks=5)
    chunks = [c async for c in await oai.chat.completions.create(model="m", messages=msgs, stream=True, stream_options={"include_usage": True})]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 5 and "".join(texts) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


async def test_anthropic_stream_assembles_to_the_answer(claude):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    whole = await claude.messages.create(model="c", max_tokens=300, messages=msgs)
    async with claude.messages.stream(model="c", max_tokens=300, messages=msgs) as s:
        final = await s.get_final_message()
    assert final.content[0].text == whole.content[0].text and final.usage.output_tokens == whole.usage.output_tokens


async def test_streams_cut_or_fail_after_the_set_number_of_events(oai, mock):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    mock.control("novita", fault="cut", after_chunks=3)
    got = []
    with pytest.raises(openai.APIError):
        async for c in await oai.chat.completions.create(model="m", messages=msgs, stream=True):
            got.append(c)
    assert len(got) == 3
    mock.control("novita", fault="sse_error")
    with pytest.raises(openai.APIError, match="sse_error"):
        async for c in await oai.chat.completions.create(model="m", messages=msgs, stream=True):
            pass
