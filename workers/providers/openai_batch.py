"""OpenAI Files + Batches: upload a JSONL file, create a batch from it, poll it, read its
output and error files, cancel it. Lookups by our own names (the file's filename, the batch's
metadata.pb_batch) let a process that crashed mid-step find what it already did. The HTTP client
and the lane's interface are workers/providers/batch_api.py's."""

from __future__ import annotations

from typing import Any

import msgspec

from panelboard.schemas.config import Provider
from panelboard.workers.batch_plan import Line, encode_line, parse_results
from panelboard.workers.providers.batch_api import BatchAPI, BatchObject

PB_BATCH = "pb_batch"  # the metadata key naming our ProviderBatch id
_LIST_PAGES = 20  # batches listed (100 a page) when looking for one we may have created


class FileObject(msgspec.Struct):
    id: str
    filename: str = ""
    purpose: str = ""
    bytes: int = 0


class _Page(msgspec.Struct):
    data: list[dict[str, Any]]
    has_more: bool = False


class OpenAIBatchAPI(BatchAPI):
    def __init__(self, provider: Provider, api_key: str | None, timeout_s: float = 60.0):
        headers = {**provider.headers, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
        super().__init__(provider.base_url, headers, timeout_s)

    async def find_file(self, filename: str) -> str | None:
        r = await self._call("GET", "/files", params={"purpose": "batch"})
        for f in msgspec.convert(msgspec.json.decode(r.content, type=_Page).data, list[FileObject]):
            if f.filename == filename:
                return f.id
        return None

    async def upload(self, filename: str, content: bytes) -> str:
        r = await self._call("POST", "/files", data={"purpose": "batch"}, files={"file": (filename, content, "application/jsonl")})
        return msgspec.json.decode(r.content, type=FileObject).id

    async def find_batch(self, pb_id: str) -> BatchObject | None:
        after: str | None = None
        for _ in range(_LIST_PAGES):
            params = {"limit": "100", **({"after": after} if after else {})}
            page = msgspec.json.decode((await self._call("GET", "/batches", params=params)).content, type=_Page)
            batches = msgspec.convert(page.data, list[BatchObject])
            for b in batches:
                if (b.metadata or {}).get(PB_BATCH) == pb_id:
                    return b
            if not page.has_more or not batches:
                return None
            after = batches[-1].id
        return None

    async def create(self, file_id: str, window: str, pb_id: str) -> BatchObject:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window, "metadata": {PB_BATCH: pb_id}}
        return msgspec.json.decode((await self._call("POST", "/batches", json=body)).content, type=BatchObject)

    async def get(self, batch_id: str) -> BatchObject:
        return msgspec.json.decode((await self._call("GET", f"/batches/{batch_id}")).content, type=BatchObject)

    async def cancel(self, batch_id: str) -> BatchObject:
        return msgspec.json.decode((await self._call("POST", f"/batches/{batch_id}/cancel")).content, type=BatchObject)

    async def content(self, file_id: str | None) -> bytes:
        if not file_id:
            return b""
        return (await self._call("GET", f"/files/{file_id}/content")).content

    # -- the lane's steps (workers/providers/batch_api.py) ----------------------------------
    encode_line = staticmethod(encode_line)

    async def prepare(self, pb_id: str, lines: list[bytes]) -> str:
        """The uploaded input file's id: the one a crashed upload left, or a new upload."""
        return await self.find_file(pb_id) or await self.upload(pb_id, b"".join(lines))

    async def lookup(self, pb_id: str, since: float | None, n: int, claimed: set[str]) -> BatchObject | None:
        """The provider batch a crashed create may have made: the one named pb_id."""
        return await self.find_batch(pb_id)

    async def create_batch(self, pb_id: str, file_id: str, window: str, lines: list[bytes]) -> BatchObject:
        return await self.create(file_id, window, pb_id)

    async def results(self, b: BatchObject) -> dict[str, Line]:
        return parse_results(await self.content(b.output_file_id), await self.content(b.error_file_id))
