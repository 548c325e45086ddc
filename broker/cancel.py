"""Cancelling jobs that have not started: give them a `cancelled` result and take them out of
the work queues. Privileged (JetStream API: consumer pause, message delete), so it runs in
the broker process, asked on pb.control.<team>.cancel (broker/control.py); clients only ask.

A job waits in PB_JOBS (for a broker) and then in PB_DISPATCH (for a worker pool). Each queue
has durable consumers; a message a consumer has delivered (its stream sequence is at most the
consumer's `delivered.stream_seq`) is held by a broker or a worker and runs to its end. A
message above it has been handed to nobody. To delete exactly those, the consumer that owns a
message's subject is paused for a moment (JetStream consumer pause; deliveries wait, acks go
on): its position is read, the jobs above it get their `cancelled` result and are deleted,
and it is resumed. A deleted message can never be delivered, so its job is never called, and
the `cancelled` result is its only result. A consumer is paused per chunk of deletions (a few ms), never for
the whole scan, and the pause carries its own end (PAUSE_S), so a cancel that dies mid-way
cannot leave a pool stopped. The result is published before the delete: if NATS fails in
between, the job keeps exactly one result.

A job routed to a provider's batch lane waits in PB_LANES (not a work queue: it stays there
while its provider batch runs), held by the lane (workers/batch_lane.py) from collection to
fan-out. There the cancel claims the job's end (wire.end_claim) before the lane does: won, the
job gets its `cancelled` result, which the lane honours at every step (left out of the upload,
no Completed at the fan-out, only the cost record of a line the provider answered anyway), and
its provider batch is marked (CancelMarks) so that one whose every job is cancelled is
cancelled provider-side; lost, the lane has answered it or sent it realtime, where the next
round finds it in PB_DISPATCH. Only the live part of PB_LANES is read: above the lane
consumers' ack floors, and the jobs of provider batches not done (their KV states).

Scanning reads each queued message once (STREAM.MSG.GET, `next_by_subj`), in chunks of
sequence numbers processed concurrently, from the back of the queue: memory stays flat, time
grows with the depth of the queues (not only with the jobs being cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from panelboard.transport import bus
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_dispatch, decode_job
from panelboard.schemas.errors import Cancelled
from panelboard.schemas.job import Attempt, Dispatch, Failed, Job
from panelboard.schemas.lanes import END_CANCEL, ProviderBatch, lane_cancelled
from panelboard.transport.kv_read import live_entries
from panelboard.transport.lanes import add_marks, claim_end

CHUNK = 256  # sequence numbers per scan step
PAUSE_S = 30.0  # a pause ends by itself after this, should its resume never come
PARALLEL = 16  # chunks scanned at once


class _Msg(msgspec.Struct):
    subject: str
    seq: int
    data: bytes = b""  # msgspec decodes the base64 the API sends


class _ApiError(msgspec.Struct):
    code: int
    err_code: int = 0
    description: str = ""


class _GetResponse(msgspec.Struct):
    message: _Msg | None = None
    error: _ApiError | None = None


_decode_get = msgspec.json.Decoder(_GetResponse).decode


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass
class _Consumer:
    name: str
    filters: list[str]
    paused: bool  # by someone else: we leave it as it is


@dataclass
class CancelReport:
    cancelled: int = 0  # taken out of a queue, given a `cancelled` result, never called
    lane: int = 0  # of those, ended in a batch lane (its provider batch may have run it: billed)
    running: int = 0  # found already handed to a broker or worker: left to finish
    scanned: int = 0  # queued messages read
    ids: list[str] = field(default_factory=list)  # the cancelled job ids, when asked for


Match = Callable[[Job], bool]


class _Scan:
    def __init__(self, js: JetStreamContext, match: Match, prefilter: bytes | None, reason: str, keep_ids: bool,
                 on_cancel: Callable[[Job], None] | None):
        self.js = js
        self.nc: NATS = js._nc
        self.match = match
        self.prefilter = prefilter
        self.reason = reason
        self.keep_ids = keep_ids
        self.on_cancel = on_cancel
        self.report = CancelReport()
        self.found = 0
        self.running: set[str] = set()  # small: what brokers and workers hold at once
        self.locks: dict[str, asyncio.Lock] = {}

    async def consumers(self, stream: str) -> list[_Consumer]:
        out = []
        for ci in await self.js.consumers_info(stream):
            cfg = ci.config
            filters = list(cfg.filter_subjects or []) or ([cfg.filter_subject] if cfg.filter_subject else [">"])
            out.append(_Consumer(ci.name, filters, bool(getattr(ci, "paused", False))))
        return out

    @staticmethod
    def owner(consumers: list[_Consumer], subject: str) -> _Consumer | None:
        # A work-queue stream's consumers never overlap: at most one takes a subject.
        for c in consumers:
            if any(subject_matches(f, subject) for f in c.filters):
                return c
        return None

    @contextlib.asynccontextmanager
    async def held(self, stream: str, c: _Consumer) -> AsyncIterator[int]:
        """The consumer paused (one chunk at a time per consumer); yields its delivered position."""
        lock = self.locks.setdefault(c.name, asyncio.Lock())
        async with lock:
            if not c.paused:
                until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=PAUSE_S)
                await self.js.pause_consumer(stream, c.name, until.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            try:
                ci = await self.js.consumer_info(stream, c.name)
                yield ci.delivered.stream_seq if ci.delivered else 0
            finally:
                if not c.paused:
                    await self.js.resume_consumer(stream, c.name)

    async def get_next(self, stream: str, seq: int, subject: str = ">") -> _Msg | None:
        req = json.dumps({"seq": seq, "next_by_subj": subject}).encode()
        for attempt in range(5):
            try:
                r = await self.nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", req, timeout=5)
                break
            except bus.TRANSIENT:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        resp = _decode_get(r.data)
        if resp.error is not None:
            if resp.error.code == 404:
                return None
            raise RuntimeError(f"{stream} message get: {resp.error.description}")
        return resp.message

    async def delete(self, stream: str, seq: int) -> None:
        """Delete a message; one already gone (another cancel took it) is fine."""
        req = json.dumps({"seq": seq, "no_erase": True}).encode()
        for attempt in range(6):
            try:
                r = await self.nc.request(f"$JS.API.STREAM.MSG.DELETE.{stream}", req, timeout=5)
            except bus.TRANSIENT:
                if attempt == 5:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if b'"success":true' in r.data or b'"err_code":10043' in r.data:  # 10043: no such sequence
                return
            raise RuntimeError(f"{stream} delete of {seq}: {r.data[:200]!r}")

    def decode(self, stream: str, subject: str, data: bytes) -> tuple[Job, list[Attempt]] | None:
        if self.prefilter is not None and self.prefilter not in data:
            return None
        try:
            if stream == wire.JOBS_STREAM:
                job = decode_job(data)
                # Not yet claimed: only its subject vouches for its team. A job whose body
                # says otherwise is the broker's to reject, not anyone's to cancel.
                return (job, []) if job.team == wire.jobs_subject_team(subject) else None
            d = decode_dispatch(data)
            return d.job, d.history
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # the broker turns it into an InvalidJob result; not ours to cancel

    async def chunk(self, stream: str, lo: int, hi: int) -> None:
        """Scan [lo, hi) and cancel what matches there."""
        found: list[tuple[_Msg, Job, list[Attempt]]] = []
        seq = lo
        while seq < hi:
            m = await self.get_next(stream, seq)
            if m is None or m.seq >= hi:
                break
            self.report.scanned += 1
            hit = self.decode(stream, m.subject, m.data)
            if hit is not None and self.match(hit[0]):
                found.append((m, *hit))
            seq = m.seq + 1
        if not found:
            return
        self.found += len(found)
        consumers = await self.consumers(stream)
        groups: dict[str | None, list[tuple[_Msg, Job, list[Attempt]]]] = {}
        for entry in found:
            c = self.owner(consumers, entry[0].subject)
            groups.setdefault(c.name if c else None, []).append(entry)
        for name, hits in groups.items():
            c = next((c for c in consumers if c.name == name), None)
            if c is None:  # nobody consumes this subject: nobody can take it meanwhile
                await self.take_out(stream, hits)
                continue
            async with self.held(stream, c) as delivered:
                for m, job, _ in hits:
                    if m.seq <= delivered:
                        self.running.add(job.id)  # handed to a broker or worker: it runs
                await self.take_out(stream, [h for h in hits if h[0].seq > delivered])

    async def take_out(self, stream: str, hits: list[tuple[_Msg, Job, list[Attempt]]]) -> None:
        """The `cancelled` result first, then the delete: should NATS fail between the two,
        the job still has exactly one result (a worker that later runs it publishes under the
        same Nats-Msg-Id, which the stream drops), rather than none."""
        if stream == wire.JOBS_STREAM:  # not claimed yet: claim it first, as the broker would
            owned = await asyncio.gather(*(bus.claim(self.js, job.team, job.id, job.run, m.seq) for m, job, _ in hits))
        else:
            owned = [True] * len(hits)
        # A queued duplicate of a job already claimed is only deleted: its result is the original's.
        await asyncio.gather(*(self.publish(job, history) for (_, job, history), mine in zip(hits, owned) if mine))
        await asyncio.gather(*(self.delete(stream, m.seq) for m, _, _ in hits))

    async def publish(self, job: Job, history: list[Attempt], result: Failed | None = None) -> None:
        err = Cancelled(message=f"job {job.id} was cancelled before it started ({self.reason})",
                        hint="nothing was called for it; submit it again (a new job id) if it is still wanted")
        result = result or Failed(job_id=job.id, error=err, attempts=history, metadata=job.metadata)
        await bus.publish_result(self.js, job.team, job.id, result, job.run)
        self.report.cancelled += 1
        self.running.discard(job.id)
        if self.keep_ids:
            self.report.ids.append(job.id)
        if self.on_cancel is not None:
            self.on_cancel(job)

    async def stream(self, stream: str, lo: int, hi: int) -> None:
        """Chunks from the back of the queue to the front, PARALLEL at a time."""
        sem = asyncio.Semaphore(PARALLEL)
        starts = list(range(lo, hi + 1, CHUNK))[::-1]

        async def one(a: int) -> None:
            async with sem:
                await self.chunk(stream, a, min(a + CHUNK, hi + 1))

        await asyncio.gather(*(one(a) for a in starts))


async def cancel_queued(
    js: JetStreamContext,
    match: Match,
    *,
    prefilter: bytes | None = None,
    reason: str = "cancelled by its client",
    rounds: int = 3,
    keep_ids: bool = False,
    on_cancel: Callable[[Job], None] | None = None,
) -> CancelReport:
    """Cancel every queued job for which `match(job)` holds. `prefilter`: bytes every
    matching message contains (its job id, its batch id), to skip decoding the others.

    PB_JOBS first, then PB_DISPATCH (a job the broker moves meanwhile is found there); then
    again over what arrived since, while a round still finds matching jobs."""
    scan = _Scan(js, match, prefilter, reason, keep_ids, on_cancel)
    lanes = _LaneCancel(scan)
    floor = {wire.JOBS_STREAM: 1, wire.DISPATCH_STREAM: 1}
    for _ in range(rounds):
        before = scan.found
        for stream in (wire.JOBS_STREAM, wire.DISPATCH_STREAM):
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                continue
            lo, hi = max(floor[stream], info.state.first_seq), info.state.last_seq
            floor[stream] = hi + 1
            if info.state.messages and lo <= hi:
                await scan.stream(stream, lo, hi)
        await lanes.round()
        if scan.found == before:
            break
    scan.report.running = len(scan.running)
    return scan.report



# -- the batch lane ---------------------------------------------------------------------------
class _LaneCancel:
    """Jobs held by a provider's batch lane (PB_LANES): ended through their end claim, which
    the lane honours, never deleted (the lane reads its provider batches' jobs back by
    sequence). Each round reads what is live there and has arrived since the last round."""

    def __init__(self, scan: _Scan):
        self.scan = scan
        self.floors: dict[str, int] | None = None  # per lane subject, the next sequence to read; None: first round

    async def round(self) -> None:
        js = self.scan.js
        try:
            info = await js.stream_info(wire.LANES_STREAM)
        except NotFoundError:
            return  # no batch lane was ever started
        hi = info.state.last_seq
        extra: list[int] = []  # live sequences below the floors: recorded in a batch not done
        if self.floors is None:
            self.floors = await self._ack_floors(info.state.first_seq)
            extra = sorted(s for s, (p, _) in (await self._live_batches()).items() if s < self.floors.get(wire.batch_lane(p), hi + 1))
        hits: list[tuple[int, Dispatch]] = []
        sem = asyncio.Semaphore(PARALLEL)

        async def chunk(subject: str, a: int, b: int) -> None:  # [a, b) of one lane's subject
            async with sem:
                seq = a
                while seq < b and (m := await self.scan.get_next(wire.LANES_STREAM, seq, subject)) is not None and m.seq < b:
                    self._hit(m.seq, m.data, hits)
                    seq = m.seq + 1

        await asyncio.gather(*(chunk(subj, a, min(a + CHUNK, hi + 1)) for subj, lo in self.floors.items() for a in range(lo, hi + 1, CHUNK)),
                             *(chunk(">", s, s + 1) for s in extra))
        self.floors = {subj: hi + 1 for subj in self.floors}
        if not hits:
            return
        self.scan.found += len(hits)
        won = await asyncio.gather(*(self._end(d) for _, d in hits))
        if not any(won):
            return
        # Read after the claims: a collection the lane recorded meanwhile is marked too (one it
        # records later checks the claims at its upload).
        where = await self._live_batches()
        marks: dict[tuple[str, str], set[int]] = {}
        for (s, _), mine in zip(hits, won):
            if mine and s in where:
                marks.setdefault(where[s], set()).add(s)
        kv = await self._kv()
        if kv is not None:
            await asyncio.gather(*(add_marks(kv, p, b, seqs) for (p, b), seqs in marks.items()))

    def _hit(self, seq: int, data: bytes, hits: list[tuple[int, Dispatch]]) -> None:
        self.scan.report.scanned += 1
        if self.scan.prefilter is not None and self.scan.prefilter not in data:
            return
        try:
            d = decode_dispatch(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the broker wrote it; not ours to cancel
        if self.scan.match(d.job):
            hits.append((seq, d))

    async def _end(self, d: Dispatch) -> bool:
        """Claim the job's end; True: cancelled here (its result published)."""
        job, scan = d.job, self.scan
        if await bus.result_exists(scan.js, job.team, job.id, job.run):
            return False  # answered, or cancelled before: it has its one result
        mine = END_CANCEL + scan.reason.encode()
        owner = await claim_end(scan.js, job.team, job.id, job.run, mine)
        if not owner.startswith(END_CANCEL):  # the lane answered it or sent it realtime
            scan.running.add(job.id)
            return False
        provider = d.route.chain[d.hop].provider
        reason = owner[len(END_CANCEL):].decode(errors="replace")  # an earlier cancel's, if it died after its claim
        await scan.publish(job, d.history, lane_cancelled(job, d.history, provider, reason))
        scan.report.lane += 1
        return True

    async def _ack_floors(self, first_seq: int) -> dict[str, int]:
        """Per lane subject, the first sequence its lane may still hold unacked (or never
        delivered): above its consumer's ack floor; a subject no consumer takes, from the start."""
        info = await self.scan.js.stream_info(wire.LANES_STREAM, subjects_filter=wire.batch_lane("*"))
        floors = {subj: first_seq for subj in info.state.subjects or {}}
        for ci in await self.scan.js.consumers_info(wire.LANES_STREAM):
            subj = ci.config.filter_subject
            if subj in floors and ci.ack_floor is not None:
                floors[subj] = max(first_seq, ci.ack_floor.stream_seq + 1)
        return floors

    async def _kv(self) -> KeyValue | None:
        try:
            return await self.scan.js.key_value(wire.LANE_STATE_BUCKET)
        except BucketNotFoundError:
            return None

    async def _live_batches(self) -> dict[int, tuple[str, str]]:
        """Each sequence of a provider batch not yet done: its provider and batch id."""
        kv = await self._kv()
        if kv is None:
            return {}
        out: dict[int, tuple[str, str]] = {}
        for entry in await live_entries(kv):  # the values come with the read: no get per key
            if entry.key.startswith("batch.") and entry.value:
                st = msgspec.json.decode(entry.value, type=ProviderBatch)
                if st.stage != "done":
                    out.update((s, (st.provider, st.id)) for s in st.seqs)
        return out
