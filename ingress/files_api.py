"""Files and Batches (OpenAI) and Message Batches (Anthropic) on panelboard's batch machinery
(clients/batch.py): a batch is a `panelboard batch submit` of the uploaded file, so it is
resumable, its state lives in NATS, and cancel keeps its guarantees.

Uploads are streamed to disk in 64 KiB pieces (never whole in memory) under --files-dir,
named by their file id; so a batch's manifest (`input`) names its input file id. A batch's
output and error files are written from the results when their content is asked for.
Each ingress host keeps the files it was sent: point every ingress of a cluster at one
shared --files-dir, or send a batch's file and its batch to the same host.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import BodyPartReader, web

from panelboard.clients import batch as batches
from panelboard.ingress.errors import Api, HttpError, bad_request, not_found, too_large

if TYPE_CHECKING:
    from panelboard.ingress.app import Ingress

PIECE = 64 * 1024
WINDOW_S = 24 * 3600.0  # OpenAI's only completion window; Anthropic batches end within 24 h too


class FileMeta(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"


class BatchMeta(msgspec.Struct, kw_only=True):
    """What the ingress keeps of a batch beside its NATS manifest: the OpenAI fields."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    metadata: dict[str, str] | None = None
    api: str = "openai"
    created: float = 0.0  # created_at to the microsecond: lists keep batches of one second in order


