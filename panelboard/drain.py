"""`panelboard drain [--provider P]`: every process serving what is named stops taking
deliveries, lets its in-flight calls finish however long they take (heartbeats keep their
leases), hands back what it held but had not started, says so, and its parts stop; a process
with nothing left to run exits 0.

The order rides core NATS (`pb.control.drain`, no stream: a process that is not running has
nothing to drain); each process answers on the order's reply subject twice, `draining` at once
and `drained` when its named parts have stopped, so the command knows when it is safe to stop
or replace them.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from panelboard.transport import logs

SUBJECT = "pb.control.drain"

log = logs.get("drain")


class Order(msgspec.Struct, omit_defaults=True):
    reply: str
    provider: str | None = None  # None: every part (broker and pools) of every process


class Report(msgspec.Struct):
    process: str
    parts: list[str]
    state: Literal["draining", "drained"]


def label(part: Any) -> str:
    provider = getattr(part, "provider", None)
    return f"pool {provider}" if provider else "broker"


def chosen(parts: list[Any], provider: str | None) -> list[Any]:
    """The parts an order names. Pure."""
    return [p for p in parts if provider is None or getattr(p, "provider", None) == provider]


class Listener:
    """A serving process's side: runs each order against its parts' tasks."""

    def __init__(self, nc: NATS, tasks: dict[Any, "asyncio.Task[None]"]):
        self.nc = nc
        self.tasks = tasks
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.nc.subscribe(SUBJECT, cb=self._on)

    async def _on(self, msg: Msg) -> None:
        try:
            order = msgspec.json.decode(msg.data, type=Order)
        except msgspec.DecodeError as e:
            log.warning("drain.bad_order", error=str(e)[:200])
            return
        parts = [p for p in chosen(list(self.tasks), order.provider) if not self.tasks[p].done()]
        if not parts:
            return
        names = [label(p) for p in parts]
        log.info("drain.requested", parts=names)
        for p in parts:
            p.stopping.set()  # its consumers stop pulling and wait for every call in flight, uncut
        await self.nc.publish(order.reply, msgspec.json.encode(Report(self.name, names, "draining")))
        t = asyncio.create_task(self._report(order.reply, parts, names))
        self.pending.add(t)
        t.add_done_callback(self.pending.discard)

    async def _report(self, reply: str, parts: list[Any], names: list[str]) -> None:
        await asyncio.wait([self.tasks[p] for p in parts])
        await self.nc.publish(reply, msgspec.json.encode(Report(self.name, names, "drained")))
        await self.nc.flush()
        log.info("drain.done", parts=names)

    async def settle(self) -> None:
        """Before the connection closes: the `drained` answers are out."""
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=10)


async def order(nc: NATS, provider: str | None, answer_s: float, timeout_s: float | None, out: Any) -> int:
    """The command's side: send the order, then wait until every process that took it has
    drained. 0: all drained; 1: nobody serves it; 3: timed out."""
    inbox = nc.new_inbox()
    reports: asyncio.Queue[Report] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        await reports.put(msgspec.json.decode(msg.data, type=Report))

    await nc.subscribe(inbox, cb=on)
    await nc.publish(SUBJECT, msgspec.json.encode(Order(reply=inbox, provider=provider)))
    draining: dict[str, list[str]] = {}
    drained: set[str] = set()
    loop = asyncio.get_running_loop()

    async def next_report(deadline: float | None) -> Report | None:
        try:
            return await asyncio.wait_for(reports.get(), None if deadline is None else max(0.0, deadline - loop.time()))
        except (asyncio.TimeoutError, TimeoutError):
            return None

    def note(r: Report) -> None:
        if r.state == "draining":
            draining[r.process] = r.parts
        else:
            drained.add(r.process)
        print(f"{r.process}: {r.state} {', '.join(r.parts)}", file=out, flush=True)

    answers_by = loop.time() + answer_s  # every running process answers `draining` at once
    while (r := await next_report(answers_by)) is not None:
        note(r)
    if not draining:
        print(f"no running process serves {'pool ' + provider if provider else 'anything'} on this NATS", file=out)
        return 1
    end = None if timeout_s is None else loop.time() + timeout_s
    while not drained >= set(draining):
        if (r := await next_report(end)) is None:
            print(f"timed out; still draining: {', '.join(sorted(set(draining) - drained))}", file=out)
            return 3
        note(r)
    return 0
