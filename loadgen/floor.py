"""The floor: the least a durable queue in front of the same provider can cost, in the same
parts panelboard is built from (raw nats-py and aiohttp), with no broker hop, no governance,
no routing and no cost records. The benchmark runs it beside panelboard in one run, so that
panelboard's CPU per job and added latency read as ratios to it.

    python -m panelboard.loadgen.floor worker --nats URL --url MOCK_CHAT_URL   (a process)

Client side (`FloorClient`): publish the job to the FLOOR_JOBS stream and await its result on
a core subscription made before the first submit. Worker side: one durable pull consumer,
pulled continuously (transport/puller.py), every message handed to a task that POSTs it with a pooled aiohttp session and publishes the
result to the FLOOR_RESULTS stream before it acks the job (publish-before-ack, as panelboard).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

# The same continuous pull the broker and workers use (nats-py's fetch(n) would hold a lone
# message until its batch fills): a few dozen lines over raw nats-py, no panelboard logic.
from panelboard.transport.puller import Puller

JOBS_STREAM, RESULTS_STREAM, CONSUMER = "FLOOR_JOBS", "FLOOR_RESULTS", "floor"
JOBS_SUBJECT, RESULTS_PREFIX = "floor.jobs", "floor.results."
INFLIGHT = 4096


async def prepare(js: Any) -> None:
    for name, subjects in ((JOBS_STREAM, [JOBS_SUBJECT]), (RESULTS_STREAM, [RESULTS_PREFIX + "*"])):
        await js.add_stream(StreamConfig(name=name, subjects=subjects, storage=StorageType.FILE, max_age=600))
    await js.add_consumer(JOBS_STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=INFLIGHT))


class FloorClient:
    """Submit one job and await its result (the benchmark's `one(i)` for the floor)."""

    def __init__(self, nats_url: str):
        self.nats_url = nats_url
        self.waiting: dict[str, asyncio.Future[bytes]] = {}

    async def __aenter__(self) -> "FloorClient":
        self.nc = await nats.connect(self.nats_url)
        self.js = self.nc.jetstream()
        await self.nc.subscribe(RESULTS_PREFIX + "*", cb=self._on_result)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.drain()

    async def _on_result(self, msg: Msg) -> None:
        fut = self.waiting.pop(msg.subject[len(RESULTS_PREFIX):], None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    async def call(self, job_id: str, body: bytes, timeout: float) -> bytes:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[job_id] = fut
        await self.js.publish(JOBS_SUBJECT, body, headers={"Nats-Msg-Id": job_id, "Job": job_id})
        return await asyncio.wait_for(fut, timeout)


async def work(nats_url: str, url: str) -> None:
    import aiohttp

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    puller = Puller(nc, JOBS_STREAM, CONSUMER, min_request=INFLIGHT // 8)
    await puller.start()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=INFLIGHT), timeout=aiohttp.ClientTimeout(total=60))
    headers = {"content-type": "application/json"}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    inflight: set[asyncio.Task[None]] = set()

    async def one(msg: Msg) -> None:
        async with session.post(url, data=msg.data, headers=headers) as r:
            body = await r.read()
        msgspec.json.decode(body)  # parsed, as the workers do
        job_id = (msg.headers or {})["Job"]
        await js.publish(RESULTS_PREFIX + job_id, body, headers={"Nats-Msg-Id": job_id + ":r"})
        await msg.ack()

    while not stopping.is_set():
        free = INFLIGHT - len(inflight)
        if free <= 0:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            continue
        await puller.top_up(free)
        msg = await puller.get(timeout=0.5)
        if msg is None:
            continue
        for m in [msg, *puller.take_ready()]:
            t = asyncio.create_task(one(m))
            inflight.add(t)
            t.add_done_callback(inflight.discard)
    await session.close()
    await nc.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.floor")
    p.add_argument("role", choices=["worker"])
    p.add_argument("--nats", required=True)
    p.add_argument("--url", required=True, help="the mock's chat-completions URL")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(work(args.nats, args.url))
    except ImportError:
        asyncio.run(work(args.nats, args.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
