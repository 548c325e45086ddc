"""A sync facade over the async client, for scripts and notebooks: a private event loop
runs in a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import Any, TypeVar

from panelboard.clients.client import Client, JobHandle, MessagesLike
from panelboard.schemas.chat import ChatChunk, ChatResponse
from panelboard.schemas.embeddings import EmbeddingsResponse
from panelboard.schemas.job import Result

T = TypeVar("T")


class SyncClient:
    def __init__(self, nats_url: str | None = None, **kw: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="panelboard-sync")
        self._thread.start()
        self._client = Client(nats_url, **kw)
        self._run(self._client.connect())

    @property
    def client_id(self) -> str:
        return self._client.client_id

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iter(self, agen: AsyncGenerator[T, None]) -> Iterator[T]:
        """Step an async generator on the private loop; closing the iterator closes it."""
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def chat(self, messages: MessagesLike | str, *, intent: str | None = None, timeout: float | None = 120, **kw: Any) -> ChatResponse:
        return self._run(self._client.chat(messages, intent=intent, timeout=timeout, **kw))

    def embed(self, input: str | list[str | int | list[int]], **kw: Any) -> EmbeddingsResponse:
        return self._run(self._client.embed(input, **kw))

    def stream(self, messages: MessagesLike | str, **kw: Any) -> Iterator[ChatChunk]:
        """Client.stream: each chunk as it comes; a Failed result raises its JobFailed subclass."""
        return self._iter(self._client.stream(messages, **kw).__aiter__())

    def submit(self, messages: MessagesLike | str, **kw: Any) -> str:
        return self._run(self._client.submit(messages, **kw)).id

    def result(self, job_id: str, timeout: float | None = None) -> Result:
        return self._run(self._client.result(job_id, timeout))

    def cancel(self, job_id: str) -> bool:
        return self._run(self._client.cancel(job_id))

    def as_completed(self, job_ids: Iterable[str | JobHandle], timeout: float | None = None) -> Iterator[Result]:
        return self._iter(self._client.as_completed(list(job_ids), timeout))

    def map(self, items: Iterable[MessagesLike | str], **kw: Any) -> Iterator[Result]:
        """Client.map: the items are read on the client's loop thread as the window moves."""
        return self._iter(self._client.map(items, **kw))

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SyncClient", "JobHandle"]
