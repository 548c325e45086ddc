"""The ledger writer: cost records from `pb.costs.>` into SQL, in batches.

A durable pull consumer (`ledger`) hands over up to one batch at a time; the batch is
inserted in one transaction and acked only after the commit. The table's key is the call's
identity, so a batch redelivered after a crash (committed, not yet acked) inserts nothing
new: each call is billed exactly once. While the database is down the batch is held and
retried, and the records wait in the stream: nothing is acked that is not committed.
"""

from __future__ import annotations

import asyncio
import signal

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from panelboard import db, logs, metrics, runtime, streams
from panelboard.puller import Puller
from schemas import wire
from schemas.codec import decode_cost
from schemas.config import Config
from schemas.job import CostRecord

log = logs.get("ledger")

CONSUMER = "ledger"
BATCH = 500
# Short: a batch commits in milliseconds. A writer that dies holding one gets it redelivered
# (to itself restarted, or to another writer) within seconds; a slow commit that outlives it
# is harmless, the insert being idempotent.
ACK_WAIT_S = 5.0
RETRY_MAX_S = 2.0  # < ACK_WAIT_S: each retry renews the held batch with in_progress


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        filter_subject="pb.costs.>",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=BATCH * 2,
        max_deliver=-1,  # a record is never given up on: the database comes back
    )


class Ledger:
    def __init__(self, js: JetStreamContext, engine: AsyncEngine, batch: int = BATCH, meters: metrics.CostMeters | None = None):
        self.js = js
        self.engine = engine
        self.batch = batch
        self.meters = meters
        self.stopping = asyncio.Event()
        self.written = 0  # records committed (redelivered duplicates included)
        self.db_errors = 0

    async def prepare(self) -> bool:
        """Create the table, waiting for the database as long as it takes (the records wait in
        the stream meanwhile). False if told to stop first."""
        delay = 0.5
        while True:
            try:
                await db.create_schema(self.engine)
                return True
            except (SQLAlchemyError, OSError) as e:
                self._unavailable(e, delay, held=0)
                if await self._stopped_within(delay):
                    return False
                delay = min(delay * 2, 10.0)

    def _unavailable(self, e: Exception, retry_s: float, held: int) -> None:
        self.db_errors += 1
        log.warning("ledger.database_unavailable", database=db.display(str(self.engine.url)), held=held, retry_s=retry_s,
                    error=str(e).splitlines()[0][:300],
                    hint=f"the records wait in PB_COSTS; start the database, or fix --database-url / {db.URL_ENV}")

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        return self.stopping.is_set()

    async def run(self) -> None:
        puller = Puller(self.js._nc, wire.COSTS_STREAM, CONSUMER, min_request=1)
        await puller.start()
        log.info("ledger.started", database=db.display(str(self.engine.url)), batch=self.batch)
        try:
            while not self.stopping.is_set():
                try:
                    await puller.top_up(self.batch)
                except Exception as e:  # reconnecting: nats-py retries underneath
                    log.warning("ledger.pull_failed", error=type(e).__name__)
                msg = await puller.get(timeout=0.5)
                if msg is not None:
                    await self.write([msg, *puller.take_ready()])
        finally:
            for m in await puller.stop():
                await m.nak()
            log.info("ledger.stopped", written=self.written)

    async def write(self, msgs: list[Msg]) -> None:
        records: list[CostRecord] = []
        good: list[Msg] = []
        for m in msgs:
            try:
                records.append(decode_cost(m.data))
                good.append(m)
            except msgspec.DecodeError as e:
                # Only a foreign publisher can put this here; it stays in PB_COSTS to inspect.
                log.error("ledger.undecodable", seq=m.metadata.sequence.stream, subject=m.subject, error=str(e))
                await m.term()
        delay = 0.1
        while True:
            try:
                await db.insert_costs(self.engine, map(db.row, records))
                break
            except (SQLAlchemyError, OSError) as e:
                self._unavailable(e, delay, held=len(good))
                try:
                    for m in good:
                        await m.in_progress()  # still ours: no other writer should take them meanwhile
                except Exception:
                    pass  # NATS is away too: the batch is redelivered after ack_wait, insert-ignored
                if await self._stopped_within(delay):
                    for m in good:
                        await m.nak()
                    return
                delay = min(delay * 2, RETRY_MAX_S)
        try:
            for m in good:
                await m.ack()
        except Exception as e:  # committed: a lost ack only means a redelivery that inserts nothing
            log.warning("ledger.ack_failed", error=type(e).__name__, records=len(good))
        self.written += len(records)
        if self.meters is not None:
            for rec in records:
                self.meters.observe(rec)


async def serve(url: str, cfg: Config, database_url: str, metrics_port: int | None = None) -> None:
    """The `panelboard ledger` process."""
    engine = db.open_engine(database_url)
    nc = await runtime.connect(url, "panelboard-ledger")
    js = nc.jetstream()
    await streams.ensure_streams(js, cfg)
    await streams.ensure_consumer(js, wire.COSTS_STREAM, consumer_config())
    meters = metrics.CostMeters()
    ledger = Ledger(js, engine, meters=meters)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ledger.stopping.set)
    try:
        async with metrics.serving(metrics_port, js, meters):
            if await ledger.prepare():
                await ledger.run()
    finally:
        await nc.drain()
        await engine.dispose()
