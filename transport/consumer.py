"""One capped pull loop around `Puller`, for every durable pull consumer of the project.

Two shapes, one loop:

- per message (`Consumer`): each delivery runs its own handler task, at most `cap` at once;
  deliveries beyond the free slots (or arriving while `pause()` says wait) are held, in
  arrival order, until a slot frees. The broker and the worker pool lanes.
- per batch (`BatchConsumer`): up to `cap` deliveries are handed over as one list and the
  handler is awaited before the next pull. The ledger writer and settlement.

Both keep pull requests outstanding only for free slots, ride out a reconnect (a failed
pull request is logged and retried at the next turn; nats-py reconnects underneath), and stop
the same way: `drain()` stops taking new deliveries, naks the ones delivered but not started
(they go straight back to the stream, for another process), waits for every handler still
running, however long (a long provider call is never cut), and returns. What handlers
ack or nak is theirs; the loop only naks what it never handed over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from panelboard.transport.logs import get as get_log
from panelboard.transport.puller import Puller

T = TypeVar("T")

GET_TIMEOUT_S = 0.5  # how often an idle loop looks at `stopping`

log = get_log("consumer")


async def nap(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, or less if `stopping` is set meanwhile: a loop's wait that never
    holds up a drain."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, seconds))
    except (asyncio.TimeoutError, TimeoutError):
        pass


class _Loop:
    """What both shapes share: the puller, the stop signal, the end of the loop."""

    def __init__(self, nc: NATS, stream: str, durable: str, *, cap: int, min_request: int,
                 stopping: asyncio.Event | None, fields: dict[str, Any] | None):
        self.puller = Puller(nc, stream, durable, min_request=min_request)
        self.cap = cap
        # Shared with the owner when it has its own stop signal (a SIGTERM handler sets it).
        self.stopping = stopping or asyncio.Event()
        self.fields = fields or {"stream": stream, "consumer": durable}
        self._running = False
        self._done = asyncio.Event()

    async def top_up(self, free: int) -> None:
        try:
            await self.puller.top_up(free)
        except Exception as e:  # reconnecting: nats-py retries underneath; the next turn asks again
            log.warning("consumer.pull_failed", error=type(e).__name__, **self.fields)

    async def drain(self) -> None:
        """Stop pulling, nak what was delivered but not started, wait for every handler
        still running (no time limit: a long call finishes and is acked), then return.
        Safe to call from any task, more than once, and before or after `run()` ends."""
        self.stopping.set()
        if self._running:
            await self._done.wait()

    def _begin(self) -> None:
        self._running = True
        self._done.clear()

    def _end(self) -> None:
        self._running = False
        self._done.set()


class Consumer(_Loop, Generic[T]):
    """Per-message handlers, at most `cap` at once. `wrap` turns a delivery into what the
    handler takes (the pool's Lease); `unwrap` gives the delivery back (to nak it at stop).
    Without them the handler takes the Msg itself. `pause()` > 0: ask for nothing and start
    nothing for that many seconds (backpressure); held deliveries wait meanwhile."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        handle: Callable[[T], Coroutine[Any, Any, None]],
        *,
        cap: int,
        min_request: int = 1,
        wrap: Callable[[Msg], T] | None = None,
        unwrap: Callable[[T], Msg] | None = None,
        pause: Callable[[], float] | None = None,
        stopping: asyncio.Event | None = None,
        fields: dict[str, Any] | None = None,
    ):
        super().__init__(nc, stream, durable, cap=cap, min_request=min_request, stopping=stopping, fields=fields)
        self.handle = handle
        self.wrap = wrap
        self.unwrap = unwrap
        self.pause = pause
        self.held: deque[T] = deque()  # delivered, not started: paused, or every slot busy
        self.inflight: dict[asyncio.Task[None], T] = {}

    def _start(self) -> None:
        inflight, held = self.inflight, self.held
        while held and len(inflight) < self.cap:
            item = held.popleft()
            t = asyncio.create_task(self.handle(item))
            inflight[t] = item
            t.add_done_callback(inflight.pop)

    def _paused_for(self) -> float:
        return self.pause() if self.pause is not None else 0.0

    async def run(self) -> None:
        self._begin()
        puller = self.puller
        await puller.start()
        try:
            while not self.stopping.is_set():
                wait = self._paused_for()
                if wait > 0:  # backpressure: ask for nothing more, the jobs wait in the stream
                    await nap(self.stopping, wait)
                    continue
                self._start()
                free = self.cap - len(self.inflight) - len(self.held)
                if free <= 0:
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                await self.top_up(free)
                if puller.idle and self.inflight:
                    # Too few free slots to be worth a pull request: let some handlers finish
                    # first, rather than idling in get() while the slots drain.
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                msg = await puller.get(timeout=GET_TIMEOUT_S)
                if msg is None:
                    continue
                self._hold(msg)
                self._hold_ready()
                if self.pause is not None and self._paused_for() > 0:
                    continue  # paused while we waited: hold them until the pause ends
                self._start()
        finally:
            # Stop fetching; what was delivered but not started goes straight back.
            unwrap = self.unwrap
            for item in self.held:
                await (unwrap(item) if unwrap is not None else item).nak()  # type: ignore[union-attr]
            self.held.clear()
            for m in await puller.stop():
                await m.nak()
            if self.inflight:
                log.info("consumer.draining", inflight=len(self.inflight), **self.fields)
                await asyncio.wait(list(self.inflight))
            self._end()

    def _hold(self, msg: Msg) -> None:
        self.held.append(self.wrap(msg) if self.wrap is not None else msg)  # type: ignore[arg-type]

    def _hold_ready(self) -> None:
        queue = self.puller.queue
        while not queue.empty():
            if (m := queue.get_nowait()) is not None:
                self._hold(m)


