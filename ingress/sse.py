"""Server-sent events from a job's chunk subject (wire.chunks): OpenAI's `data: {chunk}` lines
ending with `data: [DONE]`, or Anthropic's named events.

We subscribe before submitting, so no chunk is missed. Nothing is sent until the first chunk
or the Result: a job that fails before it streams gets its error as a plain HTTP error (the
SDK raises the matching exception); one that fails after chunks went out gets an `error`
event. A worker that answers in one piece (no chunks) is streamed from its Result.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from panelboard.ingress import anthropic_shape, openai_shape
from panelboard.ingress.choose import Options
from panelboard.ingress.errors import Api, HttpError, for_job_error
from panelboard.schemas import wire
from panelboard.schemas.job import Completed, Failed, Result

if TYPE_CHECKING:
    from panelboard.ingress.app import Ingress

SETTLE_ROUNDS = 3  # loop turns given to chunks already received when the Result lands first


class Relay:
    """One job's chunks and Result, in arrival order."""

    def __init__(self, ing: "Ingress"):
        self.ing = ing
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.sub: Any = None

    async def open(self, team: str, job_id: str) -> None:
        async def on_chunk(msg: Any) -> None:
            self.chunks.put_nowait(msg.data)

        assert self.ing.client.nc is not None
        self.sub = await self.ing.client.nc.subscribe(wire.chunks(team, job_id), cb=on_chunk)
        await self.ing.client.nc.flush()

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def events(self, result: "asyncio.Future[Result | HttpError]") -> Any:
        """Yields chunk bytes as they come, then the Result (or the ingress's error)."""
        while True:
            get = asyncio.ensure_future(self.chunks.get())
            either: set[asyncio.Future[Any]] = {get, result}
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                yield get.result()
                continue
            get.cancel()
            break
        # Chunks and the Result come on different subscriptions, each with its own task:
        # give chunks already read off the socket their turn before ending.
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)
        while not self.chunks.empty():
            yield self.chunks.get_nowait()
        yield result.result()


def _sse_response(job_id: str) -> web.StreamResponse:
    return web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache", "x-pb-job-id": job_id})


async def _run(ing: "Ingress", request: web.Request, req: dict[str, Any], opts: Options, api: Api, on_chunk: Any, on_end: Any) -> web.StreamResponse:
    """Shared shell: subscribe, submit, relay. `on_chunk(resp, bytes)` writes one chunk;
    `on_end(resp, Completed, streamed)` writes the end of a good stream."""
    from panelboard.clients.client import new_id

    opts = Options(opts.choice, opts.job_id or new_id(), opts.feature, opts.priority, opts.deadline_s)
    key = ing.key_of(request, api)
    team = await ing.teams.team_of(key)
    relay = Relay(ing)
    await relay.open(team, opts.job_id or "")
    resp: web.StreamResponse | None = None
    try:
        h = await ing.submit(request, req, opts, api)
        if isinstance(h, HttpError):
            return ing.error(h, api)
        result = asyncio.ensure_future(ing.result(h, opts))
        try:
            async for ev in relay.events(result):
                if isinstance(ev, bytes):
                    if resp is None:
                        resp = _sse_response(h.id)
                        await resp.prepare(request)
                    await on_chunk(resp, ev)
                    continue
                if isinstance(ev, HttpError) or isinstance(ev, Failed):
                    err = ev if isinstance(ev, HttpError) else for_job_error(ev.error, api)
                    if resp is None:
                        return ing.error(err, api)
                    await _error_event(resp, err, api)
                    return resp
                assert isinstance(ev, Completed)
                streamed = resp is not None
                if resp is None:
                    resp = _sse_response(h.id)
                    await resp.prepare(request)
                await on_end(resp, ev, streamed)
        finally:
            result.cancel()
    finally:
        await relay.close()
    assert resp is not None
    await resp.write_eof()
    return resp


async def _error_event(resp: web.StreamResponse, err: HttpError, api: Api) -> None:
    if api == "anthropic":
        await resp.write(b"event: error\ndata: " + err.body(api) + b"\n\n")
    else:
        await resp.write(b"data: " + err.body(api) + b"\n\n")


async def stream_openai(ing: "Ingress", request: web.Request, body: dict[str, Any], opts: Options) -> web.StreamResponse:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    async def on_chunk(resp: web.StreamResponse, data: bytes) -> None:
        await resp.write(b"data: " + data + b"\n\n")

    async def on_end(resp: web.StreamResponse, r: Completed, streamed: bool) -> None:
        if not streamed:
            for ch in openai_shape.chunks_of(openai_shape.completion(r), include_usage):
                await resp.write(b"data: " + msgspec.json.encode(ch) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")

    return await _run(ing, request, body, opts, "openai", on_chunk, on_end)


async def stream_anthropic(ing: "Ingress", request: web.Request, req: dict[str, Any], opts: Options, model: str) -> web.StreamResponse:
    tr = anthropic_shape.StreamTranslator(model)

    async def send(resp: web.StreamResponse, events: list[tuple[str, dict[str, Any]]]) -> None:
        for name, data in events:
            await resp.write(b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n")

    async def on_chunk(resp: web.StreamResponse, data: bytes) -> None:
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        await send(resp, tr.feed(chunk))

    async def on_end(resp: web.StreamResponse, r: Completed, streamed: bool) -> None:
        if not streamed:
            for ch in openai_shape.chunks_of(openai_shape.completion(r), include_usage=True):
                await send(resp, tr.feed(ch))
        await send(resp, tr.end())

    return await _run(ing, request, req, opts, "anthropic", on_chunk, on_end)
