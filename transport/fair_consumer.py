"""A pool lane read through one durable consumer per team, so one team's backlog cannot hold
another team's jobs behind it in stream order.

Which team consumers exist, and their max_ack_pending, is the lane's plan (`set_plan`, from
the provider's controller, workers/fair.py); the server enforces those limits across every
worker process. Here, deliveries are held per team and started in weighted fair order
(`FairOrder`), at most `cap` at once, so a process that holds more than it may start (several
teams' credit, or a lowered `cap`) still starts them fairly. Otherwise the same loop as
`Consumer`: credit only for free slots, `pause()`, and `drain()` naking what was not started.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from panelboard.transport.consumer import GET_TIMEOUT_S, log, nap
from panelboard.transport.puller import Puller

T = TypeVar("T")


class FairOrder:
    """Start-time fair queuing over teams: each start moves the team's virtual clock on by
    1/weight; the next start goes to the ready team with the earliest clock. A team coming back
    from idle starts at the current virtual time, so idling earns it no burst."""

    def __init__(self, weight: Callable[[str], float]):
        self.weight = weight
        self.clock: dict[str, float] = {}
        self.now = 0.0

    def pick(self, ready: list[str]) -> str:
        clock, now = self.clock, self.now
        return min(ready, key=lambda t: (max(clock.get(t, now), now), t))

    def started(self, team: str) -> None:
        start = max(self.clock.get(team, self.now), self.now)
        self.now = start
        self.clock[team] = start + 1.0 / self.weight(team)


class FairConsumer(Generic[T]):
    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: Callable[[str], str],  # team -> its consumer's name
        handle: Callable[[T], Coroutine[Any, Any, None]],
        *,
        cap: int,
        weight: Callable[[str], float],
        wrap: Callable[[Msg], T],
        unwrap: Callable[[T], Msg],
        team_of: Callable[[Msg], str],
        pause: Callable[[], float] | None = None,
        stopping: asyncio.Event | None = None,
        fields: dict[str, Any] | None = None,
    ):
        self.nc, self.stream, self.durable = nc, stream, durable
        self.handle, self.wrap, self.unwrap, self.team_of, self.pause = handle, wrap, unwrap, team_of, pause
        self.cap = cap
        self.stopping = stopping or asyncio.Event()
        self.fields = fields or {"stream": stream}
        self.order = FairOrder(weight)
        self.limits: dict[str, int] = {}  # the plan: team -> its consumer's max_ack_pending
        self.pullers: dict[str, Puller] = {}
        self.queue: asyncio.Queue[Msg | None] = asyncio.Queue()  # every puller delivers here
        self.waiting: dict[str, deque[T]] = {}  # delivered, not started, per team
        self.inflight: dict[asyncio.Task[None], T] = {}
        self.mine: dict[str, int] = {}  # per team: held + running here
        self.replan = False
        self._wake: asyncio.Future[None] | None = None
        self._running = False
        self._done = asyncio.Event()

    # -- the plan -------------------------------------------------------------------------
    def set_plan(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)
        self.replan = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self.queue.put_nowait(None)  # wake a loop waiting for a delivery

    async def _follow_plan(self) -> None:
        gone = [t for t in self.pullers if t not in self.limits]  # their consumers were deleted (idle)
        if gone:
            self._hold_ready()  # the queue is every team's: keep what came, stop() would hand it back
        for team in gone:
            for m in await self.pullers.pop(team).stop():
                await m.nak()
        for team in self.limits:
            if team not in self.pullers:
                p = Puller(self.nc, self.stream, self.durable(team))
                p.queue = self.queue
                await p.start()
                self.pullers[team] = p

    # -- held deliveries ------------------------------------------------------------------
    @property
    def held(self) -> Iterator[T]:
        for q in self.waiting.values():
            yield from q

    def _n_held(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def _hold(self, msg: Msg) -> None:
        team = self.team_of(msg)
        self.waiting.setdefault(team, deque()).append(self.wrap(msg))
        self.mine[team] = self.mine.get(team, 0) + 1

    def _hold_ready(self) -> None:
        queue = self.queue
        while not queue.empty():
            if (m := queue.get_nowait()) is not None:
                self._hold(m)

    def _start(self) -> None:
        inflight, waiting = self.inflight, self.waiting
        while len(inflight) < self.cap:
            ready = [t for t, q in waiting.items() if q]
            if not ready:
                return
            team = ready[0] if len(ready) == 1 else self.order.pick(ready)
            self.order.started(team)
            item = waiting[team].popleft()
            t = asyncio.create_task(self.handle(item))
            inflight[t] = item
            t.add_done_callback(functools.partial(self._finished, team))

    def _finished(self, team: str, t: asyncio.Task[None]) -> None:
        self.inflight.pop(t, None)
        self.mine[team] -= 1

    async def _top_up(self, free: int) -> None:
        """Credit per team consumer: our free slots, on every team with a limit. The server
        hands out no more than each team's max_ack_pending across processes, so credit beyond
        the limit only waits; keeping it out spares a pull request per job when a team's
        limit is as small as its one job in flight."""
        for team, p in self.pullers.items():
            if self.limits.get(team, 0) <= 0:
                continue
            try:
                await p.top_up(free)
            except Exception as e:  # reconnecting: nats-py retries underneath; the next turn asks again
                log.warning("consumer.pull_failed", error=type(e).__name__, team=team, **self.fields)

    def _paused_for(self) -> float:
        return self.pause() if self.pause is not None else 0.0

    async def _wait_inflight(self) -> None:
        """Until a handler finishes or the plan changes (a new team's consumer to pull from)."""
        if self.replan:
            return
        self._wake = asyncio.get_running_loop().create_future()
        await asyncio.wait([*self.inflight, self._wake], timeout=GET_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self._running = True
        self._done.clear()
        try:
            while not self.stopping.is_set():
                wait = self._paused_for()
                if wait > 0:  # backpressure: ask for nothing more, the jobs wait in the stream
                    await nap(self.stopping, wait)
                    continue
                if self.replan:
                    self.replan = False
                    await self._follow_plan()
                self._start()
                free = self.cap - len(self.inflight) - self._n_held()
                if free <= 0:
                    await self._wait_inflight()
                    continue
                await self._top_up(free)
                if self.inflight and all(p.idle for p in self.pullers.values()):
                    await self._wait_inflight()  # no credit out: only a finished call or a new plan changes anything
                    continue
                msg = await self._get()
                if msg is None:
                    continue
                self._hold(msg)
                self._hold_ready()
                if self.pause is not None and self._paused_for() > 0:
                    continue
                self._start()
        finally:
            for item in self.held:
                await self.unwrap(item).nak()
            self.waiting.clear()
            for p in self.pullers.values():
                for m in await p.stop():
                    await m.nak()
            if self.inflight:
                log.info("consumer.draining", inflight=len(self.inflight), **self.fields)
                await asyncio.wait(list(self.inflight))
            self._running = False
            self._done.set()

    async def _get(self) -> Msg | None:
        """The next delivery; None on timeout, a request's end, or a new plan."""
        try:
            return await asyncio.wait_for(self.queue.get(), GET_TIMEOUT_S)
        except (asyncio.TimeoutError, TimeoutError):
            return None

    async def drain(self) -> None:
        self.stopping.set()
        if self._running:
            await self._done.wait()
