"""OpenAI-compatible chat completions (OpenAI, Novita, DeepInfra, Fireworks, Together...)."""

from __future__ import annotations

import msgspec

from panelboard.schemas.chat import ChatRequest, ChatResponse
from panelboard.schemas.config import Model
from panelboard.workers.providers.base import Adapter

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ChatResponse).decode


def encode_request(request: ChatRequest, model: Model) -> bytes:
    # The job never chooses the upstream model id: the catalog entry does.
    return _encode(msgspec.structs.replace(request, model=model.model))


class OpenAIAdapter(Adapter):
    path = "/chat/completions"

    def auth(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def encode(self, request: ChatRequest, model: Model) -> bytes:
        return encode_request(request, model)

    def parse(self, body: bytes) -> ChatResponse:
        resp = _decode(body)
        if not resp.choices:
            raise ValueError("response has no choices")
        return resp
