"""A continuous pull consumer: keeps pull requests outstanding for the free slots and hands
over each message the moment it arrives.

nats-py's `fetch(n)` returns only when n messages came or its request expired, so at low load
a job waits out the whole expiry (1 s per hop, measured). Here every request has its own reply
subject, so a request's end (404/408/409) is seen, and the outstanding credit is topped up as
slots free.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"


class _Request:
    __slots__ = ("remaining", "deadline")

    def __init__(self, batch: int, deadline: float):
        self.remaining = batch
        self.deadline = deadline


class Puller:
    def __init__(self, nc: NATS, stream: str, consumer: str, expires_s: float = 5.0, min_request: int = 1):
        self.nc = nc
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.expires_s = expires_s
        self.min_request = min_request
        self.queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self.requests: dict[str, _Request] = {}
        self.prefix = nc.new_inbox()
        self.ids = itertools.count()
        self.sub: Subscription | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.prefix + ".*", cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    @property
    def idle(self) -> bool:
        """Nothing asked for and nothing waiting: get() could only time out."""
        return not self.requests and self.queue.empty()

    @property
    def credit(self) -> int:
        return sum(r.remaining for r in self.requests.values())

    async def top_up(self, free: int) -> None:
        """Make the outstanding credit plus the queued messages cover `free` slots."""
        now = time.monotonic()
        for subject, r in list(self.requests.items()):
            if r.deadline < now:  # its end-of-request status never came (e.g. a reconnect)
                del self.requests[subject]
        want = free - self.credit - self.queue.qsize()
        if want < self.min_request or not self.nc.is_connected:
            return
        subject = f"{self.prefix}.{next(self.ids)}"
        self.requests[subject] = _Request(want, now + self.expires_s + 1.0)
        body = json.dumps({"batch": want, "expires": int(self.expires_s * 1e9)}).encode()
        await self.nc.publish(self.api, body, reply=subject)

    async def _on_msg(self, msg: Msg) -> None:
        # A status message is addressed to the pull request's own inbox; a data message keeps
        # the subject it was published on. A publisher's own `Status` header is just a header.
        status = msg.headers.get(STATUS) if msg.headers and msg.subject.startswith(self.prefix) else None
        if status:
            # 404/408: nothing more for this request; 409: the server ended it (max
            # waiting, leadership change...); 100: an idle heartbeat.
            if status != "100" and self.requests.pop(msg.subject, None) is not None:
                self.queue.put_nowait(None)  # wake the loop: this credit is gone, top up now
            return
        # Data messages carry the stream's subject, not the request's: the server serves
        # waiting requests in arrival order, so the oldest outstanding request gets it.
        for subject, req in self.requests.items():
            req.remaining -= 1
            if req.remaining <= 0:
                del self.requests[subject]
            break
        self.queue.put_nowait(msg)

    async def get(self, timeout: float) -> Msg | None:
        """The next message; None on timeout or when a request ended and wants topping up."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return None

    def take_ready(self) -> list[Msg]:
        out = []
        while not self.queue.empty():
            if (m := self.queue.get_nowait()) is not None:
                out.append(m)
        return out

    async def stop(self) -> list[Msg]:
        """Stop receiving; returns messages delivered but not yet handed over (nak them)."""
        if self.sub is not None:
            await self.sub.unsubscribe()
        self.requests.clear()
        return self.take_ready()
