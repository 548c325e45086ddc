"""The ledger writer: cost records from `pb.costs.>` into SQL, in batches.

A durable pull consumer (`ledger`) hands over up to one batch at a time; the batch is
inserted in one transaction and acked only after the commit. The table's key is the call's
identity, so a batch redelivered after a crash (committed, not yet acked) inserts nothing
new: each call is billed exactly once. While the database is down the batch is held and
retried, and the records wait in the stream: nothing is acked that is not committed.

A record that can never be a row (a count out of 64-bit range, a string too long: see
db.problem) or that the database refuses for what it holds never blocks the rest: a refused
batch is split until every good record has landed, and each poison one is quarantined as a
dead letter on pb.dead.cost_record (the record kept whole), logged and counted.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from typing import Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from panelboard.transport import db, metrics

from panelboard.transport import connection

from panelboard.transport import bus, logs, streams
from panelboard.transport.consumer import BatchConsumer
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost
from panelboard.schemas.config import Config
from panelboard.schemas.errors import InvalidJob
from panelboard.schemas.job import CostRecord

DEAD_REASON = "cost_record"  # pb.dead.cost_record: records the ledger could not write
# No model's context comes near this many tokens in one call: a record claiming more is
# stored (it is what the provider reported, and maybe billed) but flagged for a person.
IMPLAUSIBLE_TOKENS = 100_000_000

log = logs.get("ledger")

CONSUMER = "ledger"
BATCH = 500
# At low load a batch waits this long for company: one transaction per record cost ~2 ms CPU
# each at c=1 (BENCHMARKS.md). Only reports see it later; budgets settle on their own consumer.
LINGER_S = 0.05
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
    def __init__(self, js: JetStreamContext, engine: AsyncEngine, batch: int = BATCH, meters: metrics.CostMeters | None = None,
                 linger_s: float = LINGER_S, durable: bool = True):
        self.js = js
        self.engine = engine
        self.batch = batch
        self.meters = meters
        self.stopping = asyncio.Event()
        # SQLite: plain sqlite3 on the hot path (SQLAlchemy keeps the schema and the reports).
        # `durable`: every commit fsynced (db.durable_for).
        self.sqlite = db.SqliteCostWriter(str(engine.url), durable) if db.sqlite_path(str(engine.url)) is not None else None
        # One batch at a time, one transaction each: acked after the commit.
        self.consumer = BatchConsumer(js._nc, wire.COSTS_STREAM, CONSUMER, self.write, cap=batch, linger_s=linger_s, stopping=self.stopping)
        self.written = 0  # records committed (redelivered duplicates included)
        self.db_errors = 0
        self.quarantined = 0  # records dead-lettered: they can never be written
        self.implausible = 0  # records written but flagged

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
        log.info("ledger.started", database=db.display(str(self.engine.url)), batch=self.batch)
        try:
            await self.consumer.run()
        finally:
            if self.sqlite is not None:
                self.sqlite.close()
            log.info("ledger.stopped", written=self.written)

    async def write(self, msgs: list[Msg]) -> None:
        batch: list[tuple[Msg, CostRecord]] = []
        for m in msgs:
            try:
                rec = decode_cost(m.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                # Only a foreign publisher can put this here; it stays in PB_COSTS to inspect.
                log.error("ledger.undecodable", seq=m.metadata.sequence.stream, subject=m.subject, error=str(e))
                await m.term()
                continue
            if (why := db.problem(rec)) is not None:
                await self._quarantine(m, rec, why)
            else:
                batch.append((m, rec))
        delay = 0.1
        while True:
            try:
                refused = await db.write_splitting(self._insert, batch)
                break
            except Exception as e:
                if not isinstance(e, (SQLAlchemyError, OSError, sqlite3.Error)):
                    raise
                self._unavailable(e, delay, held=len(batch))
                try:
                    for m, _ in batch:
                        await m.in_progress()  # still ours: no other writer should take them meanwhile
                except Exception:
                    pass  # NATS is away too: the batch is redelivered after ack_wait, insert-ignored
                if await self._stopped_within(delay):
                    for m, _ in batch:
                        await m.nak()
                    return
                delay = min(delay * 2, RETRY_MAX_S)
        for (m, rec), err in refused:
            await self._quarantine(m, rec, f"the database refused it: {str(err).splitlines()[0][:300]}")
        bad = {id(m) for (m, _), _ in refused}
        good = [(m, rec) for m, rec in batch if id(m) not in bad]
        try:
            for m, _ in good:
                await m.ack()
        except Exception as e:  # committed: a lost ack only means a redelivery that inserts nothing
            log.warning("ledger.ack_failed", error=type(e).__name__, records=len(good))
        self.written += len(good)
        for _, rec in good:
            if max(rec.prompt_tokens, rec.completion_tokens) > IMPLAUSIBLE_TOKENS:
                self.implausible += 1
                log.error("ledger.implausible_usage", job_id=rec.job_id, provider=rec.provider, model=rec.model,
                          prompt_tokens=rec.prompt_tokens, completion_tokens=rec.completion_tokens, cost_usd=rec.cost_usd,
                          hint="stored as reported; check the provider's bill for this request id before paying it")
            if self.meters is not None:
                self.meters.observe(rec)

    async def _insert(self, batch: Sequence[tuple[Msg, CostRecord]]) -> None:
        rows = [db.row(rec) for _, rec in batch]
        await (self.sqlite.insert(rows) if self.sqlite is not None else db.insert_costs(self.engine, rows))

    async def _quarantine(self, m: Msg, rec: CostRecord, why: str) -> None:
        """Out of the way for good: a dead letter holding the record, then the delivery ends.
        If the dead letter cannot be published, the delivery is left to come back."""
        err = InvalidJob(message=f"cost record of job {rec.job_id} (run {rec.run}, hop {rec.hop}, attempt {rec.attempt}, "
                                 f"provider {rec.provider}) cannot be written to the ledger: {why}",
                         hint="the record is kept whole in this letter; fix it (or the worker that produced it) and "
                              "republish it to pb.costs.<team>, or bill it by hand")
        try:
            await bus.publish_dead(self.js, DEAD_REASON, err, None, raw=m.data,
                                   msg_id=wire.cost_msg_id(rec.team, rec.job_id, rec.run, rec.hop, rec.attempt, rec.shadow) + ":dead")
            await m.term()
        except Exception as e:  # NATS is away: the record comes back after ack_wait and is judged again
            log.warning("ledger.quarantine_failed", job_id=rec.job_id, error=type(e).__name__)
            return
        self.quarantined += 1
        if self.meters is not None:
            self.meters.quarantine()
        log.error("ledger.quarantined", job_id=rec.job_id, run=rec.run, hop=rec.hop, attempt=rec.attempt, team=rec.team,
                  provider=rec.provider, reason=why[:300], dead_subject=wire.dead(DEAD_REASON))


async def serve(url: str, cfg: Config, database_url: str, metrics_port: int | None = None, metrics_host: str = metrics.DEFAULT_HOST) -> None:
    """The `panelboard ledger` process."""
    engine = db.open_engine(database_url)
    nc = await connection.connect(url, "panelboard-ledger")
    js = nc.jetstream()
    await streams.ensure_streams(js, cfg)
    await streams.ensure_consumer(js, wire.COSTS_STREAM, consumer_config())
    meters = metrics.CostMeters()
    ledger = Ledger(js, engine, meters=meters, durable=db.durable_for(cfg))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ledger.stopping.set)
    try:
        async with metrics.serving(metrics_port, js, meters, host=metrics_host, cfg=cfg):
            if await ledger.prepare():
                await ledger.run()
    finally:
        await nc.drain()
        await engine.dispose()
