"""Per-message CPU of the job loops' consumer shapes, in one run on one nats-server:

    consumer     transport/consumer.Consumer (what the broker and pools run), a task per message
    old-loop     the broker's loop as it was before Consumer (Puller, a task per message), for the ratio

Each drains N pre-published messages from its own stream and acks each one; CPU is the
process's time (process_time) from first pull to last ack, so publishing is not counted.

    python -m panelboard.loadgen.consumer_bench [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from panelboard.natsserver import NatsServer
from panelboard.transport.consumer import Consumer
from panelboard.transport.puller import Puller

CAP = 1024


async def fill(nc: NATS, name: str, n: int) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_ack_pending=8192))
    body = b'{"id":"x","team":"t","request":{"messages":[{"role":"user","content":"hi"}]}}'
    for i in range(n):
        await nc.publish(f"{name}.job", body)
        if i % 1000 == 999:
            await nc.flush()
    while (await js.stream_info(name)).state.messages < n:
        await asyncio.sleep(0.05)


async def timed(n: int, run: Callable[[Callable[[], None]], Awaitable[None]]) -> float:
    """CPU seconds until `n` acks: `run(on_ack)` consumes until told to stop by the returned event."""
    done = asyncio.Event()
    count = 0

    def on_ack() -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    t0 = time.process_time()
    task = asyncio.ensure_future(run(on_ack))
    await done.wait()
    cpu = time.process_time() - t0
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    return cpu


async def with_consumer(nc: NATS, name: str, on_ack: Callable[[], None]) -> None:
    async def handle(m: Msg) -> None:
        await m.ack()
        on_ack()

    c: Consumer[Msg] = Consumer(nc, name, "c", handle, cap=CAP, min_request=CAP // 8)
    await c.run()


async def with_old_loop(nc: NATS, name: str, on_ack: Callable[[], None]) -> None:
    """The broker's loop before transport/consumer.py, kept here as the baseline."""
    async def handle(m: Msg) -> None:
        await m.ack()
        on_ack()

    puller = Puller(nc, name, "c", min_request=CAP // 8)
    await puller.start()
    inflight: set[asyncio.Task[None]] = set()
    while True:
        free = CAP - len(inflight)
        if free <= 0:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            continue
        await puller.top_up(free)
        if puller.idle and inflight:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            continue
        msg = await puller.get(timeout=0.5)
        if msg is None:
            continue
        for m in [msg, *puller.take_ready()]:
            t = asyncio.create_task(handle(m))
            inflight.add(t)
            t.add_done_callback(inflight.discard)


async def main(n: int, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"consumer": [], "old-loop": []}
    with tempfile.TemporaryDirectory() as d:
        server = NatsServer(d).start()
        try:
            nc = await nats.connect(server.url)
            for r in range(rounds):
                for kind in out:  # interleaved: a busy box slows both alike
                    name = f"B{r}{kind.replace('-', '')}"
                    await fill(nc, name, n)
                    if kind == "consumer":
                        cpu = await timed(n, lambda ack: with_consumer(nc, name, ack))
                    else:
                        cpu = await timed(n, lambda ack: with_old_loop(nc, name, ack))
                    out[kind].append(cpu / n * 1e6)
                    await nc.jetstream().delete_stream(name)
            await nc.close()
        finally:
            server.stop()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    res = asyncio.run(main(a.messages, a.rounds))
    best = {k: min(v) for k, v in res.items()}
    print(json.dumps({"us_per_message": {k: [round(x, 1) for x in v] for k, v in res.items()},
                      "best_us": {k: round(v, 1) for k, v in best.items()},
                      "ratio_to_consumer": {k: round(v / best["consumer"], 2) for k, v in best.items()}}, indent=2))