class Files:
    def __init__(self, ing: "Ingress", root: Path):
        self.ing = ing
        self.root = root
        (root / "batches").mkdir(parents=True, exist_ok=True)
        self.tasks: set[asyncio.Task[Any]] = set()

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def meta(self, file_id: str) -> FileMeta | None:
        if not file_id.startswith("file-") or "/" in file_id or ".." in file_id:
            return None
        try:
            return msgspec.json.decode((self.root / f"{file_id}.json").read_bytes(), type=FileMeta)
        except FileNotFoundError:
            return None

    def batch_meta(self, batch_id: str) -> BatchMeta | None:
        if "/" in batch_id or ".." in batch_id:
            return None
        try:
            return msgspec.json.decode((self.root / "batches" / f"{batch_id}.json").read_bytes(), type=BatchMeta)
        except FileNotFoundError:
            return None

    def error(self, err: HttpError, api: Api = "openai") -> web.Response:
        return self.ing.error(err, api)

    # -- files ---------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return self.error(bad_request("upload the file as multipart/form-data with fields `purpose` and `file`"))
        reader = await request.multipart()
        purpose, meta = None, None
        limit = self.ing.s.max_file_bytes
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                file_id = "file-" + uuid.uuid4().hex[:24]
                tmp = self.root / f".{file_id}.part"
                size = 0
                with open(tmp, "wb") as f:
                    while piece := await part.read_chunk(PIECE):
                        size += len(piece)
                        if size > limit:
                            break
                        f.write(piece)
                if size > limit:
                    tmp.unlink(missing_ok=True)
                    return self.error(too_large(f"the file is over this gateway's limit of {limit} bytes"))
                os.replace(tmp, self.path(file_id))
                meta = FileMeta(id=file_id, bytes=size, created_at=int(time.time()),
                                filename=part.filename or "upload.jsonl", purpose="batch")
        if meta is None:
            return self.error(bad_request("no `file` field in the upload", param="file"))
        if purpose != "batch":
            self.path(meta.id).unlink(missing_ok=True)
            return self.error(bad_request(f"purpose {purpose!r}: this gateway keeps files for batches only (purpose=batch)", param="purpose"))
        meta.purpose = purpose
        (self.root / f"{meta.id}.json").write_bytes(msgspec.json.encode(meta))
        return web.Response(body=msgspec.json.encode(meta), content_type="application/json")

    async def retrieve_file(self, request: web.Request) -> web.Response:
        fid = request.match_info["file_id"]
        meta = self.meta(fid) or await self.result_file(fid, materialise=False)
        if meta is None:
            return self.error(not_found(f"no file {fid[:80]!r}"))
        return web.Response(body=msgspec.json.encode(meta), content_type="application/json")

    async def content(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["file_id"]
        meta = self.meta(fid) or await self.result_file(fid, materialise=True)
        if meta is None:
            return self.error(not_found(f"no file {fid[:80]!r}"))
        return web.FileResponse(self.path(fid), headers={"content-type": "application/jsonl"})

    async def delete(self, request: web.Request) -> web.Response:
        fid = request.match_info["file_id"]
        if self.meta(fid) is None:
            return self.error(not_found(f"no file {fid[:80]!r}"))
        self.path(fid).unlink(missing_ok=True)
        (self.root / f"{fid}.json").unlink(missing_ok=True)
        return web.json_response({"id": fid, "object": "file", "deleted": True})

    async def result_file(self, fid: str, materialise: bool) -> FileMeta | None:
        """A batch's output (`file-<batch>-output`) or errors (`file-<batch>-errors`) file,
        written from its results."""
        for kind in ("output", "errors"):
            suffix = f"-{kind}"
            if fid.startswith("file-") and fid.endswith(suffix):
                batch_id = fid[len("file-"):-len(suffix)]
                if self.batch_meta(batch_id) is None:
                    return None
                out, err = self.path(f"file-{batch_id}-output"), self.path(f"file-{batch_id}-errors")
                if materialise or not out.exists():
                    await batches.results(self.ing.client.js, batch_id, out, err)
                    err.touch()  # results() removes an empty errors file: ours is listed, so keep it
                path = out if kind == "output" else err
                return FileMeta(id=fid, bytes=path.stat().st_size, created_at=int(path.stat().st_mtime),
                                filename=f"{batch_id}_{kind}.jsonl", purpose="batch_output")
        return None

    # -- batches --------------------------------------------------------------------------------
    async def start(self, request: web.Request, src: Path, input_file_id: str, endpoint: str, metadata: dict[str, str] | None,
                    api: Api) -> BatchMeta | HttpError:
        key = self.ing.key_of(request, api)
        team = await self.ing.teams.team_of(key)
        intent = request.headers.get("x-pb-intent") or (metadata or {}).get("intent")
        if intent is not None and intent not in self.ing.cfg.intents:
            return bad_request(f"intent {intent[:64]!r} is not an intent of this gateway", param="x-pb-intent")
        batch_id = "batch_" + uuid.uuid4().hex[:24]
        bm = BatchMeta(id=batch_id, input_file_id=input_file_id, endpoint=endpoint, completion_window="24h",
                       created_at=int(time.time()), metadata=metadata, api=api, created=time.time())
        (self.root / "batches" / f"{batch_id}.json").write_bytes(msgspec.json.encode(bm))

        async def send() -> None:
            try:
                await batches.submit(self.ing.client.js, src, cfg=self.ing.cfg, batch_id=batch_id, intent=intent, key=key, team=team,
                                     completion_window_s=WINDOW_S, errors_path=self.root / f".{batch_id}.malformed.jsonl")
            except batches.BatchError:
                pass  # cancelled while sending: the manifest says so

        t = asyncio.ensure_future(send())
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return bm

    async def create_batch(self, request: web.Request) -> web.Response:
        body = await self.ing.json_body(request)
        if isinstance(body, HttpError):
            return self.error(body)
        fid = body.get("input_file_id")
        if not isinstance(fid, str) or self.meta(fid) is None:
            return self.error(bad_request(f"input_file_id {str(fid)[:80]!r} names no uploaded file", param="input_file_id"))
        endpoint = body.get("endpoint", "/v1/chat/completions")
        if endpoint != "/v1/chat/completions":
            return self.error(bad_request(f"endpoint {endpoint!r}: batches run /v1/chat/completions here", param="endpoint"))
        if body.get("completion_window", "24h") != "24h":
            return self.error(bad_request("completion_window: 24h is the only window", param="completion_window"))
        bm = await self.start(request, self.path(fid), fid, endpoint, body.get("metadata"), "openai")
        if isinstance(bm, HttpError):
            return self.error(bm)
        return web.json_response(await self.openai_batch(bm))

    async def openai_batch(self, bm: BatchMeta, cancelling: bool = False) -> dict[str, Any]:
        st = await batches.status(self.ing.client.js, bm.id)
        counts = {"total": 0, "completed": 0, "failed": 0}
        state = "validating"
        if st is not None:
            counts, state = st["request_counts"], st["status"]
        if cancelling and state not in ("cancelled", "completed", "failed"):
            state = "cancelling"
        done = state in ("completed", "cancelled")
        return {
            "id": bm.id, "object": "batch", "endpoint": bm.endpoint, "completion_window": bm.completion_window,
            "input_file_id": bm.input_file_id, "status": state, "created_at": bm.created_at,
            "in_progress_at": bm.created_at if state != "validating" else None,
            "expires_at": bm.created_at + int(WINDOW_S),
            "completed_at": st.get("completed_at") if st else None,
            "cancelling_at": st.get("cancelling_at") if st else None,
            "cancelled_at": st.get("cancelled_at") if st else None,
            "output_file_id": f"file-{bm.id}-output" if done else None,
            "error_file_id": f"file-{bm.id}-errors" if done and counts["failed"] else None,
            "request_counts": counts, "metadata": bm.metadata, "errors": None,
        }

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        bm = self.batch_meta(request.match_info["batch_id"])
        if bm is None or bm.api != "openai":
            return self.error(not_found(f"no batch {request.match_info['batch_id'][:80]!r}"))
        return web.json_response(await self.openai_batch(bm))

    async def list_batches(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return self.error(bad_request("limit must be an integer from 1 to 100", param="limit"))
        after = request.query.get("after")
        metas = [m for p in (self.root / "batches").glob("*.json")
                 if (m := msgspec.json.decode(p.read_bytes(), type=BatchMeta)).api == "openai"]
        metas.sort(key=lambda m: (m.created, m.id), reverse=True)  # newest first, as OpenAI lists them
        if after:
            ids = [m.id for m in metas]
            metas = metas[ids.index(after) + 1:] if after in ids else []
        page = metas[:limit]
        data = [await self.openai_batch(m) for m in page]
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": len(metas) > limit})

    async def cancel_batch(self, request: web.Request, api: Api = "openai") -> web.Response:
        bm = self.batch_meta(request.match_info["batch_id"])
        if bm is None or bm.api != api:
            return self.error(not_found(f"no batch {request.match_info['batch_id'][:80]!r}"), api)
        t = asyncio.ensure_future(batches.cancel(self.ing.client.js, bm.id, self.ing.cfg))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        await asyncio.sleep(0)  # the cancel record is written before anyone reads the state back
        if api == "anthropic":
            return web.json_response(await self.anthropic_batch(bm, cancelling=True))
        return web.json_response(await self.openai_batch(bm, cancelling=True))

    # -- Anthropic message batches --------------------------------------------------------------
    async def create_message_batch(self, request: web.Request) -> web.Response:
        raw = await self.ing.body(request, self.ing.s.max_file_bytes)
        if isinstance(raw, HttpError):
            return self.error(raw, "anthropic")
        try:
            body = msgspec.json.decode(raw)
            reqs = body["requests"]
            assert isinstance(reqs, list) and reqs
        except (msgspec.DecodeError, KeyError, TypeError, AssertionError):
            return self.error(bad_request("send {\"requests\": [{\"custom_id\": ..., \"params\": {...}}, ...]}"), "anthropic")
        fid = "file-" + uuid.uuid4().hex[:24]
        with open(self.path(fid), "wb") as f:  # the batch machinery reads Anthropic lines as they are
            for r in reqs:
                f.write(msgspec.json.encode(r) + b"\n")
        bm = await self.start(request, self.path(fid), fid, "/v1/messages", None, "anthropic")
        if isinstance(bm, HttpError):
            return self.error(bm, "anthropic")
        return web.json_response(await self.anthropic_batch(bm))

    async def anthropic_batch(self, bm: BatchMeta, cancelling: bool = False) -> dict[str, Any]:
        st = await batches.status(self.ing.client.js, bm.id)
        counts = st["request_counts"] if st else {"total": 0, "completed": 0, "failed": 0}
        pb = st["panelboard"] if st else {"cancelled": 0, "expired": 0, "pending": 0}
        state = st["status"] if st else "in_progress"
        ended = state in ("completed", "cancelled", "failed")
        cancel_at = st.get("cancelling_at") if st else None
        if cancelling and cancel_at is None:
            cancel_at = int(time.time())
        return {
            "id": bm.id, "type": "message_batch",
            "processing_status": "ended" if ended else "canceling" if cancel_at else "in_progress",
            "request_counts": {"processing": 0 if ended else max(0, counts["total"] - counts["completed"] - counts["failed"]),
                               "succeeded": counts["completed"],
                               "errored": counts["failed"] - pb["cancelled"] - pb["expired"],
                               "canceled": pb["cancelled"], "expired": pb["expired"]},
            "created_at": _iso(bm.created_at), "expires_at": _iso(bm.created_at + WINDOW_S),
            "ended_at": _iso(st.get("completed_at") or st.get("cancelled_at")) if st and ended else None,
            "cancel_initiated_at": _iso(cancel_at) if cancel_at else None, "archived_at": None,
            "results_url": f"/v1/messages/batches/{bm.id}/results" if ended else None,
        }

    def _anthropic(self, request: web.Request) -> BatchMeta | None:
        bm = self.batch_meta(request.match_info["batch_id"])
        return bm if bm is not None and bm.api == "anthropic" else None

    async def retrieve_message_batch(self, request: web.Request) -> web.Response:
        bm = self._anthropic(request)
        if bm is None:
            return self.error(not_found(f"no message batch {request.match_info['batch_id'][:80]!r}"), "anthropic")
        return web.json_response(await self.anthropic_batch(bm))

    async def message_batch_results(self, request: web.Request) -> web.StreamResponse:
        """One line per request, as Anthropic's results: succeeded (with the Message),
        errored, canceled or expired."""
        from panelboard.ingress import anthropic_shape

        bm = self._anthropic(request)
        if bm is None:
            return self.error(not_found(f"no message batch {request.match_info['batch_id'][:80]!r}"), "anthropic")
        out, err = self.path(f"file-{bm.id}-output"), self.path(f"file-{bm.id}-errors")
        await batches.results(self.ing.client.js, bm.id, out, err)
        resp = web.StreamResponse(headers={"content-type": "application/binary"})
        await resp.prepare(request)
        for path in (out, err):
            if not path.exists():
                continue
            with open(path, "rb") as f:
                for line in f:
                    rec = msgspec.json.decode(line)
                    r = rec.get("response")
                    if r is not None and r.get("status_code") == 200:
                        result: dict[str, Any] = {"type": "succeeded", "message": anthropic_shape.message(r["body"], r["body"].get("model", ""))}
                    elif rec.get("error") and rec["error"].get("code") in ("batch_cancelled", "batch_expired"):
                        result = {"type": "canceled" if rec["error"]["code"] == "batch_cancelled" else "expired"}
                    else:
                        e = (r or {}).get("body", {}).get("error", {})
                        result = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": e.get("message", "")}}}
                    await resp.write(msgspec.json.encode({"custom_id": rec.get("custom_id"), "result": result}) + b"\n")
        await resp.write_eof()
        return resp

    async def stop(self, _app: web.Application) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def add_routes(app: web.Application, ing: "Ingress") -> None:
    files = Files(ing, Path(ing.s.files_dir or ".panelboard/files"))
    app.on_cleanup.insert(0, files.stop)
    r = app.router
    r.add_post("/v1/files", files.upload)
    r.add_get("/v1/files/{file_id}", files.retrieve_file)
    r.add_get("/v1/files/{file_id}/content", files.content)
    r.add_delete("/v1/files/{file_id}", files.delete)
    r.add_post("/v1/batches", files.create_batch)
    r.add_get("/v1/batches", files.list_batches)
    r.add_get("/v1/batches/{batch_id}", files.retrieve_batch)
    r.add_post("/v1/batches/{batch_id}/cancel", files.cancel_batch)
    r.add_post("/v1/messages/batches", files.create_message_batch)
    r.add_get("/v1/messages/batches/{batch_id}", files.retrieve_message_batch)
    r.add_get("/v1/messages/batches/{batch_id}/results", files.message_batch_results)
    r.add_post("/v1/messages/batches/{batch_id}/cancel", lambda req: files.cancel_batch(req, "anthropic"))
