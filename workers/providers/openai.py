"""OpenAI-compatible chat completions (OpenAI, Novita, DeepInfra, Fireworks, Together...).

The request goes out as the client wrote it (fields the schema does not model included), bar
the model id, which the catalog chooses."""

from __future__ import annotations

from typing import Any

import msgspec

from panelboard.schemas.chat import ChatChunk, ChatRequest, ChatResponse
from panelboard.schemas.config import Model
from panelboard.workers.providers.base import Adapter
from panelboard.workers.providers.sse import StreamError, Translator

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ChatResponse).decode
_decode_chunk = msgspec.json.Decoder(ChatChunk).decode


class _ErrorEvent(msgspec.Struct):
    error: dict[str, Any] | str


_decode_error = msgspec.json.Decoder(_ErrorEvent).decode


def body_of(request: ChatRequest, model: Model, stream: bool = False) -> dict[str, Any] | ChatRequest:
    """The job never chooses the upstream model id: the catalog entry does. A stream asks for
    its usage (the cost record needs it); a plain call never streams."""
    req = msgspec.structs.replace(
        request, model=model.model, passthrough={}, stream=True if stream else None,
        stream_options={**(request.stream_options or {}), "include_usage": True} if stream else None,
    )
    if not request.passthrough:
        return req
    # Unmodelled fields ride along; a modelled one of the same name (model!) always wins.
    return {**request.passthrough, **msgspec.to_builtins(req)}


def encode_request(request: ChatRequest, model: Model, stream: bool = False) -> bytes:
    return _encode(body_of(request, model, stream))


def parse_response(body: bytes) -> ChatResponse:
    resp = _decode(body)
    if not resp.choices:
        raise ValueError("response has no choices")
    return resp


class ChunkReader(Translator):
    """OpenAI chunks are already the shape we forward: decoded for the assembly, and sent on
    as the provider wrote them."""

    def feed(self, event: str, data: bytes) -> list[tuple[ChatChunk, bytes]]:
        if data == b"[DONE]":
            self.done = True
            return []
        if event == "error":
            raise StreamError(data[:300].decode("utf-8", "replace"))
        try:
            chunk = _decode_chunk(data)
        except msgspec.ValidationError:
            try:
                err = _decode_error(data).error
            except (msgspec.ValidationError, msgspec.DecodeError):
                raise StreamError(f"unreadable stream event: {data[:200]!r}") from None
            raise StreamError(str(err.get("message", err) if isinstance(err, dict) else err)[:300]) from None
        if chunk.usage is not None:
            self.usage = chunk.usage
        return [(chunk, data)]


class OpenAIAdapter(Adapter):
    family = "openai"

    def auth(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def endpoint(self, model: Model, kind: str) -> str:
        return f"{self.base}/{'embeddings' if kind == 'embeddings' else 'chat/completions'}"

    def encode(self, request: ChatRequest, model: Model) -> bytes:
        return encode_request(request, model)

    def parse(self, body: bytes, request: ChatRequest) -> ChatResponse:
        return parse_response(body)

    def stream_body(self, request: ChatRequest, model: Model) -> bytes:
        return encode_request(request, model, stream=True)

    def translator(self, request: ChatRequest) -> Translator:
        return ChunkReader()
