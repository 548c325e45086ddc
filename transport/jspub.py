"""A JetStream publish and its PubAck, without nats-py's request path.

`JetStreamContext.publish` goes through `Client.request`: per call a `secrets.token_hex` (an
os.urandom syscall), `asyncio.wait_for`, `json.loads` and a dataclass PubAck. Every job pays
that five times (submit, claim, dispatch, cost record, result). Here one wildcard reply
subscription per connection takes every PubAck, the reply token is a counter, the timeout is a
timer handle, and msgspec decodes the PubAck: 34-37 -> 26-30 µs of CPU a publish at 64 in
flight under uvloop (loadgen/pub_bench.py; BENCHMARKS.md, "Stop 25"). Errors are nats-py's
own, so callers see no difference.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

NO_RESPONDERS = "503"


class PubAck(msgspec.Struct):
    """What the stream answers: the fields of nats-py's PubAck that callers read."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(PubAck).decode


class _Replies:
    """One connection's PubAcks, routed by the token at the end of their reply subject."""

    def __init__(self, nc: NATS):
        self.nc = nc
        self.prefix = ""
        self.waiting: dict[str, asyncio.Future[Msg]] = {}
        self.ids = itertools.count()
        self.ready: asyncio.Lock = asyncio.Lock()

    async def start(self) -> None:
        async with self.ready:
            if not self.prefix:
                prefix = self.nc.new_inbox() + "."
                await self.nc.subscribe(prefix + "*", cb=self._on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1)
                self.prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        fut = self.waiting.pop(msg.subject[len(self.prefix):], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _expire(self, token: str) -> None:
        fut = self.waiting.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_exception(nats.errors.TimeoutError())

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout_s: float) -> PubAck:
        if not self.prefix:
            await self.start()
        token = str(next(self.ids))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self.waiting[token] = fut
        timer = loop.call_later(timeout_s, self._expire, token)
        try:
            await self.nc.publish(subject, data, reply=self.prefix + token, headers=headers)
            msg = await fut
        finally:
            timer.cancel()
            self.waiting.pop(token, None)
        if not msg.data:
            if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
                raise nats.js.errors.NoStreamResponseError
            raise nats.js.errors.APIError(description=f"empty PubAck for {subject}")
        ack = _decode(msg.data)
        if ack.error is not None:
            raise nats.js.errors.APIError.from_error(ack.error)
        return ack


_by_connection: weakref.WeakKeyDictionary[NATS, _Replies] = weakref.WeakKeyDictionary()


async def publish(nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None = None, timeout_s: float = 2.0) -> PubAck:
    """Publish to a stream and wait for its PubAck; raises as `JetStreamContext.publish` does
    (nats.errors.TimeoutError, NoStreamResponseError, an APIError subclass)."""
    replies = _by_connection.get(nc)
    if replies is None:
        replies = _by_connection[nc] = _Replies(nc)
    return await replies.publish(subject, data, headers, timeout_s)
