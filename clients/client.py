"""The async SDK.

    async with Client() as c:
        r = await c.chat([{"role": "user", "content": "hi"}], intent="extraction")
        h = await c.submit(messages, intent="reasoning", job_id="order-42")
        result = await h.result(timeout=30)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Iterable

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from clients.errors import PanelboardError, ResultTimeout, exception_for
from schemas import wire
from schemas.chat import ChatRequest, ChatResponse, Message
from schemas.codec import decode_result, encode
from schemas.job import Completed, Failed, Job, Result

MessagesLike = Iterable[Message | dict[str, Any]] | ChatRequest


def new_id() -> str:
    return uuid.uuid4().hex


def to_request(messages: MessagesLike, **params: Any) -> ChatRequest:
    if isinstance(messages, ChatRequest):
        return messages
    msgs = [m if isinstance(m, Message) else msgspec.convert(m, Message) for m in messages]
    return ChatRequest(messages=msgs, **{k: v for k, v in params.items() if v is not None})


class JobHandle:
    def __init__(self, client: "Client", job_id: str):
        self.client = client
        self.id = job_id

    async def result(self, timeout: float | None = None) -> Result:
        return await self.client.result(self.id, timeout)

    async def response(self, timeout: float | None = None) -> ChatResponse:
        """The ChatResponse, or the JobFailed subclass matching the error."""
        r = await self.result(timeout)
        if isinstance(r, Failed):
            raise exception_for(r)
        return r.response

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"


class Client:
    def __init__(
        self,
        nats_url: str | None = None,
        *,
        client_id: str | None = None,
        key: str | None = None,
        team: str = "default",
        nc: NATS | None = None,
    ):
        self._url = nats_url
        self.client_id = client_id or "c" + new_id()[:16]
        self.key = key
        self.team = team
        self.nc = nc
        self._own_nc = nc is None
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._sub = None

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self.nc is None:
            from panelboard.runtime import connect, find_url

            url = find_url(self._url)
            if url is None:
                raise PanelboardError("no NATS URL: pass nats_url, set PANELBOARD_NATS_URL, or run `panelboard up` in this directory")
            self.nc = await connect(url, f"panelboard-client-{self.client_id}", on_reconnect=self._resync)
        self.js = self.nc.jetstream()
        # Subscribe before the first submit, so no live result can slip past us.
        self._sub = await self.nc.subscribe(f"pb.results.{self.client_id}.>", cb=self._on_result)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._own_nc and self.nc is not None:
            await self.nc.drain()

    async def _resync(self) -> None:
        """Results published while we were disconnected never reached our subscription:
        read them from the stream."""
        for job_id, fut in list(self._waiting.items()):
            if not fut.done():
                stored = await self.lookup(job_id)
                if stored is not None and not fut.done():
                    fut.set_result(stored)

    async def _on_result(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        fut = self._waiting.get(job_id)
        if fut is not None and not fut.done():
            fut.set_result(decode_result(msg.data))

    def _future(self, job_id: str) -> asyncio.Future[Result]:
        fut = self._waiting.get(job_id)
        if fut is None:
            fut = self._waiting[job_id] = asyncio.get_running_loop().create_future()
        return fut

    async def submit(
        self,
        messages: MessagesLike,
        *,
        intent: str | None = None,
        job_id: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        feature: str | None = None,
        metadata: dict[str, Any] | None = None,
        priority: str = "interactive",
        deadline: float | None = None,
        team: str | None = None,
    ) -> JobHandle:
        """Enqueue a job. Idempotent by job id: the same id twice is one job, one provider call."""
        job = Job(
            id=job_id or new_id(),
            client=self.client_id,
            request=to_request(messages, max_tokens=max_tokens, temperature=temperature),
            intent=intent,
            key=self.key,
            team=team or self.team,
            feature=feature,
            metadata=metadata or {},
            priority=priority,  # type: ignore[arg-type]
            deadline=deadline,
            submitted_at=time.time(),
        )
        return await self.submit_job(job)

    async def submit_job(self, job: Job) -> JobHandle:
        self._future(job.id)
        headers = {wire.HDR_MSG_ID: wire.submit_msg_id(job.id, job.run), wire.HDR_CLIENT: job.client}
        # A publish that timed out may still have been stored: retrying with the same
        # Nats-Msg-Id is safe, the stream drops the duplicate.
        for attempt in range(5):
            try:
                await self.js.publish(wire.jobs(job.intent), encode(job), headers=headers, timeout=5)
                break
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        return JobHandle(self, job.id)

    async def lookup(self, job_id: str) -> Result | None:
        """A result already in the results stream: for late or restarted clients. None also
        when the stream cannot answer right now (a cluster electing a leader): the live
        subscription, and the re-check after a reconnect, still deliver it."""
        try:
            raw = await self.js.get_last_msg(wire.RESULTS_STREAM, wire.result(self.client_id, job_id), direct=True)
        except (NotFoundError, nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError):
            return None
        return decode_result(raw.data)

    async def result(self, job_id: str, timeout: float | None = None) -> Result:
        fut = self._future(job_id)
        if not fut.done():
            stored = await self.lookup(job_id)
            if stored is not None and not fut.done():
                fut.set_result(stored)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise ResultTimeout(job_id, timeout or 0) from None
        finally:
            if fut.done():
                self._waiting.pop(job_id, None)

    async def chat(self, messages: MessagesLike, *, intent: str | None = None, timeout: float | None = 120, **kw: Any) -> ChatResponse:
        h = await self.submit(messages, intent=intent, **kw)
        return await h.response(timeout)


__all__ = ["Client", "Completed", "Failed", "JobHandle"]