class BatchConsumer(_Loop):
    """Up to `cap` deliveries at a time, handed over as one list; the handler is awaited
    before the next pull, so the batch is the only thing in flight. With `linger_s`, a batch
    smaller than `cap` waits that long after its first delivery for more (at low load one
    transaction per record costs a writer ~2 ms CPU each); a full batch goes at once."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        handle: Callable[[list[Msg]], Coroutine[Any, Any, None]],
        *,
        cap: int,
        linger_s: float = 0.0,
        stopping: asyncio.Event | None = None,
        fields: dict[str, Any] | None = None,
    ):
        # Credit in chunks of half the cap while the rest is still out: asked for one batch at a
        # time, three settlement loops under load sent a pull request per 2-3 records (0.7 a job
        # at c=64, each server work and a write), where a batch of any size is handled the same.
        super().__init__(nc, stream, durable, cap=cap, min_request=max(1, cap // 2), stopping=stopping, fields=fields)
        self.handle = handle
        self.linger_s = linger_s

    async def run(self) -> None:
        self._begin()
        puller = self.puller
        await puller.start()
        try:
            while not self.stopping.is_set():
                await self.top_up(self.cap)
                msg = await puller.get(timeout=GET_TIMEOUT_S)
                if msg is not None:
                    await self.handle(await self._gather(msg))
        finally:
            for m in await puller.stop():
                await m.nak()
            self._end()

    async def _gather(self, first: Msg) -> list[Msg]:
        puller = self.puller
        batch = [first, *puller.take_ready()]
        if not self.linger_s:
            return batch
        loop = asyncio.get_running_loop()
        until = loop.time() + self.linger_s
        while len(batch) < self.cap and (left := until - loop.time()) > 0 and not self.stopping.is_set():
            await self.top_up(self.cap - len(batch))
            msg = await puller.get(timeout=left)  # None: the linger is over, or a request ended
            if msg is not None:
                batch += [msg, *puller.take_ready()]
        return batch

