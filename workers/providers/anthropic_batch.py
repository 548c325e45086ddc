"""Anthropic Message Batches: requests go inline in the create call, results come back as one
JSONL file once the batch has ended. Its batches carry no name of ours: a create whose answer
a crash lost is found as the one batch made since the create was sent that no state claims
(the lane sends one create at a time per provider, see workers/batch_lane.py)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from panelboard.schemas.config import Provider
from panelboard.workers.batch_plan import Line, anthropic_body, encode_anthropic_line, parse_anthropic_results
from panelboard.workers.providers.anthropic import API_VERSION
from panelboard.workers.providers.batch_api import BatchAPI, BatchObject, RequestCounts

_LIST_PAGES = 20
_SKEW_S = 5.0  # our clock against the provider's created_at


class _Counts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class _MessageBatch(msgspec.Struct):
    id: str
    processing_status: str
    created_at: str = ""
    request_counts: _Counts = msgspec.field(default_factory=_Counts)
    results_url: str | None = None


class _Page(msgspec.Struct):
    data: list[_MessageBatch]
    has_more: bool = False
    last_id: str | None = None


def _batch(b: _MessageBatch) -> BatchObject:
    c = b.request_counts
    total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
    status = "ended" if b.processing_status == "ended" else b.processing_status
    return BatchObject(id=b.id, status=status, output_file_id=b.results_url,
                       request_counts=RequestCounts(total=total, completed=c.succeeded, failed=c.errored + c.canceled + c.expired))


def _created(b: _MessageBatch) -> float:
    try:
        return datetime.fromisoformat(b.created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class AnthropicBatchAPI(BatchAPI):
    encode_line = staticmethod(encode_anthropic_line)

    def __init__(self, provider: Provider, api_key: str | None, timeout_s: float = 60.0):
        headers = {**provider.headers, "anthropic-version": API_VERSION, **({"x-api-key": api_key} if api_key else {})}
        super().__init__(provider.base_url.rstrip("/") + "/v1/messages", headers, timeout_s)

    async def prepare(self, pb_id: str, lines: list[bytes]) -> str:
        return "inline"  # nothing to upload: the requests travel in the create call

    async def create_batch(self, pb_id: str, file_id: str, window: str, lines: list[bytes]) -> BatchObject:
        r = await self._call("POST", "/batches", content=anthropic_body(lines), headers={"content-type": "application/json"})
        return _batch(msgspec.json.decode(r.content, type=_MessageBatch))

    async def lookup(self, pb_id: str, since: float | None, n: int, claimed: set[str]) -> BatchObject | None:
        """The batch of n requests created since `since` that no state claims (None: no create was sent)."""
        if since is None:
            return None
        after: str | None = None
        for _ in range(_LIST_PAGES):
            page = msgspec.json.decode((await self._call("GET", "/batches", params={"limit": "100", **({"after_id": after} if after else {})})).content,
                                       type=_Page)
            for b in page.data:
                if b.id in claimed or _created(b) < since - _SKEW_S:
                    continue
                found = _batch(b)
                if found.request_counts is not None and found.request_counts.total == n:
                    return found
            if not page.has_more or not page.data or min(_created(b) for b in page.data) < since - _SKEW_S:
                return None
            after = page.last_id or page.data[-1].id
        return None

    async def get(self, batch_id: str) -> BatchObject:
        return _batch(msgspec.json.decode((await self._call("GET", f"/batches/{batch_id}")).content, type=_MessageBatch))

    async def cancel(self, batch_id: str) -> BatchObject:
        return _batch(msgspec.json.decode((await self._call("POST", f"/batches/{batch_id}/cancel")).content, type=_MessageBatch))

    async def results(self, b: BatchObject) -> dict[str, Line]:
        return parse_anthropic_results((await self._call("GET", f"/batches/{b.id}/results")).content)
