"""What the batch lane (workers/batch_lane.py) asks of a provider's batch API, and what both API
shapes share: one pooled HTTP client whose failures are BatchAPIError, and the provider-neutral
BatchObject the lane reads. openai_batch.py (Files + Batches) and anthropic_batch.py (Message
Batches) fill in the steps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import httpx
import msgspec

from panelboard.schemas.chat import ChatRequest
from panelboard.schemas.config import Model
from panelboard.workers.batch_plan import Line


class BatchAPIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message

    @property
    def transient(self) -> bool:
        """Worth asking again: no answer, 408/409/429 or 5xx. Anything else will not change."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(msgspec.Struct):
    id: str
    status: str
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    metadata: dict[str, str] | None = None
    request_counts: RequestCounts | None = None
    errors: dict[str, Any] | None = None


class BatchAPI(ABC):
    """The lane's steps, the same for each API shape: encode a line, prepare (upload), create
    (or look up one a crash lost), get, cancel, read results."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float):
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise BatchAPIError(0, f"{type(e).__name__}: {e}") from e
        if r.status_code >= 300:
            raise BatchAPIError(r.status_code, r.text[:300])
        return r

    @staticmethod
    @abstractmethod
    def encode_line(custom_id: str, request: ChatRequest, model: Model) -> bytes:
        """One request of the provider batch, as its API wants it."""

    @abstractmethod
    async def prepare(self, pb_id: str, lines: list[bytes]) -> str:
        """What the create step needs first (an uploaded file's id), done once."""

    @abstractmethod
    async def lookup(self, pb_id: str, since: float | None, n: int, claimed: set[str]) -> BatchObject | None:
        """The provider batch a create whose answer a crash lost may have made."""

    @abstractmethod
    async def create_batch(self, pb_id: str, file_id: str, window: str, lines: list[bytes]) -> BatchObject: ...

    @abstractmethod
    async def get(self, batch_id: str) -> BatchObject: ...

    @abstractmethod
    async def cancel(self, batch_id: str) -> BatchObject: ...

    @abstractmethod
    async def results(self, b: BatchObject) -> dict[str, Line]:
        """What each line came to, by custom id, once the batch has ended."""

    async def aclose(self) -> None:
        await self.http.aclose()
