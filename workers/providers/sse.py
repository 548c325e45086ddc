"""Server-Sent Events, as providers stream them, and the seam a family's stream fits.

    events(raw) -> (event, data) pairs          from the body's bytes, however they are cut
    Translator.feed(event, data) -> [(ChatChunk, bytes)]   OpenAI chunks and their JSON
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from panelboard.schemas.chat import ChatChunk, Usage


class StreamError(Exception):
    """The provider said, mid-stream, that the answer failed (an SSE error event)."""


class Translator:
    """One stream's state. `done`: the provider said the answer is complete; `usage`: what it
    has reported so far (None until it says anything)."""

    done: bool = False
    usage: Usage | None = None

    def feed(self, event: str, data: bytes) -> list[tuple[ChatChunk, bytes]]:
        raise NotImplementedError


async def events(raw: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """(event name, data) per SSE event; the name is "message" when the event has none."""
    buf = b""
    async for piece in raw:
        buf += piece.replace(b"\r\n", b"\n") if b"\r" in piece else piece
        while (end := buf.find(b"\n\n")) >= 0:
            block, buf = buf[:end], buf[end + 2:]
            name, data = "message", []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode()
            if data:
                yield name, b"\n".join(data)
