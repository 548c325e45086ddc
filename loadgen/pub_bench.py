"""CPU a JetStream publish costs the publisher: nats-py's `JetStreamContext.publish` against
transport/jspub.py, interleaved, on one embedded nats-server, under uvloop as the services run.

    python -m panelboard.loadgen.pub_bench [--publishes 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from panelboard.natsserver import NatsServer
from panelboard.transport import jspub

PAYLOAD = b"x" * 800  # about a dispatch or a cost record


async def bench(publishes: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pb-pub-bench-") as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="PUB_BENCH", subjects=["pubbench.>"]))

            async def run(kind: str, inflight: int) -> tuple[float, float]:
                sem, ids = asyncio.Semaphore(inflight), itertools.count()

                async def one() -> None:
                    async with sem:
                        n = next(ids)
                        subject, headers = f"pubbench.{n % 10}", {"Nats-Msg-Id": f"{kind}-{inflight}-{time.monotonic_ns()}-{n}"}
                        if kind == "nats-py":
                            await js.publish(subject, PAYLOAD, headers=headers, timeout=2.0)
                        else:
                            await jspub.publish(nc, subject, PAYLOAD, headers)

                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(one() for _ in range(publishes)))
                return (time.process_time() - cpu) / publishes * 1e6, publishes / (time.perf_counter() - wall)

            print(f"{'publisher':8s} {'in flight':>9s} {'CPU µs/publish':>15s} {'publishes/s':>12s}")
            for _ in range(rounds):
                for kind in ("nats-py", "jspub"):
                    for inflight in (1, 64):
                        us, rate = await run(kind, inflight)
                        print(f"{kind:8s} {inflight:9d} {us:15.1f} {rate:12.0f}", flush=True)
            await nc.close()
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.pub_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--publishes", type=int, default=20000, help="publishes per cell (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default %(default)s)")
    a = p.parse_args(argv)
    import uvloop

    uvloop.run(bench(a.publishes, a.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
