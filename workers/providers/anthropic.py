"""Anthropic Messages, translated to and from the unified chat-completions shape."""

from __future__ import annotations

from typing import Any

import msgspec

from panelboard.schemas.chat import ChatRequest, ChatResponse, Choice, ChoiceMessage, Usage
from panelboard.schemas.config import Model
from panelboard.workers.providers.base import Adapter

API_VERSION = "2023-06-01"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; chat-completions does not

_encode = msgspec.json.Encoder().encode


class _Block(msgspec.Struct):
    type: str
    text: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(msgspec.Struct):
    id: str
    model: str
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


_decode = msgspec.json.Decoder(_Message).decode


def encode_request(request: ChatRequest, model: Model) -> bytes:
    system = "\n\n".join(m.text() for m in request.messages if m.role in ("system", "developer"))
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role in ("system", "developer"):
            continue
        role = "assistant" if m.role == "assistant" else "user"
        text = m.text()
        # Anthropic wants alternating turns: merge consecutive same-role messages.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"][0]["text"] += "\n\n" + text
        else:
            messages.append({"role": role, "content": [{"type": "text", "text": text}]})
    body: dict[str, Any] = {
        "model": model.model,
        "max_tokens": request.max_tokens or min(model.max_output_tokens, DEFAULT_MAX_TOKENS),
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    return _encode(body)


def parse_response(body: bytes) -> ChatResponse:
    msg = _decode(body)
    text = "".join(b.text or "" for b in msg.content if b.type == "text")
    usage = Usage(msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.input_tokens + msg.usage.output_tokens)
    return ChatResponse(
        id=msg.id,
        model=msg.model,
        choices=[Choice(0, ChoiceMessage("assistant", text), STOP_REASONS.get(msg.stop_reason or "", msg.stop_reason))],
        usage=usage,
    )


class AnthropicAdapter(Adapter):
    path = "/v1/messages"
    static_headers = {"anthropic-version": API_VERSION}

    def auth(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def encode(self, request: ChatRequest, model: Model) -> bytes:
        return encode_request(request, model)

    def parse(self, body: bytes) -> ChatResponse:
        return parse_response(body)
