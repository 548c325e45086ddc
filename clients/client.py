"""The async SDK.

    async with Client() as c:
        r = await c.chat([{"role": "user", "content": "hi"}], intent="extraction")
        h = await c.submit(messages, intent="reasoning", job_id="order-42")
        result = await h.result(timeout=30)
        async for r in c.as_completed(handles): ...         # results as they finish
        async for r in c.map(prompts, intent="extraction", concurrency=32): ...   # in input order
        await c.cancel(h.id)                                 # True: taken out of the queue, never called
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from panelboard.clients import control
from panelboard.clients.errors import PanelboardError, ResultTimeout, ServerUnreachable, exception_for, too_large
from panelboard.transport import tracing
from panelboard.transport.bus import TRANSIENT, publish_retrying
from panelboard.schemas import wire
from panelboard.schemas.chat import MODELLED, ChatChunk, ChatRequest, ChatResponse, Message, as_chunk
from panelboard.schemas.codec import decode_chunk, decode_result, encode
from panelboard.schemas.control import CancelRequest
from panelboard.schemas.embeddings import EmbeddingsRequest, EmbeddingsResponse
from panelboard.schemas.job import ID_RE, Completed, Embedded, Failed, Job, Priority, Result

MessagesLike = Iterable[Message | dict[str, Any]] | ChatRequest
PUBLISH_PATIENCE_S = 60.0  # how long a submit keeps retrying (same job id) while NATS is away


def new_id() -> str:
    return uuid.uuid4().hex


def to_request(messages: MessagesLike | str, **params: Any) -> ChatRequest:
    """A ChatRequest from messages and chat-completions fields (tools=..., response_format=...);
    a field the schema does not model is passed through to OpenAI-family providers as is."""
    if isinstance(messages, ChatRequest):
        return messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    given = {k: v for k, v in params.items() if v is not None}
    known = {k: given.pop(k) for k in list(given) if k in MODELLED}
    return msgspec.convert({"messages": list(messages), **known, "passthrough": given}, ChatRequest, from_attributes=True)


class JobHandle:
    def __init__(self, client: "Client", job_id: str, seq: int | None = None, team: str | None = None):
        self.client = client
        self.id = job_id
        self.seq = seq  # its PB_JOBS sequence (None: answered from a stored result, not sent)
        self.team = team or client.team

    async def result(self, timeout: float | None = None) -> Result:
        return await self.client.result(self.id, timeout, team=self.team)

    async def response(self, timeout: float | None = None) -> ChatResponse:
        """The ChatResponse, or the JobFailed subclass matching the error."""
        return unwrap(await self.result(timeout))

    async def cancel(self) -> bool:
        return await self.client.cancel(self.id)

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"


def unwrap(result: Result) -> ChatResponse:
    """A Completed result's response; a Failed one raises the JobFailed subclass of its error
    kind (UnknownIntentError, ChainExhaustedError, JobCancelledError, ...)."""
    if isinstance(result, Failed):
        raise exception_for(result)
    if isinstance(result, Embedded):
        raise PanelboardError(f"job {result.job_id} is an embeddings job: use Client.embed")
    return result.response


def check_id(what: str, value: str) -> None:
    """Ids become subject tokens: refuse a bad one before anything is published."""
    if not ID_RE.match(value):
        raise ValueError(f"{what} {value[:64]!r} ({len(value)} characters) is not valid: use 1-128 characters "
                         "from A-Z a-z 0-9 _ - (no dots, spaces or wildcards: ids become NATS subject tokens)")


EARLY_REJECTS = 4096  # rejects seen before their PubAck (or for another process of the team)


class Client:
    """One team's submitter. Results of the team's jobs are on pb.results.<team>.<job>, so any
    process of the team that knows a job id gets its result; a publish refused before the
    broker could claim it is answered on pb.rejects.<team>.<seq> (seq from the PubAck)."""

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        client_id: str | None = None,
        key: str | None = None,
        team: str = "default",
        nc: NATS | None = None,
        publish_patience_s: float = PUBLISH_PATIENCE_S,
    ):
        check_id("team", team)
        self._url = nats_url
        self.publish_patience_s = publish_patience_s
        self.client_id = client_id or "c" + new_id()[:16]  # informational: names the connection
        self.key = key
        self.team = team
        self.nc = nc
        self._own_nc = nc is None
        self._waiting: dict[tuple[str, str], asyncio.Future[Result]] = {}  # (team, job id)
        self._seqs: dict[tuple[str, int], tuple[str, str]] = {}  # (team, PB_JOBS seq) -> (team, job id)
        self._seq_of: dict[tuple[str, str], list[int]] = {}
        self._early: OrderedDict[tuple[str, int], Failed] = OrderedDict()
        # Jobs this client published while subscribed to their results: result() need not
        # look in the stream for them (a reconnect re-reads every waiting job: _resync).
        self._watched: set[tuple[str, str]] = set()
        self._subs: dict[str, list[Any]] = {}

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self.nc is None:
            # Here, not at the top: structlog and the connect helpers load only when a client connects.
            from panelboard.transport.connection import UnreachableError, connect, find_url

            url = find_url(self._url)
            if url is None:
                raise PanelboardError("no NATS URL: pass nats_url, set PANELBOARD_NATS_URL, or run `panelboard up` in this directory")
            try:
                self.nc = await connect(url, f"panelboard-client-{self.client_id}", on_reconnect=self._resync)
            except UnreachableError as e:
                raise ServerUnreachable(str(e)) from None
        self.js = self.nc.jetstream()
        # Subscribe before the first submit, so no live result can slip past us.
        await self._listen(self.team)

    async def _listen(self, team: str) -> None:
        if team in self._subs:
            return
        assert self.nc is not None
        self._subs[team] = [await self.nc.subscribe(wire.results_of(team), cb=self._on_result),
                            await self.nc.subscribe(wire.rejects_of(team), cb=self._on_reject)]
        await self.nc.flush()  # the server has the interest before we publish

    async def close(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                await sub.unsubscribe()
        self._subs.clear()
        if self._own_nc and self.nc is not None:
            await self.nc.drain()

    async def _resync(self) -> None:
        """Results published while we were disconnected never reached our subscription:
        read them from the stream (retrying while a restarted server brings JetStream up)."""
        by_job = {job: (team, seq) for (team, seq), job in self._seqs.items()}
        for job, fut in list(self._waiting.items()):
            subjects = [wire.result(*job)]
            if job in by_job:
                subjects.append(wire.reject(*by_job[job]))
            for subject in subjects:
                delay = 0.1
                while not fut.done():
                    try:
                        raw = await self.js.get_last_msg(wire.RESULTS_STREAM, subject, direct=True)
                    except NotFoundError:
                        break
                    except (*TRANSIENT, nats.errors.ConnectionClosedError):
                        if self.nc is None or self.nc.is_closed or delay > 5:
                            break
                        await asyncio.sleep(delay)
                        delay *= 2
                        continue
                    if not fut.done():
                        fut.set_result(decode_result(raw.data or b""))

    async def _on_result(self, msg: Msg) -> None:
        _, _, team, job_id = msg.subject.split(".", 3)
        fut = self._waiting.get((team, job_id))
        if fut is not None and not fut.done():
            fut.set_result(decode_result(msg.data))

    async def _on_reject(self, msg: Msg) -> None:
        _, _, team, seq = msg.subject.split(".", 3)
        key = (team, int(seq))
        job = self._seqs.get(key)
        if job is None:  # its PubAck is not in yet (or another process of the team sent it)
            self._early[key] = decode_result(msg.data)  # type: ignore[assignment]
            if len(self._early) > EARLY_REJECTS:
                self._early.popitem(last=False)
            return
        fut = self._waiting.get(job)
        if fut is not None and not fut.done():
            fut.set_result(decode_result(msg.data))

    def _future(self, job: tuple[str, str]) -> asyncio.Future[Result]:
        fut = self._waiting.get(job)
        if fut is None:
            fut = self._waiting[job] = asyncio.get_running_loop().create_future()
        return fut

    async def submit(
        self,
        messages: MessagesLike | str,
        *,
        intent: str | None = None,
        job_id: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        feature: str | None = None,
        metadata: dict[str, Any] | None = None,
        priority: Priority = "interactive",
        deadline: float | None = None,
        team: str | None = None,
        **request: Any,
    ) -> JobHandle:
        """Enqueue a job. Idempotent by (team, job id): the same id twice is one job, one
        provider call, one result; with an explicit `job_id` a result already stored (by this
        or any earlier process of the team) is returned without sending the job again.
        `request`: chat-completions fields (tools, tool_choice, response_format, seed, ...)."""
        if job_id is not None:
            check_id("job id", job_id)
        job = Job(
            id=job_id or new_id(),
            client=self.client_id,
            request=to_request(messages, max_tokens=max_tokens, temperature=temperature, **request),
            intent=intent,
            key=self.key,
            team=team or self.team,
            feature=feature,
            metadata=metadata or {},
            priority=priority,
            deadline=deadline,
        )
        return await self.submit_job(job, reuse=job_id is not None)

    async def submit_job(self, job: Job, *, reuse: bool = False, payload: bytes | None = None) -> JobHandle:
        """Publish a Job. `reuse`: first look for a stored result of this job id (skipped for
        fresh ids: nothing can be stored under a random id, and it costs a round trip).
        `payload`: the job already encoded, sent instead of `encode(job)` (the HTTP ingress
        passes a request's JSON through as the caller sent it, fields the Struct lacks included)."""
        check_id("job id", job.id)
        check_id("team", job.team)
        await self._listen(job.team)
        key = (job.team, job.id)
        fut = self._future(key)
        if reuse and not fut.done() and job.run == 0:
            stored = await self.lookup(job.id, job.team)
            if stored is not None:
                if not fut.done():
                    fut.set_result(stored)
                return JobHandle(self, job.id, team=job.team)
        # A publish that timed out may still have been stored: retrying with the same
        # Nats-Msg-Id (unique to this call) is safe, the stream drops the duplicate. While the
        # server restarts (or a cluster elects a leader) we keep retrying for publish_patience_s.
        headers = tracing.submitted({wire.HDR_MSG_ID: wire.submit_msg_id(job.team, job.id, new_id()[:16])}, job.team, job.id)
        data = encode(job) if payload is None else payload
        nc = self.nc
        assert nc is not None, "connect() first"
        try:
            ack = await publish_retrying(self.js, wire.jobs(job.team, job.intent), data, headers,
                                         patience_s=self.publish_patience_s, timeout_s=5.0)
        except nats.errors.MaxPayloadError:
            self._waiting.pop(key, None)
            raise too_large(job.id, len(data), nc.max_payload, job.metadata) from None
        self._watched.add(key)
        at = (job.team, ack.seq)
        early = self._early.pop(at, None)
        if early is not None:
            if not fut.done():
                fut.set_result(early)
        elif not fut.done():
            self._seqs[at] = key
            self._seq_of.setdefault(key, []).append(ack.seq)
        return JobHandle(self, job.id, ack.seq, job.team)

    async def lookup(self, job_id: str, team: str | None = None) -> Result | None:
        """A result already in the results stream: for late or restarted clients. None also
        when the stream cannot answer right now (a cluster electing a leader): the live
        subscription, and the re-check after a reconnect, still deliver it."""
        try:
            raw = await self.js.get_last_msg(wire.RESULTS_STREAM, wire.result(team or self.team, job_id), direct=True)
        except (NotFoundError, nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError):
            return None
        return decode_result(raw.data or b"")

    async def result(self, job_id: str, timeout: float | None = None, team: str | None = None, *, stored: bool = True) -> Result:
        """`stored=False`: do not look in the results stream first, for a job this client
        has just submitted under a fresh id (its result can only arrive live; saves a round trip)."""
        key = (team or self.team, job_id)
        fut = self._future(key)
        if stored and not fut.done() and key not in self._watched:
            found = await self.lookup(job_id, key[0])
            if found is not None and not fut.done():
                fut.set_result(found)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise ResultTimeout(job_id, timeout or 0) from None
        finally:
            if fut.done():
                self._waiting.pop(key, None)
                self._watched.discard(key)
                for seq in self._seq_of.pop(key, ()):
                    self._seqs.pop((key[0], seq), None)

    async def chat(self, messages: MessagesLike | str, *, intent: str | None = None, timeout: float | None = 120, **kw: Any) -> ChatResponse:
        h = await self.submit(messages, intent=intent, **kw)
        return await h.response(timeout)

    async def embed(self, input: str | list[str | int | list[int]], *, intent: str | None = None, job_id: str | None = None, timeout: float | None = 120,
                    feature: str | None = None, metadata: dict[str, Any] | None = None, team: str | None = None,
                    **request: Any) -> EmbeddingsResponse:
        """An embeddings job (OpenAI's /v1/embeddings shape: `dimensions`, `encoding_format`...)
        through the same queue: the response, or the JobFailed subclass of its error."""
        if job_id is not None:
            check_id("job id", job_id)
        job = Job(id=job_id or new_id(), client=self.client_id, embeddings=EmbeddingsRequest(input=input, **request), intent=intent,
                  key=self.key, team=team or self.team, feature=feature, metadata=metadata or {})
        h = await self.submit_job(job, reuse=job_id is not None)
        r = await h.result(timeout)
        if isinstance(r, Failed):
            raise exception_for(r)
        if not isinstance(r, Embedded):
            raise PanelboardError(f"job {r.job_id} answered with a chat completion, not embeddings")
        return r.response

    def stream(self, messages: MessagesLike | str, *, intent: str | None = None, timeout: float | None = 120,
               job_id: str | None = None, **kw: Any) -> "ChunkStream":
        """Submit a job with `stream: true` and iterate over its chunks (ChatChunk, OpenAI's
        chat.completion.chunk shape) as the provider writes them:

            s = client.stream(messages, intent="agent-planning")
            async for chunk in s:
                print(chunk.choices[0].delta.content or "", end="")
            s.result   # the terminal Completed (the assembled answer, as a plain job's)

        A Failed result (before or after some chunks) raises its JobFailed subclass once the
        chunks that came are yielded. A job id already answered yields its stored answer as one
        chunk. The job still goes through admission, routing, pool caps and retries."""
        return ChunkStream(self, messages, intent=intent, timeout=timeout, job_id=job_id or new_id(), **kw)

    async def cancel(self, job_id: str, team: str | None = None, timeout: float = 60.0) -> bool:
        """Cancel a job of this client's team that has not started. True: it was taken out of its
        queue before any broker or worker took it, it gets a Failed result of kind
        `cancelled`, and no provider is called for it. Also True for a job waiting in a
        provider's batch lane, before or inside a provider batch: it gets no other result
        (a line the provider batch had already run is billed). False: a broker or worker
        already has it (or it has finished, or no such job is queued); it runs to its own result.

        A request on pb.control.<team>.cancel, answered by a broker, which does the work (it
        reads the queues once, so it takes longer the deeper they are; see broker/cancel.py).
        Raises ControlError when no broker answers within `timeout`, or it refuses. `team`:
        another team's job, for a client that submits for several (the HTTP ingress)."""
        if self.nc is None:
            raise PanelboardError("the client is not connected: use `async with Client(...)` or `await client.connect()`")
        reply = await control.cancel(self.nc, team or self.team, CancelRequest(job_id=job_id, reason="Client.cancel"), timeout)
        return job_id in reply.ids

    async def as_completed(self, handles: Iterable[JobHandle | str], timeout: float | None = None) -> AsyncGenerator[Result, None]:
        """Each job's Result as it arrives (Completed | Failed), whatever the order they were
        submitted in. `timeout` bounds the whole wait: ResultTimeout names a job still out."""
        hs = [h if isinstance(h, JobHandle) else JobHandle(self, h) for h in handles]
        pending = {asyncio.ensure_future(h.result()): h.id for h in hs}
        end = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            while pending:
                left = None if end is None else max(0.0, end - asyncio.get_running_loop().time())
                done, _ = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise ResultTimeout(next(iter(pending.values())), timeout or 0)
                for t in done:
                    pending.pop(t)
                    yield t.result()
        finally:
            for t in pending:
                t.cancel()

    async def map(
        self,
        items: Iterable[MessagesLike | str],
        *,
        intent: str | None = None,
        concurrency: int = 64,
        ordered: bool = True,
        id_prefix: str | None = None,
        timeout: float | None = None,
        **submit_kw: Any,
    ) -> AsyncGenerator[Result, None]:
        """Run one job per item (a prompt, a message list or a ChatRequest) with at most
        `concurrency` jobs submitted and not yet yielded; yield each Result (Completed |
        Failed) in input order, or as they finish with `ordered=False`. The iterable is read
        as the window moves, so it may be a generator of millions. With `id_prefix`, job i is
        `<id_prefix>-<i>`: a restarted run resubmits the same ids and gets the same results
        instead of paying twice. `timeout` bounds each job's wait."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")

        async def one(i: int, item: MessagesLike | str) -> Result:
            job_id = f"{id_prefix}-{i}" if id_prefix else None
            h = await self.submit(item, intent=intent, job_id=job_id, **submit_kw)
            return await h.result(timeout)

        window: deque[asyncio.Task[Result]] = deque()
        it = iter(enumerate(items))
        try:
            while True:
                while len(window) < concurrency:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    window.append(asyncio.ensure_future(one(*nxt)))
                if not window:
                    return
                if ordered:
                    yield await window.popleft()
                else:
                    done, _ = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        window.remove(t)
                        yield t.result()
        finally:
            for t in window:
                t.cancel()


class ChunkStream:
    """One streamed job (see Client.stream): iterate once; `result` is set when it ends."""

    DRAIN_S = 5.0  # how long chunks the result counted may trail it (another route through a cluster)

    def __init__(self, client: Client, messages: MessagesLike | str, *, intent: str | None, timeout: float | None, job_id: str, **kw: Any):
        self.client, self.messages, self.intent, self.timeout, self.id, self.kw = client, messages, intent, timeout, job_id, kw
        self.result: Result | None = None

    def __aiter__(self) -> AsyncGenerator[ChatChunk, None]:
        return self._run()

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        c = self.client
        assert c.nc is not None, "connect the client first"
        team = self.kw.get("team") or c.team
        # Subscribed before the submit, so the first chunk cannot slip past. Chunks and the end
        # of the job meet in one queue: one cheap get per chunk.
        q: asyncio.Queue[Msg | None] = asyncio.Queue()
        sub = await c.nc.subscribe(wire.chunks(team, self.id), cb=q.put)
        ended: asyncio.Future[Result] | None = None
        try:
            await c.nc.flush()
            h = await c.submit(self.messages, intent=self.intent, job_id=self.id, stream=True, **self.kw)
            ended = asyncio.ensure_future(h.result(self.timeout))
            ended.add_done_callback(lambda _: q.put_nowait(None))
            got = 0
            while (msg := await q.get()) is not None:
                got += 1
                yield decode_chunk(msg.data)
            result = self.result = ended.result()
            # Chunks published before the result may still be on their way to the queue (each
            # subscription has its own task); a Completed result says how many there were.
            counted = result.chunks if isinstance(result, Completed) else None
            give_up = asyncio.get_running_loop().time() + self.DRAIN_S
            while q.qsize() or sub.pending_msgs or (counted is not None and got < counted):
                try:
                    msg = await asyncio.wait_for(q.get(), max(0.0, give_up - asyncio.get_running_loop().time()))
                except asyncio.TimeoutError:
                    break
                if msg is not None:
                    got += 1
                    yield decode_chunk(msg.data)
        finally:
            if ended is not None and not ended.done():
                ended.cancel()
            await sub.unsubscribe()
        if isinstance(result, Failed):
            raise exception_for(result)
        if got == 0 and isinstance(result, Completed):  # answered before (a stored result): the whole answer as one chunk
            yield as_chunk(result.response)


__all__ = ["ChunkStream", "Client", "Completed", "Failed", "JobHandle", "unwrap"]
