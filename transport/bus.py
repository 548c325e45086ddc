"""Publishing the steps of a job. Every publish that must happen once carries a Nats-Msg-Id
derived from (job, run, hop, attempt), and callers publish before they ack, so a crash in
between yields a duplicate that JetStream's dedupe window drops, never a lost job."""

from __future__ import annotations

import time

import asyncio

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from panelboard.schemas import batch as B
from panelboard.transport import jspub, meters, tracing
from panelboard.schemas import redact, shadow
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_attempt, decode_result, encode
from panelboard.schemas.errors import JobError
from panelboard.schemas.job import ID_RE, Attempt, CostRecord, DeadLetter, Dispatch, Failed, Job, Result


PUBLISH_PATIENCE_S = 30.0
# What a restarting server or a cluster electing a stream leader answers for a while.
TRANSIENT = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError,
              nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError, asyncio.TimeoutError,
              nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)


class PayloadTooLarge(nats.errors.MaxPayloadError):
    """A message over the server's max_payload (headers included: the server counts them, and
    answers an oversized one by closing the connection). Retrying cannot help."""

    def __init__(self, size: int, limit: int):
        super().__init__()
        self.size, self.limit = size, limit

    def __str__(self) -> str:
        return f"nats: a {self.size:,}-byte message is over the server's max_payload of {self.limit:,} bytes"


def message_size(data: bytes, headers: dict[str, str] | None) -> int:
    """Bytes the server counts against max_payload: the payload and the NATS/1.0 header block."""
    if not headers:
        return len(data)
    return len(data) + len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())


async def publish(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
    """Publish and wait for the stream's ack, riding out a nats-server restart or a cluster
    leader change: a step's outcome is kept and published once the server is back (the
    Nats-Msg-Id makes the retries safe), instead of being lost and redone. Whatever a client
    wrote that looks like a virtual key (in metadata, a prompt, a field an error quotes) is
    cut to its prefix first: no stream ever stores a whole key."""
    data = redact.scrub(data)
    size, limit = message_size(data, headers), js._nc.max_payload
    if limit and size > limit:
        raise PayloadTooLarge(size, limit)
    await publish_retrying(js, subject, data, headers)


async def publish_retrying(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str] | None = None, *,
                           patience_s: float = PUBLISH_PATIENCE_S, timeout_s: float = 2.0) -> jspub.PubAck:
    """A JetStream publish (transport/jspub.py), retried on TRANSIENT errors (0.1 s doubling to
    2 s between tries) for up to `patience_s`; the last error is raised after that. Safe only
    with a Nats-Msg-Id header (or for a subject whose last message is all that counts): a try
    that timed out may have been stored, and its retry is then dropped as a duplicate."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience_s
    delay = 0.1
    while True:
        try:
            return await jspub.publish(js._nc, subject, data, headers, timeout_s)
        except TRANSIENT:
            if loop.time() + delay > give_up:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def publish_result(js: JetStreamContext, team: str, job_id: str, result: Result, run: int = 0) -> None:
    subject, msg_id = wire.result(team, job_id), wire.result_msg_id(team, job_id, run)
    await _index_batch(js, team, job_id, result, subject, msg_id)
    await publish(js, subject, encode(result), headers={wire.HDR_MSG_ID: msg_id})
    meters.ended(result)
    tracing.mark("result", team=team, job=job_id, type=str(result.__struct_config__.tag))


async def publish_reject(js: JetStreamContext, team: str, seq: int, result: Failed) -> None:
    """The one terminal message of a publish refused before it was claimed: the submitter
    learned `seq` from its PubAck."""
    subject, msg_id = wire.reject(team, seq), wire.reject_msg_id(seq)
    if result.job_id:
        await _index_batch(js, team, result.job_id, result, subject, msg_id)
    await publish(js, subject, encode(result), headers={wire.HDR_MSG_ID: msg_id})
    meters.ended(result)


async def _index_batch(js: JetStreamContext, team: str, job_id: str, result: Result, subject: str, msg_id: str) -> None:
    """A batch job's end, in its batch's index, before the result itself: then every result
    of a batch is in the index (a crash between the two redoes both, deduped)."""
    if not result.metadata or (batch_id := B.batch_of(job_id, result.metadata)) is None:
        return
    kind = result.error.kind if isinstance(result, Failed) else "completed"
    await publish(js, B.done_subject(batch_id, team, job_id), encode(B.Done(kind=kind, subject=subject)),
                  headers={wire.HDR_MSG_ID: msg_id + ":done"})


async def claim(js: JetStreamContext, team: str, job_id: str, run: int, seq: int) -> bool:
    """Make (team, job, run) ours: the PB_JOBS message `seq` owns it. True when it is ours
    (just created, or created by an earlier delivery of this same message); False when
    another message of this team already owns the id (a duplicate submit)."""
    subject = wire.claim(team, job_id, run)
    try:
        await publish(js, subject, str(seq).encode(), headers={wire.HDR_EXPECT_LAST_SUBJECT_SEQ: "0"})
        return True
    except nats.js.errors.APIError as e:
        if e.err_code != 10071:  # wrong last sequence: the claim exists
            raise
    raw = await js.get_last_msg(wire.CLAIMS_STREAM, subject, direct=True)
    return raw.data == str(seq).encode()


NUDGE_EVERY_S = 1.0
_nudged: dict[tuple[str, str], float] = {}  # (provider, team) -> when this process last nudged


async def publish_dispatch(js: JetStreamContext, d: Dispatch) -> None:
    provider = d.route.chain[d.hop].provider
    team = d.job.team
    msg_id = wire.dispatch_msg_id(team, d.job.id, d.job.run, d.hop, d.shadow) + (":flex" if d.lane == "flex" else "")
    await publish(js, wire.dispatch(provider, d.job.priority, team), encode(d), headers=tracing.inject({wire.HDR_MSG_ID: msg_id}))
    # At most once a second per (provider, team): a buffered core publish, no round trip.
    now = time.monotonic()
    if now - _nudged.get((provider, team), -NUDGE_EVERY_S) >= NUDGE_EVERY_S:
        _nudged[(provider, team)] = now
        await js._nc.publish(wire.fair_nudge(provider), team.encode())


async def publish_cost(js: JetStreamContext, rec: CostRecord) -> None:
    await publish(js, wire.cost(rec.team), encode(rec), headers={wire.HDR_MSG_ID: wire.cost_msg_id(rec.team, rec.job_id, rec.run, rec.hop, rec.attempt, rec.shadow)})


async def publish_attempt(js: JetStreamContext, team: str, job_id: str, a: Attempt, shadow: bool = False) -> None:
    headers = {wire.HDR_MSG_ID: wire.attempt_msg_id(team, job_id, a.run, a.hop, a.attempt, shadow)}
    await publish(js, wire.attempts(team, job_id, shadow), encode(a), headers=headers)


async def read_attempts(js: JetStreamContext, team: str, job_id: str, run: int, shadow: bool = False) -> list[Attempt]:
    """Every attempt recorded for a job, oldest first: direct gets walking the job's subject."""
    out: list[Attempt] = []
    seq = 1
    subject = wire.attempts(team, job_id, shadow)
    while True:
        try:
            raw = await js.get_msg(wire.ATTEMPTS_STREAM, seq=seq, subject=subject, direct=True, next=True)
        except NotFoundError:
            return out
        a = decode_attempt(raw.data or b"")
        if a.run == run:
            out.append(a)
        seq = (raw.seq or seq) + 1


