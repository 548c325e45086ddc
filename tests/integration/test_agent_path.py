"""Agent traffic through panelboard (client -> broker -> pool -> real HTTP mock -> result), on
an OpenAI-family provider and an Anthropic one, every answer judged by the official openai
SDK's ChatCompletion."""

from __future__ import annotations

import json

import msgspec
import pytest
from openai.types.chat import ChatCompletion

from panelboard.schemas.errors import InvalidJob
from panelboard.schemas.job import Completed, Failed

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
CAT = "https://example.com/cat.jpg"


def completion(r) -> ChatCompletion:
    assert isinstance(r, Completed), r
    return ChatCompletion.model_validate(msgspec.to_builtins(r.response))


@pytest.mark.parametrize("intent, provider", [("fast", "oa"), ("claude", "an")])
async def test_a_two_turn_tool_loop(client, mock, intent, provider):
    msgs: list = [{"role": "user", "content": "Paris"}]
    first = completion(await (await client.submit(msgs, intent=intent, tools=[WEATHER], tool_choice="auto")).result(timeout=30))
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.role == "assistant"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # The answer goes back as the SDK dumps it, then the tool's result.
    msgs += [first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    h = await client.submit(msgs, intent=intent, tools=[WEATHER])
    final = completion(await h.result(timeout=30))
    # The mock refuses a tool result that answers no call: the id made the round trip.
    assert final.choices[0].finish_reason == "stop" and "sunny, 21C" in final.choices[0].message.content
    assert final.created > 1_700_000_000
    assert [e["status"] for e in mock.log(provider) if e["request_id"] == f"{h.id}:0:0"] == [200]


@pytest.mark.parametrize("intent, provider", [("fast", "oa"), ("claude", "an")])
async def test_an_image_prompt_reaches_the_provider_intact(client, mock, intent, provider):
    parts = [{"type": "text", "text": "what are these?"}, {"type": "image_url", "image_url": {"url": PNG}},
             {"type": "image_url", "image_url": {"url": CAT}}]
    h = await client.submit([{"role": "user", "content": parts}], intent=intent)
    r = completion(await h.result(timeout=30))
    assert r.usage.prompt_tokens >= 2 * 85
    [entry] = [e for e in mock.log(provider) if e["request_id"] == f"{h.id}:0:0"]
    assert entry["images"] == [PNG, CAT]


@pytest.mark.parametrize("intent", ["fast", "claude"])
async def test_json_schema_answers_fit_the_schema(client, intent):
    schema = {"type": "object", "properties": {"total": {"type": "number"}, "currency": {"enum": ["USD", "EUR"]}}, "required": ["total", "currency"]}
    rf = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema}}
    r = completion(await (await client.submit("invoice 17: total?", intent=intent, response_format=rf)).result(timeout=30))
    assert json.loads(r.choices[0].message.content) == {"total": len("invoice 17: total?") / 2, "currency": "USD"}
    assert r.choices[0].finish_reason == "stop"


async def test_a_field_anthropic_cannot_express_fails_the_job_with_a_hint_and_no_call(client, mock):
    h = await client.submit("hi", intent="claude", seed=7)
    r = await h.result(timeout=30)
    assert isinstance(r, Failed) and isinstance(r.error, InvalidJob) and "seed" in r.error.message and "OpenAI" in r.error.hint
    assert not [e for e in mock.log("an") if e["request_id"].startswith(h.id)]
