"""What two pieces of the job path cost on their own, against one embedded nats-server:

  claim      the broker's per-job claim, a PB_CLAIMS publish with an expected-last-sequence
             check (bus.claim), against a plain stored publish of the same size to the same
             stream (what any stored message with an ack costs);
  fan-out    results of a team reach every SDK client of that team (each subscribes to
             pb.results.<team>.>): nats-server CPU per result with 1, 4 and 16 such clients.

    python -m panelboard.loadgen.claim_bench [--n 20000]

CPU: getrusage for this process (the publisher and the subscribers), /proc for nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
from pathlib import Path

import nats

from panelboard import runtime
from panelboard.config import load
from panelboard.loadgen.bench import BENCH_CONFIG, CpuMeter
from panelboard.natsserver import NatsServer
from panelboard.schemas import wire
from panelboard.transport import bus

INFLIGHT = 64


async def gather_n(n: int, one: "object") -> None:
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < n:
            await one(i)  # type: ignore[operator]

    await asyncio.gather(*(worker() for _ in range(INFLIGHT)))


async def main_async(url: str, pid: int, n: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await runtime.prepare(nc, load(BENCH_CONFIG))
    meter = CpuMeter({"nats-server": pid})
    run = os.urandom(3).hex()

    async def claim(i: int) -> None:
        assert await bus.claim(js, "bench", f"c{run}{i}", 0, i + 1)

    async def plain(i: int) -> None:
        await js.publish(wire.claim("bench", f"p{run}{i}", 0), str(i + 1).encode())

    for name, one in (("claim (expected-last-seq publish)", claim), ("plain stored publish", plain)):
        await gather_n(500, lambda i, one=one: one(i + 10_000_000))  # warm-up
        before = meter.snapshot()
        await gather_n(n, one)
        per = CpuMeter.per_job_ms(before, meter.snapshot(), n)
        print(f"{name:<36} client {per['client']:.3f} ms  nats-server {per['nats-server']:.3f} ms per message")

    result = b'{"type":"completed","job_id":"x","response":{}}' + b" " * 600
    for clients in (1, 4, 16):
        subs = [await nats.connect(url) for _ in range(clients)]
        got = 0
        done = asyncio.Event()

        async def on(msg: object) -> None:
            nonlocal got
            got += 1
            if got >= n * clients:
                done.set()

        for s in subs:
            await s.subscribe(wire.results_of("fan"), cb=on)
            await s.flush()
        before = meter.snapshot()
        await gather_n(n, lambda i: js.publish(wire.result("fan", f"r{run}{clients}-{i}"), result))
        await asyncio.wait_for(done.wait(), 60)
        per = CpuMeter.per_job_ms(before, meter.snapshot(), n)
        print(f"results fan-out to {clients:>2} client(s) of the team  nats-server {per['nats-server']:.3f} ms per result "
              f"(client side, publisher + subscribers: {per['client']:.3f} ms)")
        for s in subs:
            await s.close()
    await nc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.claim_bench")
    p.add_argument("--n", type=int, default=20000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="panelboard-claims-") as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            assert server.proc is not None
            import uvloop

            uvloop.run(main_async(server.url, server.proc.pid, args.n))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
