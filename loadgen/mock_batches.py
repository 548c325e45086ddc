"""The mock provider's OpenAI Files + Batches and Anthropic Message Batches endpoints, mounted
by loadgen/mock_provider.py:

    POST /{provider}/v1/files                multipart: purpose=batch, file=<jsonl>
    GET  /{provider}/v1/files[?purpose=]     GET /{provider}/v1/files/{id}[/content]
    POST /{provider}/v1/batches              {input_file_id, endpoint, completion_window, metadata}
    GET  /{provider}/v1/batches[?limit&after]   GET /{provider}/v1/batches/{id}
    POST /{provider}/v1/batches/{id}/cancel
    POST /{provider}/v1/messages/batches     {requests: [{custom_id, params}]}    (Anthropic)
    GET  /{provider}/v1/messages/batches[/{id}[/results]]   POST .../{id}/cancel
    POST /_mock/batches/control   GET /_mock/batches   POST /_mock/batches/reset

A batch moves validating -> in_progress -> finalizing -> completed on the mock's clock:
`validate_ms`, then `delay_ms` of processing (lines finish evenly over it); its completion
window ("24h") lasts `window_s` seconds here, so a test can watch one expire. Faults: `fail`
(validation fails), `expire` (never finishes inside its window), `line_error_every` N (every
N-th line answers 500 in the error file), and `upload_delay_ms` / `create_delay_ms` (the step
is done, then its answer is held: a client killed meanwhile never learns of it). Each line
that runs is logged once, like a chat call, with its custom_id as the request id.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any, Literal

import msgspec
from aiohttp import BodyPartReader, web

Fault = Literal["fail", "expire"]
ENDPOINT = "/v1/chat/completions"
WINDOWS = ("24h",)  # what OpenAI accepts


class BatchSettings(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    validate_ms: float = 50.0
    delay_ms: float = 500.0
    window_s: float = 86_400.0  # how long the "24h" completion window lasts on the mock's clock
    fault: Fault | None = None
    line_error_every: int = 0  # 0: none
    upload_delay_ms: float = 0.0
    create_delay_ms: float = 0.0
    flex_unavailable_every: int = 0  # every N-th `service_tier: flex` chat call answers 429 resource_unavailable


class BatchControl(BatchSettings, forbid_unknown_fields=True, kw_only=True):
    provider: str


class _File(msgspec.Struct, kw_only=True):
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None, "expires_at": None}


class _Batch(msgspec.Struct, kw_only=True):
    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    settings: BatchSettings
    lines: list[dict[str, Any]]
    errors: dict[str, Any] | None = None
    cancelled_at: float | None = None
    ended: str | None = None  # the terminal status, once reached
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: tuple[int, int] = (0, 0)  # completed, failed
    api: str = "openai"  # "anthropic": a Message Batch (inline requests, one results file)
    results: list[dict[str, Any]] = []  # anthropic: one {custom_id, result} per request


class _Provider:
    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.flex_calls = 0
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.lines_run = 0


def _now() -> int:
    return int(time.time())


class BatchStore:
    """Files and batches per provider, beside the chat mock's state (`MockState`), which
    answers each line as it answers a chat call and logs it."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.providers: dict[str, _Provider] = {}

    def flex_refusal(self, provider: str, req: Any) -> web.Response | None:
        """OpenAI's flex tier out of capacity: a 429 that waiting out will not fix soon."""
        if getattr(req, "service_tier", None) != "flex":
            return None
        p = self.provider(provider)
        p.flex_calls += 1
        every = p.settings.flex_unavailable_every
        if not every or p.flex_calls % every:
            return None
        return _json({"error": {"message": "Resource unavailable: the flex tier has no capacity for this request right now; retry later "
                                           "or use the default service tier.", "type": "resource_unavailable", "param": None,
                                "code": "resource_unavailable"}}, 429)

    def _chat_mock(self) -> Any:
        """The chat mock's module: the one the state came from (`python -m` runs it as __main__)."""
        return sys.modules[type(self.state).__module__]

    def answer(self, provider: str, body: dict[str, Any], cid: str, api: str = "openai") -> tuple[int, Any, str]:
        """(status, JSON body, model) of one line: the chat mock's answer, scripted faults included."""
        mp = self._chat_mock()
        try:
            req = msgspec.convert(body, mp.OpenAIRequest if api == "openai" else mp.AnthropicRequest)
        except msgspec.ValidationError as e:
            return 400, {"error": {"message": f"invalid request body: {e}", "type": "invalid_request_error", "code": None}}, ""
        p = self.state.provider(provider)
        fault, _ = self.state._plan(p, req.model)  # the line's latency is the batch's own
        resp, _images = self.state._respond(api, provider, p.settings, req, cid, fault)
        if not isinstance(resp, web.Response):  # a line asking to stream: batch APIs answer whole bodies
            return 400, {"error": {"message": "stream is not supported in a batch line", "type": "invalid_request_error", "code": None}}, req.model
        try:
            return resp.status, msgspec.json.decode(resp.body if isinstance(resp.body, (bytes, bytearray)) else b""), req.model
        except msgspec.DecodeError:  # a `malformed` fault: the line's body is cut off
            return 500, {"error": {"message": "mock fault: malformed answer", "type": "server_error", "code": None}}, req.model

    def record(self, provider: str, cid: str, model: str, status: int, api: str = "openai") -> None:
        self.state.record(self._chat_mock().LogEntry(time.time(), provider, api, cid, model, status, 0.0, None))

    def provider(self, name: str) -> _Provider:
        return self.providers.setdefault(name, _Provider(BatchSettings()))

    # -- status on the mock's clock ------------------------------------------------------
    def status(self, provider: str, b: _Batch, now: float) -> str:
        if b.ended:
            return b.ended
        s = b.settings
        t = now - b.created
        if b.errors is not None:
            return self._end(provider, b, "failed", now, run=0)
        if b.cancelled_at is not None:
            return self._end(provider, b, "cancelled", now, run=self._done_lines(b, b.cancelled_at))
        if t < s.validate_ms / 1000:
            return "validating"
        if s.fault == "fail":
            b.errors = {"object": "list", "data": [{"code": "invalid_request", "message": "mock fault: this batch failed validation",
                                                    "param": None, "line": None}]}
            return self._end(provider, b, "failed", now, run=0)
        if t >= s.window_s:
            return self._end(provider, b, "expired", now, run=self._done_lines(b, b.created + s.window_s))
        if s.fault != "expire" and t >= (s.validate_ms + s.delay_ms) / 1000:
            return self._end(provider, b, "completed", now, run=len(b.lines))
        return "in_progress"

    @staticmethod
    def _done_lines(b: _Batch, at: float) -> int:
        s = b.settings
        if s.fault == "expire":
            return 0
        ran = (at - b.created - s.validate_ms / 1000) / max(s.delay_ms / 1000, 1e-9)
        return max(0, min(len(b.lines), int(len(b.lines) * ran)))

    def _end(self, provider: str, b: _Batch, status: str, now: float, run: int) -> str:
        """Run the first `run` lines (each logged as a call) and write the output and error
        files; the rest are expired or cancelled lines in the error file."""
        p = self.provider(provider)
        out: list[bytes] = []
        err: list[bytes] = []
        ok = failed = 0
        for i, line in enumerate(b.lines):
            rid = f"batch_req_{uuid.uuid4().hex[:24]}"
            cid = line.get("custom_id", "")
            if i >= run:
                if b.api == "anthropic" and status in ("expired", "cancelled"):
                    b.results.append({"custom_id": cid, "result": {"type": "expired" if status == "expired" else "canceled"}})
                    failed += 1
                    continue
                if status in ("expired", "cancelled"):
                    why = "batch_expired" if status == "expired" else "batch_cancelled"
                    msg = ("This request could not be executed before the completion window expired." if status == "expired"
                           else "This request was not executed because the batch was cancelled.")
                    err.append(msgspec.json.encode({"id": rid, "custom_id": cid, "response": None, "error": {"code": why, "message": msg}}))
                    failed += 1
                continue
            n = p.lines_run = p.lines_run + 1
            if b.settings.line_error_every and n % b.settings.line_error_every == 0:
                code, body, model = 500, {"error": {"message": "mock fault: this line failed", "type": "server_error", "code": None}}, ""
            else:
                code, body, model = self.answer(provider, line.get((("body", "params")[b.api == "anthropic"])) or {}, cid, b.api)
            self.record(provider, cid, model, code, b.api)
            if b.api == "anthropic":
                result = ({"type": "succeeded", "message": body} if code == 200 else
                          {"type": "errored", "error": {"type": "error", "error": (body or {}).get("error") or {"type": "api_error", "message": str(code)}}})
                b.results.append({"custom_id": cid, "result": result})
                ok, failed = ok + (code == 200), failed + (code != 200)
                continue
            entry = msgspec.json.encode({"id": rid, "custom_id": cid, "response": {"status_code": code, "request_id": rid, "body": body}, "error": None})
            if code == 200:
                out.append(entry)
                ok += 1
            else:
                err.append(entry)
                failed += 1
        if out:
            b.output_file_id = self._file(p, f"{b.id}_output.jsonl", "batch_output", b"\n".join(out) + b"\n").id
        if err:
            b.error_file_id = self._file(p, f"{b.id}_errors.jsonl", "batch_output", b"\n".join(err) + b"\n").id
        b.counts = (ok, failed)
        b.ended, b.ended_at = status, now
        return status

    @staticmethod
    def _file(p: _Provider, filename: str, purpose: str, content: bytes) -> _File:
        f = _File(id=f"file-{uuid.uuid4().hex[:24]}", filename=filename, purpose=purpose, content=content, created_at=_now())
        p.files[f.id] = f
        return f

    def public(self, provider: str, b: _Batch) -> dict[str, Any]:
        now = time.time()
        status = self.status(provider, b, now)
        s = b.settings
        done, failed = b.counts if b.ended else (self._done_lines(b, now) if status == "in_progress" else 0, 0)
        at = lambda ms: int(b.created + ms / 1000)  # noqa: E731
        return {
            "id": b.id, "object": "batch", "endpoint": ENDPOINT, "errors": b.errors, "input_file_id": b.input_file_id,
            "completion_window": b.completion_window, "status": status, "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
            "created_at": int(b.created), "in_progress_at": at(s.validate_ms) if status not in ("validating", "failed") else None,
            "expires_at": int(b.created + s.window_s), "finalizing_at": int(b.ended_at) if status == "completed" and b.ended_at else None,
            "completed_at": int(b.ended_at) if status == "completed" and b.ended_at else None,
            "failed_at": int(b.ended_at) if status == "failed" and b.ended_at else None,
            "expired_at": int(b.ended_at) if status == "expired" and b.ended_at else None,
            "cancelling_at": int(b.cancelled_at) if b.cancelled_at else None,
            "cancelled_at": int(b.ended_at) if status == "cancelled" and b.ended_at else None,
            "request_counts": {"total": len(b.lines), "completed": done, "failed": failed}, "metadata": b.metadata,
        }

    # -- HTTP ----------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        p = self.provider(request.match_info["provider"])
        purpose, filename, content = "", "", None
        reader = await request.multipart()  # streamed: no client_max_size on a file
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                content = bytes(await part.read())
        if content is None or not purpose:
            return _error(400, "'file' and 'purpose' are required", "invalid_request_error")
        f = self._file(p, filename, purpose, content)
        if p.settings.upload_delay_ms:
            await asyncio.sleep(p.settings.upload_delay_ms / 1000)
        return _json(f.public())

    async def list_files(self, request: web.Request) -> web.Response:
        p = self.provider(request.match_info["provider"])
        purpose = request.query.get("purpose")
        data = [f.public() for f in p.files.values() if purpose is None or f.purpose == purpose]
        return _json({"object": "list", "data": data, "has_more": False})

    def _get_file(self, request: web.Request) -> _File | None:
        return self.provider(request.match_info["provider"]).files.get(request.match_info["file_id"])

    async def file(self, request: web.Request) -> web.Response:
        f = self._get_file(request)
        return _json(f.public()) if f else _error(404, f"No such File object: {request.match_info['file_id']}", "invalid_request_error")

    async def content(self, request: web.Request) -> web.Response:
        f = self._get_file(request)
        if f is None:
            return _error(404, f"No such File object: {request.match_info['file_id']}", "invalid_request_error")
        return web.Response(body=f.content, content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        p = self.provider(name)
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as e:
            return _error(400, f"invalid JSON body: {e}", "invalid_request_error")
        f = p.files.get(body.get("input_file_id", ""))
        if f is None:
            return _error(400, f"No such File object: {body.get('input_file_id')}", "invalid_request_error")
        if body.get("endpoint") != ENDPOINT:
            return _error(400, f"endpoint must be {ENDPOINT} on this mock", "invalid_request_error")
        if body.get("completion_window") not in WINDOWS:
            return _error(400, f"completion_window must be one of {list(WINDOWS)}", "invalid_request_error")
        lines, errors = [], []
        seen: set[str] = set()
        for i, raw in enumerate(f.content.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.", "param": None, "line": i})
                continue
            cid = line.get("custom_id")
            if not cid or cid in seen:
                errors.append({"code": "duplicate_custom_id" if cid else "missing_required_parameter",
                               "message": "The custom_id for this request is a duplicate of another request." if cid else "custom_id is required",
                               "param": "custom_id", "line": i})
            if line.get("url") != ENDPOINT:
                errors.append({"code": "invalid_url", "message": f"The URL provided for this request does not match the batch endpoint {ENDPOINT}.",
                               "param": "url", "line": i})
            seen.add(cid or "")
            lines.append(line)
        b = _Batch(id=f"batch_{uuid.uuid4().hex[:24]}", input_file_id=f.id, completion_window=body["completion_window"],
                   metadata=body.get("metadata"), created=time.time(), settings=p.settings, lines=lines,
                   errors={"object": "list", "data": errors} if errors else None)
        p.batches[b.id] = b
        if p.settings.create_delay_ms:
            await asyncio.sleep(p.settings.create_delay_ms / 1000)
        return _json(self.public(name, b))

    async def list_batches(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        newest = list(reversed(self.provider(name).batches.values()))  # OpenAI lists newest first
        after = request.query.get("after")
        if after:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest[:limit]
        data = [self.public(name, b) for b in page]
        return _json({"object": "list", "data": data, "first_id": page[0].id if page else None,
                      "last_id": page[-1].id if page else None, "has_more": len(newest) > limit})

    def _get_batch(self, request: web.Request) -> _Batch | None:
        return self.provider(request.match_info["provider"]).batches.get(request.match_info["batch_id"])

    async def batch(self, request: web.Request) -> web.Response:
        b = self._get_batch(request)
        if b is None:
            return _error(404, f"No batch found with id '{request.match_info['batch_id']}'.", "invalid_request_error")
        return _json(self.public(request.match_info["provider"], b))

    async def cancel(self, request: web.Request) -> web.Response:
        b = self._get_batch(request)
        name = request.match_info["provider"]
        if b is None:
            return _error(404, f"No batch found with id '{request.match_info['batch_id']}'.", "invalid_request_error")
        status = self.status(name, b, time.time())
        if status in ("completed", "failed", "expired", "cancelled"):
            return _error(409, f"Cannot cancel a batch with status '{status}'.", "invalid_request_error")
        b.cancelled_at = time.time()
        out = self.public(name, b)
        return _json(out)

    # -- Anthropic Message Batches ------------------------------------------------------
    def public_anthropic(self, provider: str, b: _Batch, base: str) -> dict[str, Any]:
        now = time.time()
        status = self.status(provider, b, now)
        ended = status in ("completed", "failed", "expired", "cancelled")
        kinds = {k: 0 for k in ("succeeded", "errored", "canceled", "expired")}
        for r in b.results:
            kinds[r["result"]["type"]] += 1
        return {
            "id": b.id, "type": "message_batch", "processing_status": "ended" if ended else ("canceling" if b.cancelled_at else "in_progress"),
            "request_counts": {"processing": 0 if ended else len(b.lines), **kinds},
            "ended_at": _rfc3339(b.ended_at) if ended and b.ended_at else None, "created_at": _rfc3339(b.created),
            "expires_at": _rfc3339(b.created + b.settings.window_s), "archived_at": None,
            "cancel_initiated_at": _rfc3339(b.cancelled_at) if b.cancelled_at else None,
            "results_url": f"{base}/v1/messages/batches/{b.id}/results" if ended else None,
        }

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}/{request.match_info['provider']}"

    async def create_anthropic(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        p = self.provider(name)
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as e:
            return _anthropic_error(400, f"invalid JSON body: {e}")
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            return _anthropic_error(400, "requests: a non-empty list is required")
        cids = [r.get("custom_id") for r in reqs]
        if len(set(cids)) != len(cids) or not all(isinstance(c, str) and 1 <= len(c) <= 64 for c in cids):
            return _anthropic_error(400, "requests: each custom_id must be unique, 1-64 characters")
        if p.settings.fault == "fail":
            return _anthropic_error(400, "mock fault: this batch was refused")
        b = _Batch(id=f"msgbatch_{uuid.uuid4().hex[:24]}", input_file_id="", completion_window="24h", metadata=None,
                   created=time.time(), settings=p.settings, lines=reqs, api="anthropic")
        p.batches[b.id] = b
        if p.settings.create_delay_ms:
            await asyncio.sleep(p.settings.create_delay_ms / 1000)
        return _json(self.public_anthropic(name, b, self._base(request)))

    async def list_anthropic(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        newest = [b for b in reversed(self.provider(name).batches.values()) if b.api == "anthropic"]
        after = request.query.get("after_id")
        if after:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest[:limit]
        return _json({"data": [self.public_anthropic(name, b, self._base(request)) for b in page], "has_more": len(newest) > limit,
                      "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None})

    async def get_anthropic(self, request: web.Request) -> web.Response:
        b = self._get_batch(request)
        if b is None or b.api != "anthropic":
            return _anthropic_error(404, f"batch {request.match_info['batch_id']} not found", "not_found_error")
        return _json(self.public_anthropic(request.match_info["provider"], b, self._base(request)))

    async def cancel_anthropic(self, request: web.Request) -> web.Response:
        b = self._get_batch(request)
        name = request.match_info["provider"]
        if b is None or b.api != "anthropic":
            return _anthropic_error(404, f"batch {request.match_info['batch_id']} not found", "not_found_error")
        self.status(name, b, time.time())
        if not b.ended and b.cancelled_at is None:
            b.cancelled_at = time.time()
        return _json(self.public_anthropic(name, b, self._base(request)))

    async def results_anthropic(self, request: web.Request) -> web.Response:
        b = self._get_batch(request)
        name = request.match_info["provider"]
        if b is None or b.api != "anthropic":
            return _anthropic_error(404, f"batch {request.match_info['batch_id']} not found", "not_found_error")
        if not b.ended and self.status(name, b, time.time()) == "in_progress":
            return _anthropic_error(400, "the batch is still processing: results are available once it has ended")
        body = b"".join(msgspec.json.encode(r) + b"\n" for r in b.results)
        return web.Response(body=body, content_type="application/binary")

    async def control(self, request: web.Request) -> web.Response:
        try:
            ctl = msgspec.json.decode(await request.read(), type=BatchControl)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return _json({"error": f"invalid control body: {e}"}, 400)
        p = self.provider(ctl.provider)
        p.settings = BatchSettings(**{k: v for k, v in msgspec.structs.asdict(ctl).items() if k != "provider"})
        return _json(msgspec.structs.asdict(p.settings))

    async def summary(self, request: web.Request) -> web.Response:
        """What each provider holds: its files, its batches (status, metadata, custom ids)."""
        now = time.time()
        want = request.query.get("provider")
        out = {}
        for name, p in self.providers.items():
            if want and name != want:
                continue
            out[name] = {"files": len(p.files), "input_files": sum(f.purpose == "batch" for f in p.files.values()), "lines_run": p.lines_run,
                         "batches": [{"id": b.id, "status": self.status(name, b, now), "metadata": b.metadata,
                                      "custom_ids": [ln.get("custom_id") for ln in b.lines]} for b in p.batches.values()]}
        return _json(out)

    async def reset(self, _: web.Request) -> web.Response:
        self.providers.clear()
        return _json({"ok": True})


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value), content_type="application/json")


def _error(status: int, message: str, type_: str) -> web.Response:
    return _json({"error": {"message": message, "type": type_, "param": None, "code": None}}, status)


def _anthropic_error(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status)


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def mount(app: web.Application, store: BatchStore) -> None:
    store.state.flex_hook = store.flex_refusal
    prefix = "/{provider}/v1"
    app.add_routes([
        web.post(prefix + "/files", store.upload),
        web.get(prefix + "/files", store.list_files),
        web.get(prefix + "/files/{file_id}", store.file),
        web.get(prefix + "/files/{file_id}/content", store.content),
        web.post(prefix + "/batches", store.create),
        web.get(prefix + "/batches", store.list_batches),
        web.get(prefix + "/batches/{batch_id}", store.batch),
        web.post(prefix + "/batches/{batch_id}/cancel", store.cancel),
        web.post(prefix + "/messages/batches", store.create_anthropic),
        web.get(prefix + "/messages/batches", store.list_anthropic),
        web.get(prefix + "/messages/batches/{batch_id}", store.get_anthropic),
        web.post(prefix + "/messages/batches/{batch_id}/cancel", store.cancel_anthropic),
        web.get(prefix + "/messages/batches/{batch_id}/results", store.results_anthropic),
        web.post("/_mock/batches/control", store.control),
        web.get("/_mock/batches", store.summary),
        web.post("/_mock/batches/reset", store.reset),
    ])
