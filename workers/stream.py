"""One streaming provider call: read the provider's SSE stream, forward each chunk on the
job's core NATS subject (pb.chunks.<team>.<job>, header Pb-Chunk = its index) as it comes, and
return an Outcome like any call.

Until the first chunk is forwarded a failure is an ordinary one (429, 5xx, timeout: retried
or moved to the next hop by the usual decision); after it, the client holds part of an answer,
so a cut, an SSE error event or a stall is a StreamBroken, which ends the job Failed. The idle
bound between two events is the call's timeout, never past the job's deadline.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from nats.aio.client import Client as NATS

from panelboard.schemas import wire
from panelboard.schemas.chat import ChatChunk, assemble
from panelboard.schemas.config import Model
from panelboard.schemas.job import Job
from panelboard.workers.outcome import Ok, Outcome, ServerError, StreamBroken, Timeout
from panelboard.workers.providers.base import Adapter, Unsupported, classify_error, rate_of
from panelboard.workers.providers.sse import StreamError, events


async def stream_call(adapter: Adapter, nc: NATS, job: Job, model: Model, request_id: str, timeout_s: float) -> Outcome:
    try:
        body = adapter.stream_body(job.request, model)
    except Unsupported as e:
        return adapter.inexpressible(e)
    loop = asyncio.get_running_loop()
    until = None if job.deadline is None else loop.time() + (job.deadline - time.time())
    subject = wire.chunks(job.team, job.id)
    want_usage = bool((job.request.stream_options or {}).get("include_usage"))  # else a usage-only chunk stays with us
    reader = adapter.translator(job.request)
    chunks: list[ChatChunk] = []
    sent, ttft_ms = 0, 0.0
    start = time.perf_counter()

    def elapsed() -> float:
        return (time.perf_counter() - start) * 1000

    def broken(message: str, timed_out: bool = False) -> StreamBroken | ServerError | Timeout:
        if sent == 0:  # nothing reached the client: an ordinary, retriable failure
            return Timeout(elapsed(), message) if timed_out else ServerError(502, elapsed(), message)
        return StreamBroken(elapsed(), message, sent, ttft_ms, reader.usage)

    r = None
    try:
        async with asyncio.timeout(timeout_s) as bound:
            r = await adapter.transport.handle_async_request(adapter.request(adapter.url(model), body, request_id, timeout_s))
            if r.status_code != 200:
                return classify_error(r.status_code, r.headers, await r.aread(), elapsed())
            async for event, data in events(r.aiter_raw()):
                for chunk, raw in reader.feed(event, data):
                    chunks.append(chunk)
                    if chunk.choices or want_usage:
                        await nc.publish(subject, raw, headers={wire.HDR_CHUNK: str(sent)})
                        if sent == 0:
                            ttft_ms = elapsed()
                        sent += 1
                if reader.done:
                    break
                nxt = loop.time() + timeout_s
                bound.reschedule(nxt if until is None else min(nxt, until))
    except StreamError as e:
        return broken(f"the provider sent an error event: {e}")
    except (TimeoutError, httpx.TimeoutException):
        return broken(f"no event within {timeout_s:.1f}s", timed_out=True)
    except httpx.HTTPError as e:
        return broken(f"the stream was cut: {type(e).__name__}: {e}")
    except Exception as e:  # an event we cannot read is the provider's fault
        return broken(f"unreadable stream: {type(e).__name__}: {str(e)[:200]}")
    finally:
        if r is not None:
            await r.aclose()
    if not reader.done or not chunks:
        return broken("the stream ended before the provider finished the answer")
    return Ok(assemble(chunks), elapsed(), rate_of(r.headers), ttft_ms=round(ttft_ms, 2), chunks=sent)
