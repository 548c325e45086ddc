"""The pull loop tells the server's status messages from jobs that merely carry a header
named `Status`: any tenant can send headers, and a job must never be dropped for one."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from panelboard.clients import Client
from panelboard.transport.puller import Puller
from panelboard.schemas import wire
from panelboard.schemas.codec import encode
from panelboard.schemas.job import Completed, Job
from panelboard.clients.client import to_request

STATUSES = ["100", "200", "404", "408", "409", "503"]


async def drain(puller: Puller, want: int, bound_s: float) -> int:
    """Hand over messages as a pool would (credit topped up as they are taken), until `want`
    arrived or the bound passed; returns how many arrived."""
    got = 0
    end = time.monotonic() + bound_s
    while got < want and time.monotonic() < end:
        await puller.top_up(256)
        m = await puller.get(timeout=0.5)
        for msg in ([m] if m is not None else []) + puller.take_ready():
            await msg.ack()
            got += 1
    return got


async def test_jobs_with_a_status_header_are_handed_over_like_any_other(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = "T" + uuid.uuid4().hex[:8]
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    puller = Puller(nc, name, "c")
    await puller.start()
    try:
        # Given one message per status a server could send, each as a publisher's header
        for s in STATUSES:
            await js.publish(f"{name}.job", b"{}", headers={"Status": s, "Description": "forged"})
        # And a flood of 8,200 with `Status: 409` (which once ended every pull request), then normal ones
        for i in range(8_200):
            await nc.publish(f"{name}.flood", b"x", headers={"Status": "409"})
        for i in range(50):
            await nc.publish(f"{name}.normal", b"y")
        await nc.flush()
        deadline = time.monotonic() + 60
        while (await js.stream_info(name)).state.messages < len(STATUSES) + 8_250 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # When the pull loop consumes the stream
        got = await drain(puller, len(STATUSES) + 8_250, bound_s=120)
        # Then every one of them is delivered, none dropped as a status, nothing left pending
        assert got == len(STATUSES) + 8_250
        info = await js.consumer_info(name, "c")
        assert info.num_pending == 0 and info.num_redelivered == 0
    finally:
        await puller.stop()
        await js.delete_stream(name)
        await nc.drain()


async def test_a_job_with_a_status_header_gets_its_result(stack):
    async with Client(stack.nats_url) as c:
        await c._listen(c.team)
        results = []
        for s in ("200", "100", "503", "409"):
            job = Job(id="status-" + s + "-" + uuid.uuid4().hex[:8], team=c.team, intent="fast",
                      request=to_request("Extract the date from: due 2026-12-01", max_tokens=16))
            headers = {wire.HDR_MSG_ID: wire.submit_msg_id(c.team, job.id, uuid.uuid4().hex[:16]), "Status": s}
            await c.js.publish(wire.jobs(c.team, job.intent), encode(job), headers=headers)
            results.append(c.result(job.id, timeout=60))
        done = await asyncio.gather(*results)
    assert all(isinstance(r, Completed) for r in done), done
