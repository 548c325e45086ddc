"""Where one job's time goes at c=1: every message of a job's path through nats-server, in
order, with when it passed.

One stack (governance off, 0 ms mock), N jobs one at a time through the SDK, then the same
through the floor (loadgen/floor.py), alternated. A second connection subscribes to `>` and
stamps every message it sees (publishes, their acks back, deliveries to consumers, consumer
acks, pull requests); c=1 runs one job at a time, so every message between a job's submit and
its result is that job's. Each event's time is the median over the jobs of its first
occurrence after the submit, so the gaps between rows are where the time goes. The monitor
sees a message a little after the server routes it, about the same delay for every row.

Usage: python -m panelboard.loadgen.c1_timeline [--jobs 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.msg import Msg

from panelboard.loadgen import bench
from panelboard.loadgen.floor import FloorClient


def label(subject: str, reply: str | None, last: str) -> str:
    """What a message is, from its subject and reply subject."""
    if subject.startswith("$JS.ACK."):
        return "consumer ack " + subject.split(".")[2]
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return "pull request " + subject.split(".")[5]
    if subject.startswith("$JS.API."):
        return "api " + ".".join(subject.split(".")[2:4])
    if reply is not None and reply.startswith("$JS.ACK."):
        return "delivery " + reply.split(".")[2]
    if subject.startswith("_INBOX.") or subject.startswith("$JS") is False and reply is None and "INBOX" in subject:
        return "reply to " + last
    parts = subject.split(".")
    return "publish " + ".".join(parts[:2])


class Monitor:
    def __init__(self) -> None:
        self.events: list[tuple[float, str, str | None]] = []

    async def start(self, url: str) -> None:
        self.nc = await nats.connect(url)

        async def seen(msg: Msg) -> None:
            self.events.append((time.perf_counter(), msg.subject, msg.reply or None))

        await self.nc.subscribe(">", cb=seen)
        await self.nc.flush()

    def window(self, t0: float, t1: float) -> dict[str, float]:
        """Each label's first occurrence in [t0, t1], relative to t0 (a repeat gets `#2`...)."""
        out: dict[str, float] = {}
        last = "?"
        for t, subject, reply in self.events:
            if t0 <= t <= t1:
                name = label(subject, reply, last)
                if not name.startswith("reply"):
                    last = name
                n, key = 1, name
                while key in out:
                    n += 1
                    key = f"{name} #{n}"
                out[key] = t - t0
        return out


async def timed(n: int, warmup: int, one: Callable[[int], Awaitable[None]], mon: Monitor) -> list[tuple[float, float]]:
    spans = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        await one(i)
        t1 = time.perf_counter()
        if i >= warmup:
            spans.append((t0, t1))
    await asyncio.sleep(0.2)  # the monitor's last messages (acks after the result)
    return spans


def table(spans: list[tuple[float, float]], mon: Monitor) -> list[tuple[str, float, int]]:
    per: dict[str, list[float]] = {}
    for t0, t1 in spans:
        for k, v in mon.window(t0, t1).items():
            per.setdefault(k, []).append(v)
    rows = [(k, statistics.median(v) * 1000, len(v)) for k, v in per.items() if len(v) >= len(spans) // 2]
    rows.append(("result in the client's hands", statistics.median([t1 - t0 for t0, t1 in spans]) * 1000, len(spans)))
    return sorted(rows, key=lambda r: r[1])


async def panelboard_c1(url: str, n: int, warmup: int) -> list[tuple[str, float, int]]:
    from panelboard.clients import Client
    from panelboard.schemas.chat import Message

    mon = Monitor()
    async with Client(url, team="default") as client:
        async def one(i: int) -> None:
            h = await client.submit([Message(role="user", content=bench.prompt(i))], intent=bench.INTENT, max_tokens=bench.MAX_TOKENS, feature="c1")
            await h.result(timeout=bench.JOB_TIMEOUT_S)

        await one(0)
        await mon.start(url)
        try:
            return table(await timed(n, warmup, one, mon), mon)
        finally:
            await mon.nc.close()


async def floor_c1(url: str, model_id: str, n: int, warmup: int) -> list[tuple[str, float, int]]:
    run_id = os.urandom(4).hex()
    mon = Monitor()
    async with FloorClient(url) as client:
        async def one(i: int) -> None:
            await client.call(f"t{run_id}-{i}", bench.direct_body(i, model_id), bench.JOB_TIMEOUT_S)

        await mon.start(url)
        try:
            return table(await timed(n, warmup, one, mon), mon)
        finally:
            await mon.nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panelboard.loadgen.c1_timeline", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="measured jobs per path and round (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two paths this many times (default %(default)s)")
    parser.add_argument("--spy", metavar="PROC", help="sample this process (broker, worker-0, ledger, ...) with py-spy during panelboard's runs")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable (default %(default)s)")
    parser.add_argument("--spy-out", default="c1-spy.txt", help="where py-spy writes its raw stacks (default %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PANELBOARD_LOG_LEVEL", "warning")
    from panelboard.config import load

    model_id = next(iter(load(bench.BENCH_CONFIG).models.values())).model
    run, _ = bench.event_loop_runner()
    with bench.open_stack(0.0, governance=False) as (stack, _, _):
        assert stack.nats_url
        url = stack.nats_url
        pids = {name: p.pid for name, p in stack.procs.items()}
        if args.spy is not None and args.spy not in pids:
            raise SystemExit(f"--spy {args.spy!r}: no such process; pick one of {', '.join(sorted(pids))}")
        for r in range(args.rounds):
            for name, go in (("panelboard", lambda: panelboard_c1(url, args.jobs, args.warmup)),
                             ("floor", lambda: floor_c1(url, model_id, args.jobs, args.warmup))):
                sampler = None
                if args.spy is not None and name == "panelboard":
                    sampler = subprocess.Popen([args.py_spy, "record", "-p", str(pids[args.spy]), "-o", f"{args.spy_out}.{r + 1}", "-f", "raw",
                                                "-r", "500", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    rows = run(go())
                finally:
                    if sampler is not None:
                        sampler.send_signal(signal.SIGINT)
                        sampler.wait(30)
                print(f"round {r + 1}, {name}: median ms after submit, over {args.jobs} jobs (events seen in at least half)")
                prev = 0.0
                for k, v, cnt in rows:
                    print(f"  {v:8.3f}  +{v - prev:6.3f}  {k}" + (f"  ({cnt} jobs)" if cnt != args.jobs else ""))
                    prev = v
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
