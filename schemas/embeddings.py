"""Embeddings jobs: the OpenAI /v1/embeddings request and response, a job kind of its own
(Job.embeddings) through the same queue, priced per input token."""

from __future__ import annotations

import msgspec

from panelboard.schemas.chat import Usage


class EmbeddingsRequest(msgspec.Struct, omit_defaults=True):
    input: str | list[str | int | list[int]]  # text(s), token ids, or lists of token ids
    model: str | None = None  # the catalog chooses the upstream model, as for chat
    encoding_format: str | None = None  # float | base64
    dimensions: int | None = None
    user: str | None = None

    def input_bytes(self) -> int:
        """An upper bound on the input's tokens at one per UTF-8 byte (token ids: one each)."""
        items = [self.input] if isinstance(self.input, str) else self.input
        return sum(len(x.encode()) if isinstance(x, str) else (1 if isinstance(x, int) else len(x)) for x in items)


class Embedding(msgspec.Struct):
    index: int
    embedding: list[float] | str  # base64 with encoding_format base64
    object: str = "embedding"


class EmbeddingsResponse(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: Usage = msgspec.field(default_factory=Usage)
    object: str = "list"
