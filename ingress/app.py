"""The aiohttp application: one SDK Client per process, requests in, Results out.

A request is authenticated by the broker, not here: its key rides in the Job and a bad one
comes back as a `bad_key` Result (401). The ingress only looks up which team a key belongs to
(jobs are published under their key's team) and refuses what it can see is malformed
without asking the queue: a body over the limit, JSON that is not a request, bad headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from panelboard.broker.keys import prefix_of
from panelboard.clients import Client
from panelboard.clients.client import JobHandle, new_id
from panelboard.clients.errors import JobFailed, ResultTimeout
from panelboard.ingress import anthropic_shape, choose, openai_shape
from panelboard.ingress.errors import Api, HttpError, bad_request, for_job_error, gateway_timeout, too_large
from panelboard.ingress.keys import KeyTeams
from panelboard.schemas import wire
from panelboard.schemas.chat import ChatRequest
from panelboard.schemas.config import Config
from panelboard.schemas.embeddings import EmbeddingsRequest
from panelboard.schemas.job import Completed, Embedded, Failed, Job, Result
from panelboard.transport import logs

log = logs.get("ingress")

RESULT_WAIT_S = 600.0  # a request without x-pb-deadline waits this long for its Result
READ_CHUNK = 64 * 1024


@dataclass
class Settings:
    cfg: Config
    nats_url: str
    max_body_bytes: int
    result_wait_s: float = RESULT_WAIT_S
    database_url: str | None = None
    files_dir: str | None = None
    max_file_bytes: int = 512 * 1024 * 1024


@dataclass
class Counters:
    """Requests by route and status, served at /metrics."""

    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))


class Ingress:
    def __init__(self, settings: Settings):
        self.s = settings
        self.cfg = settings.cfg
        self.client = Client(settings.nats_url, client_id="ingress-" + new_id()[:12])
        self.teams = KeyTeams(settings.cfg, settings.database_url)
        self.counters = Counters()
        self.cancels: set[asyncio.Task[Any]] = set()  # cancels of jobs whose caller went away

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, _app: web.Application) -> None:
        await self.client.connect()

    async def stop(self, _app: web.Application) -> None:
        if self.cancels:  # give cancels of callers that went away up to 10 s to reach the queue
            await asyncio.wait(self.cancels, timeout=10)
        await self.client.close()
        await self.teams.close()

    # -- request pieces ---------------------------------------------------------------------
    async def body(self, request: web.Request, limit: int | None = None) -> bytes | HttpError:
        """The body, refused before it is read whole when it is over the limit: by its
        Content-Length when it says, else as soon as what arrived passes the limit."""
        limit = limit or self.s.max_body_bytes
        over = too_large(f"the request body is over this gateway's limit of {limit} bytes; send a shorter prompt "
                         "(or ask the operator to raise --max-body-bytes)")
        if request.content_length is not None and request.content_length > limit:
            return over
        buf = bytearray()
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            buf += chunk
            if len(buf) > limit:
                return over
        return bytes(buf)

    async def json_body(self, request: web.Request) -> dict[str, Any] | HttpError:
        raw = await self.body(request)
        if isinstance(raw, HttpError):
            return raw
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as e:
            return bad_request(f"the body is not JSON: {e}")
        if not isinstance(body, dict):
            return bad_request("the body must be a JSON object")
        return body

    @staticmethod
    def key_of(request: web.Request, api: Api) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        return request.headers.get("x-api-key") or None

    def options(self, request: web.Request, model: Any) -> choose.Options | HttpError:
        if model is not None and not isinstance(model, str):
            return bad_request("model must be a string", param="model")
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-pb-")}
        return choose.options(self.cfg, model, headers)

    async def submit(self, request: web.Request, req: dict[str, Any], opts: choose.Options, api: Api) -> JobHandle | HttpError:
        """Publish the request as a Job: validated by the chat schema, sent as the caller's
        JSON (so fields the schema does not model reach the provider's adapter)."""
        key = self.key_of(request, api)
        team = await self.teams.team_of(key)
        req = {k: v for k, v in req.items() if k != "model"}
        if opts.choice.pinned:
            req["model"] = opts.choice.pinned
        try:
            typed = msgspec.convert(req, ChatRequest)
        except msgspec.ValidationError as e:
            return bad_request(f"the request does not fit the chat-completions shape: {e}")
        job = Job(id=opts.job_id or new_id(), request=typed, client=self.client.client_id, intent=opts.choice.intent,
                  key=key, team=team, feature=opts.feature, priority=opts.priority,  # type: ignore[arg-type]
                  deadline=choose.deadline_at(opts))
        wire_job = msgspec.to_builtins(job)
        wire_job["request"] = req
        request["pb_job"] = job.id
        request["pb_key"] = prefix_of(key) or ("-" if key is None else "other")
        try:
            return await self.client.submit_job(job, reuse=opts.job_id is not None, payload=msgspec.json.encode(wire_job))
        except asyncio.CancelledError:  # the caller went away mid-publish: the job may be queued
            self.cancel_later(job.id, team)
            raise
        except JobFailed as e:  # the SDK's own refusal: over the server's max_payload
            return for_job_error(e.error, api)
        except Exception as e:  # a NATS that is away past the publish patience
            log.warning("ingress.submit_failed", job_id=job.id, error=type(e).__name__)
            return HttpError(503, "the queue is not reachable right now; retry shortly", "api_error", "unavailable", "overloaded_error")

    def wait_s(self, opts: choose.Options) -> float:
        return opts.deadline_s + 5.0 if opts.deadline_s is not None else self.s.result_wait_s

    async def result(self, h: JobHandle, opts: choose.Options) -> Result | HttpError:
        """The job's Result; if the caller goes away first, the job is cancelled should it
        still be queued (no provider call, no charge) and the handler's cancel goes on."""
        try:
            # A fresh id's result can only come live: no stored-result lookup (one round trip less).
            return await self.client.result(h.id, self.wait_s(opts), h.team, stored=opts.job_id is not None)
        except ResultTimeout:
            return gateway_timeout(f"job {h.id} has no result after {self.wait_s(opts):.0f}s; it is still queued or running: "
                                   f"send the same request again with x-pb-job-id: {h.id} to get its result")
        except asyncio.CancelledError:
            self.cancel_later(h.id, h.team)
            raise

    def cancel_later(self, job_id: str, team: str) -> None:
        async def go() -> None:
            done = await self.client.cancel(job_id, team)
            log.info("ingress.caller_gone", job_id=job_id, cancelled=done)
            # Its result (cancelled, or the answer of a job that had started) still comes: read
            # it, so the client's table of awaited jobs lets go of it.
            with contextlib.suppress(ResultTimeout):
                await self.client.result(job_id, self.s.result_wait_s, team)

        t = asyncio.ensure_future(go())
        self.cancels.add(t)
        t.add_done_callback(self.cancels.discard)

    async def answer(self, request: web.Request, body: dict[str, Any], opts: choose.Options, api: Api) -> Completed | web.Response:
        """Submit a chat request and await its Completed result; anything else as `api`'s error."""
        h = await self.submit(request, body, opts, api)
        if isinstance(h, HttpError):
            return self.error(h, api)
        r = await self.result(h, opts)
        if isinstance(r, HttpError):
            return self.error(r, api)
        if isinstance(r, Failed):
            return self.error(for_job_error(r.error, api), api)
        assert isinstance(r, Completed)  # a chat job ends Completed or Failed
        return r

    def error(self, err: HttpError, api: Api) -> web.Response:
        return web.Response(status=err.status, body=err.body(api), content_type="application/json", headers=err.headers)

    # -- OpenAI --------------------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        if isinstance(body, HttpError):
            return self.error(body, "openai")
        opts = self.options(request, body.get("model"))
        if isinstance(opts, HttpError):
            return self.error(opts, "openai")
        if body.get("stream"):
            from panelboard.ingress.sse import stream_openai

            return await stream_openai(self, request, body, opts)
        r = await self.answer(request, body, opts, "openai")
        if isinstance(r, web.Response):
            return r
        return web.Response(body=msgspec.json.encode(openai_shape.completion(r)), content_type="application/json",
                            headers=served_headers(r))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(openai_shape.model_list(choose.model_ids(self.cfg)))

    async def embeddings(self, request: web.Request) -> web.Response:
        """An embeddings job through the same queue (admission, route, pool caps, cost record)."""
        body = await self.json_body(request)
        if isinstance(body, HttpError):
            return self.error(body, "openai")
        opts = self.options(request, body.get("model"))
        if isinstance(opts, HttpError):
            return self.error(opts, "openai")
        req = {k: v for k, v in body.items() if k != "model"}
        if opts.choice.pinned:
            req["model"] = opts.choice.pinned
        try:
            typed = msgspec.convert(req, EmbeddingsRequest)
        except msgspec.ValidationError as e:
            return self.error(bad_request(f"the request does not fit the embeddings shape: {e}"), "openai")
        key = self.key_of(request, "openai")
        team = await self.teams.team_of(key)
        job = Job(id=opts.job_id or new_id(), embeddings=typed, client=self.client.client_id, intent=opts.choice.intent,
                  key=key, team=team, feature=opts.feature, priority=opts.priority,  # type: ignore[arg-type]
                  deadline=choose.deadline_at(opts))
        request["pb_job"] = job.id
        request["pb_key"] = prefix_of(key) or ("-" if key is None else "other")
        try:
            h = await self.client.submit_job(job, reuse=opts.job_id is not None)
        except JobFailed as e:
            return self.error(for_job_error(e.error, "openai"), "openai")
        r = await self.result(h, opts)
        if isinstance(r, HttpError):
            return self.error(r, "openai")
        if isinstance(r, Failed):
            return self.error(for_job_error(r.error, "openai"), "openai")
        if not isinstance(r, Embedded):  # a job id reused for a chat job
            return self.error(bad_request(f"job {r.job_id} is a chat completion, not embeddings: use another x-pb-job-id"), "openai")
        return web.Response(body=msgspec.json.encode(r.response), content_type="application/json", headers=served_headers(r))

    # -- Anthropic -----------------------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        if isinstance(body, HttpError):
            return self.error(body, "anthropic")
        opts = self.options(request, body.get("model"))
        if isinstance(opts, HttpError):
            return self.error(opts, "anthropic")
        try:
            req = anthropic_shape.chat_request(body)
        except anthropic_shape.Untranslatable as e:
            return self.error(bad_request(str(e)), "anthropic")
        model = str(body.get("model") or choose.AUTO)
        if req.get("stream"):
            from panelboard.ingress.sse import stream_anthropic

            return await stream_anthropic(self, request, req, opts, model)
        r = await self.answer(request, req, opts, "anthropic")
        if isinstance(r, web.Response):
            return r
        msg = anthropic_shape.message(openai_shape.completion(r), model)
        return web.Response(body=msgspec.json.encode(msg), content_type="application/json", headers=served_headers(r))

    # -- operational ---------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        nc = self.client.nc
        if nc is None or not nc.is_connected:
            return web.json_response({"ready": False, "why": "NATS is not connected"}, status=503)
        try:
            for stream in (wire.JOBS_STREAM, wire.RESULTS_STREAM):
                await asyncio.wait_for(self.client.js.stream_info(stream), 2)
        except Exception as e:
            return web.json_response({"ready": False, "why": f"stream {stream} not readable: {type(e).__name__}"}, status=503)
        return web.json_response({"ready": True})

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# TYPE panelboard_http_requests_total counter"]
        for (route, status), n in sorted(self.counters.requests.items()):
            lines.append(f'panelboard_http_requests_total{{route="{route}",status="{status}"}} {n}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    @web.middleware
    async def count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499  # the caller went away
            raise
        finally:
            self.counters.requests[(route, status)] += 1


def served_headers(r: Completed | Embedded) -> dict[str, str]:
    return {"x-pb-job-id": r.job_id, "x-pb-tier": r.tier, "x-pb-provider": r.provider, "x-pb-model": r.model,
            "x-pb-cost-usd": f"{r.cost_usd:.9f}"}


def build(settings: Settings) -> web.Application:
    ing = Ingress(settings)
    # client_max_size bounds what aiohttp itself would buffer (multipart uploads stream past it).
    app = web.Application(middlewares=[ing.count], client_max_size=settings.max_body_bytes)
    app["ingress"] = ing
    app.on_startup.append(ing.start)
    app.on_cleanup.append(ing.stop)
    r = app.router
    r.add_post("/v1/chat/completions", ing.chat_completions)
    r.add_post("/chat/completions", ing.chat_completions)
    r.add_get("/v1/models", ing.models)
    r.add_post("/v1/embeddings", ing.embeddings)
    r.add_post("/v1/messages", ing.messages)
    r.add_get("/healthz", ing.healthz)
    r.add_get("/readyz", ing.readyz)
    r.add_get("/metrics", ing.metrics)
    from panelboard.ingress import files_api

    files_api.add_routes(app, ing)
    return app

