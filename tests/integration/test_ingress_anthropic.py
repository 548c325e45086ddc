"""The HTTP ingress through the official anthropic SDK: Messages, streaming events as Anthropic
sends them, over real HTTP to `panelboard serve` in front of the session's stack."""

from __future__ import annotations

import asyncio
import anthropic
import httpx
import pytest
from anthropic.types import Message


MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


@pytest.fixture(scope="module")
def ingress(stack) -> str:
    return stack.ingress_url or stack.start_ingress()


def test_messages_create_with_a_system_prompt_and_two_turns(ingress):
    with anthropic.Anthropic(base_url=ingress, api_key="x", max_retries=0) as c:
        m = c.messages.create(model="claude", max_tokens=16, system=[{"type": "text", "text": "Be brief."}],
                              messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                        {"role": "user", "content": [{"type": "text", "text": "and now?"}]}])
    assert isinstance(m, Message) and m.role == "assistant" and m.type == "message"
    assert m.content[0].text.startswith("mock reply from an/claude-test") and m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 16 and m.usage.input_tokens > 0 and m.model == "claude"


async def test_async_messages_on_an_openai_family_tier(ingress):
    async with anthropic.AsyncAnthropic(base_url=ingress, api_key="x", max_retries=0) as c:
        ms = await asyncio.gather(*(c.messages.create(model="fast", max_tokens=8, messages=MSG) for _ in range(5)))
    assert len({m.id for m in ms}) == 5 and all(m.content[0].text.startswith("mock reply from oa/small-1") for m in ms)


def test_stream_events_come_in_anthropics_order(ingress):
    with anthropic.Anthropic(base_url=ingress, api_key="x", max_retries=0) as c:
        with c.messages.stream(model="fast", max_tokens=8, messages=MSG) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
    assert text.startswith("mock reply from oa/small-1") and final.content[0].text == text
    assert final.usage.output_tokens <= 8 and final.stop_reason in ("end_turn", "max_tokens")
    r = httpx.post(ingress + "/v1/messages", json={"model": "fast", "max_tokens": 8, "messages": MSG, "stream": True})
    names = [ln[len("event: "):] for ln in r.text.splitlines() if ln.startswith("event: ")]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}


async def test_a_real_stream_arrives_as_text_deltas(ingress):
    async with anthropic.AsyncAnthropic(base_url=ingress, api_key="x", max_retries=0) as c:
        async with c.messages.stream(model="claude", max_tokens=32, messages=MSG) as s:
            deltas = [t async for t in s.text_stream]
            final = await s.get_final_message()
    assert len(deltas) > 2 and "".join(deltas) == final.content[0].text
    assert final.content[0].text.startswith("mock reply from an/claude-test") and final.usage.output_tokens == 32


def test_anthropic_errors_are_anthropics_json(ingress):
    r = httpx.post(ingress + "/v1/messages", json={"model": "fast", "messages": MSG})  # no max_tokens
    assert r.status_code == 400 and r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


def test_tools_through_the_messages_api_come_back_as_tool_use(ingress):
    tools = [{"name": "get_weather", "description": "weather of a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    with anthropic.Anthropic(base_url=ingress, api_key="x", max_retries=0) as c:
        m = c.messages.create(model="claude", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
        use = next(b for b in m.content if b.type == "tool_use")
        assert m.stop_reason == "tool_use" and use.name == "get_weather" and isinstance(use.input, dict)
        final = c.messages.create(model="claude", max_tokens=64, tools=tools, messages=[
            {"role": "user", "content": "What is the weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert final.content[0].type == "text" and final.stop_reason in ("end_turn", "max_tokens")