async def publish_shadow_answer(js: JetStreamContext, ans: shadow.ShadowAnswer) -> None:
    headers = {wire.HDR_MSG_ID: shadow.msg_id(ans.team, ans.job_id, ans.run)}
    await publish(js, shadow.subject(ans.team, ans.job_id), encode(ans), headers=headers)


async def _last_result(js: JetStreamContext, team: str, job_id: str, run: int) -> bytes | None:
    try:
        raw = await js.get_last_msg(wire.RESULTS_STREAM, wire.result(team, job_id), direct=True)
    except NotFoundError:
        return None
    return (raw.data or b"") if (raw.headers or {}).get(wire.HDR_MSG_ID) == wire.result_msg_id(team, job_id, run) else None


async def result_exists(js: JetStreamContext, team: str, job_id: str, run: int) -> bool:
    """Whether this run of the job already has its terminal result (a replay is a new run)."""
    return await _last_result(js, team, job_id, run) is not None


async def stored_result(js: JetStreamContext, team: str, job_id: str, run: int) -> Result | None:
    """This run of the job's terminal result, when it has one."""
    data = await _last_result(js, team, job_id, run)
    return decode_result(data) if data is not None else None


async def publish_dead(
    js: JetStreamContext,
    reason: str,
    error: JobError,
    job: Job | None,
    raw: bytes | None = None,
    attempts: list[Attempt] | None = None,
    msg_id: str | None = None,
    subject_team: str | None = None,
) -> None:
    raw = redact.scrub_raw(raw) if raw is not None else None  # stored as base64: publish() cannot see into it
    letter = DeadLetter(reason=reason, job=job, raw=raw, error=error, attempts=attempts or [], ts=time.time(), subject_team=subject_team)
    msg_id = msg_id or (wire.dead_msg_id(job.team, job.id, job.run) if job else None)
    await publish(js, wire.dead(reason), encode(letter), headers={wire.HDR_MSG_ID: msg_id} if msg_id else None)
    meters.DEAD.inc((reason,))


async def fail_job(
    js: JetStreamContext,
    team: str | None,
    job_id: str | None,
    error: JobError,
    *,
    reason: str,
    job: Job | None = None,
    raw: bytes | None = None,
    attempts: list[Attempt] | None = None,
    dead_msg_id: str | None = None,
) -> None:
    """A terminal failure: a dead letter holding everything needed to inspect or replay it,
    then the Failed result on the claimed job's subject (when there is one)."""
    attempts = attempts or []
    await publish_dead(js, reason, error, job, raw, attempts, dead_msg_id)
    if team and job_id and ID_RE.match(team) and ID_RE.match(job_id):
        await publish_result(js, team, job_id, Failed(job_id=job_id, error=error, attempts=attempts, metadata=job.metadata if job else {}), job.run if job else 0)


async def reject_job(js: JetStreamContext, team: str, seq: int, error: JobError, *, reason: str, job: Job | None = None,
                     raw: bytes | None = None) -> None:
    """A publish refused before any claim: a dead letter, then its Failed on
    pb.rejects.<subject team>.<seq>, where its submitter (who has the seq from its PubAck)
    reads it. Keyed by seq, never by the ids it carries, which nothing vouches for."""
    await publish_dead(js, reason, error, job, raw, None, f"jobs-{seq}:dead", subject_team=team)
    await publish_reject(js, team, seq, Failed(job_id=job.id if job else "", error=error, metadata=job.metadata if job else {}))
