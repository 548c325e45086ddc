"""Settlement: real cost replaces each job's reservation; a job that ends releases the rest.

Two durable pull consumers, shared by every broker process that runs with governance on:

    settle on PB_COSTS (pb.costs.>)   every cost record: its cost moves from `reserved` to
                                      `spent`; the record of the call that answered the job
                                      (outcome ok) is also its end
    settle on PB_RESULTS (pb.results.>)  every Failed result: a job that ended without an
                                      answer (chain exhausted, deadline, cancelled...)

Why success is read from the cost record and not from the Completed result: a job's only
costly call is the one that answered it, and its cost record is the success signal itself,
so a reservation is never released before its real cost is in `spent` (releasing on the
Completed result, read from another stream, could run ahead of the cost and let a
concurrent job spend the same money). Failed calls cost nothing, so a Failed result may
release at once. Each batch is one transaction; settled calls are recorded by their (job,
run, hop, attempt, shadow) key and an ended admission is flagged, so redeliveries change
nothing.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.governance_store import Store
from panelboard import logs, streams
from panelboard.puller import Puller
from schemas import wire
from schemas.codec import decode_cost
from schemas.job import CostRecord

log = logs.get("settle")

CONSUMER = "settle"
BATCH = 256
ACK_WAIT_S = 10.0
_FAILED = b'"type":"failed"'  # msgspec writes a tagged struct's tag first: no need to decode


def ended_run(msg: Msg) -> tuple[str, int] | None:
    """(job, run) of a result, from its Nats-Msg-Id `<team>.<job>:<run>:result` (ids have no
    dots; older results carry `<job>:<run>:result`)."""
    msg_id = (msg.headers or {}).get(wire.HDR_MSG_ID, "")
    parts = msg_id.rsplit(":", 2)
    if len(parts) != 3 or parts[2] != "result" or not parts[1].isdigit():
        return None
    return parts[0].rpartition(".")[2], int(parts[1])


def consumer_config(subjects: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        filter_subject=subjects,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=BATCH * 4,
        max_deliver=-1,  # the database comes back; a record is never given up on
        # Created when governance first comes on: records from before then reserved nothing.
        deliver_policy=DeliverPolicy.NEW,
    )


class Settler:
    def __init__(self, js: JetStreamContext, store: Store):
        self.js = js
        self.store = store
        self.settled = 0
        self.ended = 0

    async def prepare(self) -> None:
        await streams.ensure_consumer(self.js, wire.COSTS_STREAM, consumer_config("pb.costs.>"))
        await streams.ensure_consumer(self.js, wire.RESULTS_STREAM, consumer_config("pb.results.>"))

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.gather(self._loop(wire.COSTS_STREAM, stopping), self._loop(wire.RESULTS_STREAM, stopping))

    async def _loop(self, stream: str, stopping: asyncio.Event) -> None:
        puller = Puller(self.js._nc, stream, CONSUMER, min_request=1)
        await puller.start()
        try:
            while not stopping.is_set():
                try:
                    await puller.top_up(BATCH)
                except Exception as e:  # reconnecting: nats-py retries underneath
                    log.warning("settle.pull_failed", stream=stream, error=type(e).__name__)
                msg = await puller.get(timeout=0.5)
                if msg is not None:
                    await self.batch(stream, [msg, *puller.take_ready()])
        finally:
            for m in await puller.stop():
                await m.nak()

    async def batch(self, stream: str, msgs: list[Msg]) -> None:
        costs: list[CostRecord] = []
        ended: list[tuple[str, int]] = []
        for m in msgs:
            try:
                if stream == wire.COSTS_STREAM:
                    costs.append(decode_cost(m.data))
                elif _FAILED in m.data[:32] and (ref := ended_run(m)) is not None:
                    ended.append(ref)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.error("settle.undecodable", stream=stream, seq=m.metadata.sequence.stream, error=str(e)[:200])
        if not costs and not ended:  # Completed results: their cost records settle them
            for m in msgs:
                await m.ack()
            return
        try:
            stats = await self.store.settle(costs, ended)
        except Exception as e:  # the database is away: redelivered later, settled once
            log.warning("settle.failed", stream=stream, held=len(msgs), error=str(e).splitlines()[0][:300])
            for m in msgs:
                await m.nak(delay=1.0)
            return
        self.settled += stats.costs
        self.ended += stats.ended
        for m in msgs:
            await m.ack()
