"""Publishing the steps of a job. Every publish that must happen once carries a Nats-Msg-Id,
and callers publish before they ack, so a crash in between yields a duplicate that
JetStream's dedupe window drops, never a lost job."""

from __future__ import annotations

import time

from nats.js import JetStreamContext

from schemas import wire
from schemas.codec import encode
from schemas.errors import JobError
from schemas.job import Attempt, CostRecord, DeadLetter, Dispatch, Failed, Job, Result
from schemas.job import ID_RE


async def publish_result(js: JetStreamContext, client: str, job_id: str, result: Result) -> None:
    await js.publish(wire.result(client, job_id), encode(result), headers={wire.HDR_MSG_ID: wire.result_msg_id(job_id)})


async def publish_dispatch(js: JetStreamContext, d: Dispatch) -> None:
    provider = d.route.chain[d.hop].provider
    await js.publish(wire.dispatch(provider), encode(d), headers={wire.HDR_MSG_ID: wire.dispatch_msg_id(d.job.id, d.hop)})


async def publish_cost(js: JetStreamContext, rec: CostRecord) -> None:
    await js.publish(wire.cost(rec.team), encode(rec), headers={wire.HDR_MSG_ID: wire.cost_msg_id(rec.job_id, rec.hop, rec.attempt)})


async def publish_dead(
    js: JetStreamContext,
    reason: str,
    error: JobError,
    job: Job | None,
    raw: bytes | None = None,
    attempts: list[Attempt] | None = None,
    msg_id: str | None = None,
) -> None:
    letter = DeadLetter(reason=reason, job=job, raw=raw, error=error, attempts=attempts or [], ts=time.time())
    headers = {wire.HDR_MSG_ID: msg_id or f"{job.id}:dead"} if (msg_id or job) else None
    await js.publish(wire.dead(reason), encode(letter), headers=headers)


async def fail_job(
    js: JetStreamContext,
    client: str | None,
    job_id: str | None,
    error: JobError,
    *,
    reason: str,
    job: Job | None = None,
    raw: bytes | None = None,
    attempts: list[Attempt] | None = None,
    dead_msg_id: str | None = None,
) -> None:
    """A terminal failure: the Failed result to the client (when we know where it goes), and
    a dead letter holding everything needed to inspect or replay it."""
    attempts = attempts or []
    await publish_dead(js, reason, error, job, raw, attempts, dead_msg_id)
    if client and job_id and ID_RE.match(client) and ID_RE.match(job_id):
        await publish_result(js, client, job_id, Failed(job_id=job_id, error=error, attempts=attempts))
