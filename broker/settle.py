"""Settlement: real cost replaces each job's reservation; a job that ends releases the rest.

Two durable pull consumers, shared by every broker process that runs with governance on:

    settle on PB_COSTS (pb.costs.>)   every cost record: its cost moves from `reserved` to
                                      `spent`; the record of the call that answered the job
                                      (outcome ok) is also its end
    settle on PB_RESULTS (pb.results.>)  every Failed result: a job that ended without an
                                      answer (chain exhausted, deadline, cancelled...)
    settle on PB_ATTEMPTS (pb.attempts.>) a shadow attempt that failed the mirror's chain:
                                      its reservation is released (a shadow chain has no
                                      result; its ok cost record ends it otherwise)

Why success is read from the cost record and not from the Completed result: a job's only
costly call is the one that answered it, and its cost record is the success signal itself,
so a reservation is never released before its real cost is in `spent` (releasing on the
Completed result, read from another stream, could run ahead of the cost and let a
concurrent job spend the same money). Failed calls cost nothing, so a Failed result may
release at once. Each batch is one transaction; settled calls are recorded by their (job,
run, hop, attempt, shadow) key and an ended admission is flagged, so redeliveries change
nothing.

A record that cannot be settled (out of range: see db.problem; the ledger dead-letters it) is
logged and skipped, and a batch the database refuses for a data reason is split until the
records that can be settled are: one record never holds back the rest.
"""

from __future__ import annotations

import asyncio
import functools
from typing import NamedTuple, Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from panelboard.broker.governance_store import Store
from panelboard.transport import db
from panelboard.transport import logs, streams
from panelboard.transport.consumer import BatchConsumer
from panelboard.schemas import wire
from panelboard.schemas.codec import attempt_decision, decode_cost, result_failed
from panelboard.schemas.job import CostRecord

log = logs.get("settle")

CONSUMER = "settle"
BATCH = 256
ACK_WAIT_S = 10.0


def ended_run(msg: Msg) -> tuple[str, int] | None:
    """(job, run) of a result, from its Nats-Msg-Id `<team>.<job>:<run>:result` (ids have no
    dots; older results carry `<job>:<run>:result`)."""
    msg_id = (msg.headers or {}).get(wire.HDR_MSG_ID, "")
    parts = msg_id.rsplit(":", 2)
    if len(parts) != 3 or parts[2] != "result" or not parts[1].isdigit():
        return None
    return parts[0].rpartition(".")[2], int(parts[1])


class End(NamedTuple):
    """A job (or, `shadow`, its mirror) ended: release what it still holds."""

    job_id: str
    run: int
    shadow: bool = False


def failed_mirror(msg: Msg) -> tuple[str, int] | None:
    """(job, run) of a shadow attempt that ended its chain without an answer, from its
    Nats-Msg-Id `<team>.<job>:<run>:a<hop>:<attempt>:s` and its decision."""
    msg_id = (msg.headers or {}).get(wire.HDR_MSG_ID, "")
    parts = msg_id.rsplit(":", 4)
    if len(parts) != 5 or parts[4] != "s" or not parts[1].isdigit():
        return None
    return (parts[0].rpartition(".")[2], int(parts[1])) if attempt_decision(msg.data) == "fail" else None


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
        self.skipped = 0  # records that could not be settled

    async def prepare(self) -> None:
        await streams.ensure_consumer(self.js, wire.COSTS_STREAM, consumer_config("pb.costs.>"))
        await streams.ensure_consumer(self.js, wire.RESULTS_STREAM, consumer_config("pb.results.>"))
        # Every attempt, though only shadow ones matter: live attempts are stored only for calls
        # that did not answer (workers/pool.py), so a `pb.attempts.*.*.shadow` filter saves
        # nothing on the success path (tried: no gain in three alternated c=64 gov rounds).
        await streams.ensure_consumer(self.js, wire.ATTEMPTS_STREAM, consumer_config("pb.attempts.>"))

    async def run(self, stopping: asyncio.Event) -> None:
        """One batch loop per stream until `stopping` is set; each batch is one transaction."""
        loops = [BatchConsumer(self.js._nc, s, CONSUMER, functools.partial(self.batch, s), cap=BATCH, stopping=stopping, fields={"stream": s})
                 for s in (wire.COSTS_STREAM, wire.RESULTS_STREAM, wire.ATTEMPTS_STREAM)]
        await asyncio.gather(*(c.run() for c in loops))

    async def batch(self, stream: str, msgs: list[Msg]) -> None:
        events: list[CostRecord | End] = []
        for m in msgs:
            try:
                if stream == wire.COSTS_STREAM:
                    rec = decode_cost(m.data)
                    if (why := db.problem(rec)) is None:
                        events.append(rec)
                    else:
                        self._skip(rec, why)
                        if rec.outcome == "ok":  # it still ended its chain: release what is held
                            events.append(End(rec.job_id, rec.run, rec.shadow))
                elif stream == wire.ATTEMPTS_STREAM:
                    if (ref := failed_mirror(m)) is not None:
                        events.append(End(*ref, shadow=True))
                elif result_failed(m.data) and (ref := ended_run(m)) is not None:
                    events.append(End(*ref))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.error("settle.undecodable", stream=stream, seq=m.metadata.sequence.stream, error=str(e)[:200])
        if not events:  # Completed results, live attempts: their cost records settle them
            for m in msgs:
                await m.ack()
            return
        try:
            refused = await db.write_splitting(self._settle, events)
        except Exception as e:  # the database is away: redelivered later, settled once
            log.warning("settle.failed", stream=stream, held=len(msgs), error=str(e).splitlines()[0][:300])
            for m in msgs:
                await m.nak(delay=1.0)
            return
        for ev, err in refused:
            if isinstance(ev, CostRecord):
                self._skip(ev, f"the database refused it: {str(err).splitlines()[0][:300]}")
            else:
                log.error("settle.refused", job_id=ev.job_id, run=ev.run, shadow=ev.shadow, error=str(err).splitlines()[0][:300])
        for m in msgs:
            await m.ack()

    async def _settle(self, events: Sequence[CostRecord | End]) -> None:
        ends = [e for e in events if isinstance(e, End)]
        stats = await self.store.settle([e for e in events if isinstance(e, CostRecord)], [(e.job_id, e.run) for e in ends if not e.shadow],
                                        shadow_ended=[(e.job_id, e.run) for e in ends if e.shadow])
        self.settled += stats.costs
        self.ended += stats.ended

    def _skip(self, rec: CostRecord, why: str) -> None:
        self.skipped += 1
        log.error("settle.skipped", job_id=rec.job_id, run=rec.run, hop=rec.hop, attempt=rec.attempt, team=rec.team, reason=why[:300],
                  hint="its reservation is released by the job's end or the sweep; the ledger keeps the record as a dead letter")
