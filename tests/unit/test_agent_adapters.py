"""The chat schema through both adapters: nothing lost on the OpenAI family, a faithful
translation (or a clear refusal) on Anthropic; every answer validates as the official
openai SDK's ChatCompletion, every Anthropic request as the anthropic SDK's params."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pydantic
import pytest
from anthropic import types as at
from anthropic.types import message_create_params as mcp
from openai.types.chat import ChatCompletion

from panelboard.broker.admission import forbidden_fields, with_passthrough
from panelboard.schemas.pricing import call_cost
from panelboard.schemas.chat import ChatRequest
from panelboard.schemas.codec import decode_job, encode
from panelboard.schemas.config import Model
from panelboard.workers.providers.anthropic import encode_body, parse_response as anthropic_parse
from panelboard.workers.providers.base import Unsupported
from panelboard.workers.providers.openai import encode_request as openai_encode, parse_response as openai_parse

MODEL = Model(provider="p", model="upstream-id", input_per_m=1, output_per_m=2, max_output_tokens=1000)
PNG = "data:image/png;base64,iVBORw0KGgo="
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
AGENT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "what is this, and the weather?"},
                                     {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ],
    "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
    "stop": ["END"], "temperature": 0.5, "max_completion_tokens": 300, "user": "u-1",
}


def request(**over: Any) -> ChatRequest:
    return msgspec.convert({**AGENT, **over}, ChatRequest)


def job_bytes(req: dict[str, Any]) -> bytes:
    return json.dumps({"id": "j1", "team": "t", "request": req}).encode()


def test_openai_family_gets_every_field_as_sent_and_unmodelled_ones_too():
    sent = {**AGENT, "seed": 7, "logprobs": True, "top_logprobs": 2, "n": 2, "response_format": {"type": "json_object"},
            "logit_bias": {"50256": -100}, "reasoning_effort": "low", "service_tier": "flex", "metadata": {"k": "v"},
            "prediction": {"type": "content", "content": "x"}, "modalities": ["text"], "model": "gpt-evil"}
    job = with_passthrough(decode_job(job_bytes(sent)), job_bytes(sent))
    assert job.request.passthrough == {"prediction": sent["prediction"], "modalities": ["text"]}
    # The job survives the trip through the streams (dispatch envelope) with its passthrough.
    body = json.loads(openai_encode(decode_job(encode(job)).request, MODEL))
    assert body == {**sent, "model": "upstream-id"}  # the catalog's model id, never the job's


def test_passthrough_cannot_smuggle_an_address():
    bad = {"messages": [{"role": "user", "content": "x"}], "passthrough": {"api_base": "http://evil"}}
    assert forbidden_fields(job_bytes(bad)) == ["request.passthrough.api_base"]


def test_openai_answers_keep_tool_calls_refusal_logprobs_and_usage_details():
    raw = {"id": "c1", "object": "chat.completion", "created": 1700000000, "model": "m", "system_fingerprint": "fp_1", "service_tier": "default",
           "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": {"content": []},
                        "message": {"role": "assistant", "content": None, "refusal": None,
                                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                     "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}}
    r = openai_parse(json.dumps(raw).encode())
    back = ChatCompletion.model_validate(msgspec.to_builtins(r))
    assert back.choices[0].message.tool_calls[0].id == "call_1" and back.system_fingerprint == "fp_1"
    assert back.usage.prompt_tokens_details.cached_tokens == 4 and back.usage.completion_tokens_details.reasoning_tokens == 2
    assert (r.usage.cached_tokens, r.usage.reasoning_tokens) == (4, 2)


def _check_anthropic(body: dict[str, Any]) -> None:
    """The body as the anthropic SDK types it: top-level fields, every block, tool and choice."""
    strict = pydantic.ConfigDict(extra="forbid")
    params = mcp.MessageCreateParamsNonStreaming
    # This SDK release no longer types temperature and top_p; the Messages API takes them.
    assert set(body) <= params.__required_keys__ | params.__optional_keys__ | {"temperature", "top_p"}, set(body)
    block = pydantic.TypeAdapter(at.ContentBlockParam, config=strict)
    for m in body["messages"]:
        assert m["role"] in ("user", "assistant") and set(m) == {"role", "content"}
        for b in m["content"]:
            block.validate_python(b)
    pydantic.TypeAdapter(list[at.ToolParam], config=strict).validate_python(body.get("tools", []))
    if "tool_choice" in body:
        pydantic.TypeAdapter(list[at.ToolChoiceParam], config=strict).validate_python([body["tool_choice"]])


def test_anthropic_translation_of_a_tool_turn_with_images():
    body = encode_body(request(), MODEL)
    _check_anthropic(body)
    user, assistant, results = body["messages"]
    assert body["system"] == "Be brief." and body["max_tokens"] == 300 and body["stop_sequences"] == ["END"]
    assert user["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    assert user["content"][2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert [(b["id"], b["input"]) for b in assistant["content"]] == [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})]
    assert [(b["tool_use_id"], b["content"]) for b in results["content"]] == [("call_1", "sunny"), ("call_2", "rain")]  # one turn
    assert body["tools"] == [{"name": "get_weather", "description": "Weather of a city", "input_schema": TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert body["metadata"] == {"user_id": "u-1"}


@pytest.mark.parametrize("choice, theirs", [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})])
def test_anthropic_tool_choice(choice, theirs):
    body = encode_body(request(tool_choice=choice, parallel_tool_calls=None), MODEL)
    _check_anthropic(body)
    assert body["tool_choice"] == theirs


def test_anthropic_json_schema_rides_a_forced_tool_and_comes_back_as_content():
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    req = msgspec.convert({"messages": [{"role": "user", "content": "total?"}],
                           "response_format": {"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema}}}, ChatRequest)
    body = encode_body(req, MODEL)
    _check_anthropic(body)
    assert body["tools"][0]["input_schema"] == schema and body["tool_choice"] == {"type": "tool", "name": "invoice"}
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "c", "stop_reason": "tool_use",
              "content": [{"type": "tool_use", "id": "toolu_1", "name": "invoice", "input": {"total": 42}}],
              "usage": {"input_tokens": 5, "output_tokens": 7}}
    r = anthropic_parse(json.dumps(answer).encode(), req)
    back = ChatCompletion.model_validate(msgspec.to_builtins(r))
    assert json.loads(back.choices[0].message.content) == {"total": 42} and back.choices[0].finish_reason == "stop"
    assert back.choices[0].message.tool_calls is None


def test_anthropic_answers_validate_with_tool_calls_cache_tokens_role_and_created():
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "c", "stop_reason": "tool_use",
              "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}],
              "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}
    r = anthropic_parse(json.dumps(answer).encode(), request())
    back = ChatCompletion.model_validate(msgspec.to_builtins(r))
    msg = back.choices[0].message
    assert msg.role == "assistant" and back.created > 1_700_000_000 and back.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls[0].id == "toolu_9" and json.loads(msg.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert (back.usage.prompt_tokens, back.usage.prompt_tokens_details.cached_tokens) == (125, 100)
    assert (r.usage.cached_tokens, r.usage.cache_write_tokens) == (100, 20)


@pytest.mark.parametrize("field, value", [("n", 2), ("logprobs", True), ("seed", 3), ("logit_bias", {"1": 2.0}),
                                          ("presence_penalty", 0.5), ("reasoning_effort", "extreme"), ("temperature", 1.5)])
def test_what_anthropic_cannot_express_is_refused_by_name(field, value):
    with pytest.raises(Unsupported, match=field) as e:
        encode_body(request(**{field: value}), MODEL)
    assert e.value.hint


def test_anthropic_refuses_passthrough_fields_and_audio():
    with pytest.raises(Unsupported, match="prediction"):
        encode_body(msgspec.structs.replace(request(), passthrough={"prediction": {}}), MODEL)
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]
    with pytest.raises(Unsupported, match="input_audio"):
        encode_body(request(messages=audio), MODEL)


def test_cached_and_cache_written_tokens_are_priced_apart():
    m = msgspec.structs.replace(MODEL, input_per_m=10, cached_input_per_m=1, cache_write_per_m=12.5)
    assert call_cost(m, 1_000_000, 0, cached_tokens=600_000, cache_write_tokens=100_000) == pytest.approx(3 + 0.6 + 1.25)
    assert call_cost(MODEL, 1_000_000, 1_000_000, cached_tokens=500_000) == pytest.approx(3)  # no cached price: input price


def test_a_family_builds_its_url_per_request():
    """The seam a new family fits: its URL (model in the path, api-version in the query) and
    auth headers come from its own module; this Azure-shaped one is the whole of it."""
    from panelboard.schemas.config import Provider
    from panelboard.workers.providers.openai import OpenAIAdapter

    class AzureLike(OpenAIAdapter):
        family = "azure"

        def auth(self, api_key: str) -> dict[str, str]:
            return {"api-key": api_key}

        def endpoint(self, model: Model, kind: str) -> str:
            return f"{self.base}/openai/deployments/{model.model}/chat/completions?api-version=2024-10-21"

    a = AzureLike(Provider(api="openai", base_url="https://x.example/"), "secret", transport=object())  # type: ignore[arg-type]
    assert str(a.url(MODEL)) == "https://x.example/openai/deployments/upstream-id/chat/completions?api-version=2024-10-21"
    assert a.headers["api-key"] == "secret" and "authorization" not in a.headers
    other = msgspec.structs.replace(MODEL, model="other-id")
    assert "/deployments/other-id/" in str(a.url(other))
