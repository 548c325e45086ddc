"""The ingress's pure pieces: what `model` and the x-pb-* headers choose, Anthropic <-> OpenAI
translation (tools, images, tool results), and the error each job failure becomes."""

from __future__ import annotations

import json

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from panelboard.config import load
from panelboard.ingress import anthropic_shape, choose, openai_shape
from panelboard.ingress.errors import HttpError, for_job_error
from panelboard.schemas import errors as e
from tests.conftest import ROOT

CFG = load(ROOT / "examples" / "mock.yaml")


@pytest.mark.parametrize("model,intent,pinned", [
    (None, None, None), ("panelboard/auto", None, None), ("extraction", "extraction", None),
    ("panelboard/extraction", "extraction", None), ("frontier", "reasoning", None),
    ("novita/llama-3.3-70b", "extraction", "novita/llama-3.3-70b"),
])
def test_model_chooses_intent_or_pin(model, intent, pinned):
    assert choose.choose(CFG, model, None) == choose.Choice(intent, pinned)


def test_unknown_models_and_bad_headers_are_refused_with_what_to_send():
    err = choose.choose(CFG, "gpt-4o", None)
    assert isinstance(err, HttpError) and err.status == 404 and "panelboard/auto" in err.message
    for headers in ({"x-pb-job-id": "a.b"}, {"x-pb-priority": "now"}, {"x-pb-deadline": "-3"}, {"x-pb-intent": "nope"}):
        got = choose.options(CFG, "extraction", headers)
        assert isinstance(got, HttpError) and got.status == 400 and next(iter(headers)) in got.message
    ok = choose.options(CFG, "extraction", {"x-pb-job-id": "j-1", "x-pb-priority": "batch", "x-pb-deadline": "30", "x-pb-feature": "f"})
    assert isinstance(ok, choose.Options) and (ok.job_id, ok.priority, ok.deadline_s, ok.feature) == ("j-1", "batch", 30.0, "f")


def test_anthropic_request_with_tools_images_and_tool_results_becomes_a_chat_request():
    req = anthropic_shape.chat_request({
        "model": "x", "max_tokens": 50, "system": "sys", "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"}]},
        ]})
    assert req["messages"][0] == {"role": "system", "content": "sys"}
    assert req["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}
    call = req["messages"][2]["tool_calls"][0]
    assert call["id"] == "tu_1" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert req["messages"][3] == {"role": "tool", "tool_call_id": "tu_1", "content": "sunny"}
    assert req["tools"][0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert req["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (req["stop"], req["user"], req["max_tokens"]) == (["END"], "u1", 50)
    with pytest.raises(anthropic_shape.Untranslatable, match="max_tokens"):
        anthropic_shape.chat_request({"messages": [{"role": "user", "content": "x"}]})


COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "m",
              "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "let me look",
                           "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


def test_a_completion_with_tool_calls_is_an_anthropic_message_with_tool_use():
    ChatCompletion.model_validate(COMPLETION)
    m = Message.model_validate(anthropic_shape.message(COMPLETION, "frontier"))
    assert m.stop_reason == "tool_use" and m.content[0].text == "let me look"
    assert m.content[1].type == "tool_use" and m.content[1].input == {"city": "Oslo"} and m.content[1].id == "call_1"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (3, 4)


def test_chunks_become_anthropic_stream_events_tool_deltas_included():
    chunks = openai_shape.chunks_of(COMPLETION, include_usage=True)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    tr = anthropic_shape.StreamTranslator("frontier")
    events = [ev for c in chunks for ev in tr.feed(c)] + tr.end()
    adapter = TypeAdapter(RawMessageStreamEvent)
    for _, data in events:
        adapter.validate_python(data)
    names = [n for n, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[5][1]["delta"] == {"type": "input_json_delta", "partial_json": "{\"city\": \"Oslo\"}"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use" and events[-2][1]["usage"]["output_tokens"] == 4


@pytest.mark.parametrize("err,status", [
    (e.BadKey(message="m", hint="h"), 401), (e.InvalidJob(message="m", hint="h"), 400),
    (e.OverBudget(message="m", hint="h"), 429), (e.RateLimited(message="m", hint="h", retry_after_s=2.2), 429),
    (e.PromptTooLarge(message="m", hint="h"), 413), (e.DeadlineExceeded(message="m", hint="h"), 504),
    (e.ChainExhausted(message="m", hint="h"), 502), (e.ProviderError(message="m", hint="h", status=422), 422),
    (e.ProviderError(message="m", hint="h", status=503), 502),
])
def test_each_job_error_has_its_status(err, status):
    got = for_job_error(err, "openai")
    assert got.status == status and "hint: h" in got.message
    if isinstance(err, e.RateLimited):
        assert got.headers["retry-after"] == "3" and "x-should-retry" not in got.headers
    elif status >= 500 or isinstance(err, e.OverBudget):
        assert got.headers["x-should-retry"] == "false"


def test_a_catalog_model_in_the_request_pins_the_route_to_it_alone():
    from panelboard.broker.routing import resolve
    from panelboard.schemas.chat import ChatRequest, Message
    from panelboard.schemas.job import Job

    def job(model):
        return Job(id="j", intent="extraction", request=ChatRequest(messages=[Message(role="user", content="x")], model=model))

    pinned = resolve(job("deepinfra/llama-3.3-70b"), CFG)
    assert pinned.tier == "cheap-fast" and [h.model for h in pinned.chain] == ["deepinfra/llama-3.3-70b"]
    assert len(resolve(job("gpt-4o"), CFG).chain) == 3  # not a catalog id: the intent's whole chain
