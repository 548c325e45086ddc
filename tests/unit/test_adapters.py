"""Adapters' pure halves: request encoding and response/error mapping per API family."""

from __future__ import annotations

import httpx
import msgspec

from panelboard.schemas.chat import ChatRequest, Message
from panelboard.schemas.config import Model
from panelboard.workers.outcome import ClientError, RateLimited, ServerError
from panelboard.workers.providers.anthropic import encode_request as anthropic_encode, parse_response
from panelboard.workers.providers.base import classify_error, retry_after_s
from panelboard.workers.providers.openai import encode_request as openai_encode

MODEL = Model(provider="p", model="upstream-id", input_per_m=1, output_per_m=2, max_output_tokens=1000)


def test_openai_request_uses_the_catalog_model_id():
    body = msgspec.json.decode(openai_encode(ChatRequest(messages=[Message(role="user", content="hi")], model="gpt-evil"), MODEL))
    assert body["model"] == "upstream-id" and body["messages"] == [{"role": "user", "content": "hi"}]


def test_anthropic_request_lifts_system_merges_turns_and_sets_max_tokens():
    req = ChatRequest(messages=[
        Message(role="system", content="Be brief."),
        Message(role="user", content="a"),
        Message(role="user", content="b"),
        Message(role="assistant", content="c"),
    ], stop="END")
    body = msgspec.json.decode(anthropic_encode(req, MODEL))
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    assert body["messages"][0]["content"][0]["text"] == "a\n\nb"
    assert body["max_tokens"] == 1000 and body["stop_sequences"] == ["END"]


def test_anthropic_response_maps_to_the_unified_shape():
    raw = b'{"id":"msg_1","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}],"stop_reason":"max_tokens","usage":{"input_tokens":5,"output_tokens":7}}'
    r = parse_response(raw)
    assert r.text == "hi there" and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 7, 12)


def test_error_classification():
    h = httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})
    assert retry_after_s(h) == 1.5 and retry_after_s(httpx.Headers({"retry-after": "7"})) == 7.0
    assert classify_error(429, h, b"{}", 1) == RateLimited(1, "{}", 1.5)
    assert classify_error(429, h, b'{"error":{"code":"insufficient_quota"}}', 1).hard
    assert classify_error(400, h, b"enforced_spend_limit_reached: stop", 1).hard
    assert isinstance(classify_error(529, h, b"overloaded", 1), ServerError)
    ctx = classify_error(400, h, b'{"error":{"code":"context_length_exceeded"}}', 1)
    assert isinstance(ctx, ClientError) and ctx.kind == "context_length"
    assert classify_error(422, h, b"nope", 1) == ClientError(422, 1, "nope")
