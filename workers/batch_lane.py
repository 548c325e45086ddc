"""A provider's batch lane: collect the dispatches the broker sent to pb.lanes.batch.<provider>
into provider batches (per model, flushed by size or linger), upload, create, poll, and fan
the answers back into the ordinary path: one Result and one cost record (at the lane's
discount, lane="batch") per job. Decisions are in workers/batch_plan.py; this is the I/O.

Durable at every step. One process of the pool owns the lane at a time (a lease in
PB_LANE_STATE, renewed by compare-and-set); each provider batch's stage is written there
before anything relies on it, and its jobs stay in PB_LANES, named by sequence:
  - collected, not yet recorded: the messages are unacked, so they are redelivered;
  - recorded: a sequence in a known provider batch is never put in another one;
  - uploaded or created but not recorded: found again by the file's name and the batch's
    metadata.pb_batch, so nothing is uploaded or submitted twice;
  - mid fan-out: jobs that already have a result are skipped, the rest redone (deduped ids).
A provider batch that fails or expires sends its unanswered jobs realtime; one still running
reserve_s before its earliest deadline is cancelled and all its jobs go realtime.

Cancel (broker/cancel.py) reaches a job here through its end claim (wire.end_claim): before
the lane publishes a job's Completed result or sends it realtime, it claims the job's end; a
cancel that claimed it first has given it its `cancelled` result, and the lane publishes only
the cost record of a line the provider answered anyway (billed). Jobs cancelled before the
upload are left out of it (ProviderBatch.dropped); a provider batch whose every job a cancel
has marked (CancelMarks) is cancelled provider-side, and what it ran before is billed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from panelboard.schemas.pricing import call_cost
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_dispatch, encode
from panelboard.schemas.config import BatchLane as Capability
from panelboard.schemas.config import Config
from panelboard.schemas.errors import ResponseTooLarge
from panelboard.schemas.job import Attempt, AttemptDecision, Completed, CostRecord, Dispatch
from panelboard.schemas.lanes import (BATCH_ATTEMPT, END_CANCEL, END_LANE, Owner, ProviderBatch, capability, custom_id, lane_cancelled,
                                      owner_key, state_key)
from panelboard.transport import bus, logs
from panelboard.transport.consumer import nap
from panelboard.transport.kv_read import live_entries
from panelboard.transport.lanes import claim_end, ensure_state_kv, read_end, read_marks
from panelboard.transport.streams import ensure_consumer
from panelboard.workers.batch_plan import TERMINAL, Answered, Errored, Line, fallback_at, fits, flush_due, poll_delay_s, too_late
from panelboard.workers.providers.anthropic_batch import AnthropicBatchAPI
from panelboard.workers.providers.batch_api import BatchAPI, BatchAPIError, BatchObject
from panelboard.workers.providers.openai_batch import OpenAIBatchAPI
from panelboard.workers.usage import checked_usage

log = logs.get("batch_lane")

_PARALLEL = 64  # stream reads and publishes in flight while loading or fanning out
_RETRY_S = 2.0  # after a transient provider or NATS error


def lane_consumer(provider: str) -> str:
    return f"lane-{provider}"


def batch_caps(cfg: Config, provider: str) -> list[Capability]:
    """The batch lanes of a provider's models (its own and any model's override)."""
    return [c for name, m in cfg.models.items() if m.provider == provider and (c := capability(cfg, name)) is not None]


def consumer_config(cfg: Config, provider: str) -> ConsumerConfig:
    caps = batch_caps(cfg, provider)
    return ConsumerConfig(
        durable_name=lane_consumer(provider),
        filter_subject=wire.batch_lane(provider),
        ack_policy=AckPolicy.EXPLICIT,
        # Held unacked while a collection lingers; a dead owner's are redelivered after this.
        ack_wait=1.5 * max(c.linger_s for c in caps) + 10.0,
        max_ack_pending=min(2 * max(c.max_requests for c in caps), 100_000),
        max_deliver=-1,
    )


class _Collection:
    __slots__ = ("msgs", "jobs", "lines", "size", "oldest_at")

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.jobs: list[tuple[int, Dispatch]] = []
        self.lines: list[bytes] = []
        self.size = 0
        self.oldest_at: float | None = None


class LeaseLost(Exception):
    pass


class BatchLane:
    def __init__(self, js: JetStreamContext, cfg: Config, provider: str, api_key: str | None = None):
        self.js = js
        self.cfg = cfg
        self.provider = provider
        caps = batch_caps(cfg, provider)
        assert caps, f"{provider} declares no batch lane"
        self.lease_s = min(c.lease_s for c in caps)
        api = AnthropicBatchAPI if caps[0].api == "anthropic" else OpenAIBatchAPI
        self.api: BatchAPI = api(cfg.providers[provider], api_key)
        self.creating = asyncio.Lock()  # one create in flight: how a lost Anthropic create is found again
        self.claimed: set[str] = set()  # provider batch ids our states hold
        self.me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}".replace(".", "-")
        self.stopping = asyncio.Event()
        self.suspect_before = 0.0  # runtime sets it on reconnect; every step here is checked anyway
        self.known: set[int] = set()  # PB_LANES sequences already in a provider batch
        self.cancel_asked: set[str] = set()  # provider batches we asked the provider to cancel
        self.revs: dict[str, int] = {}  # KV revision of each provider batch we drive
        self.kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- ownership ------------------------------------------------------------------------
    def _owner_value(self) -> bytes:
        return encode(Owner(owner=self.me, until=time.time() + self.lease_s))

    async def _acquire(self) -> int | None:
        """The lease's KV revision once we own the lane; None while another live process does."""
        assert self.kv is not None
        key = owner_key(self.provider)
        try:
            return await self.kv.create(key, self._owner_value())
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:  # deleted (released) since: create it next round
            return None
        held = msgspec.json.decode(entry.value or b"{}", type=Owner) if entry.value else None
        if held is not None and held.until > time.time() and held.owner != self.me:
            return None
        try:
            return await self.kv.update(key, self._owner_value(), last=entry.revision)
        except KeyWrongLastSequenceError:  # someone else took it first
            return None

    async def run(self) -> None:
        log.info("batch_lane.started", provider=self.provider, me=self.me)
        try:
            while not self.stopping.is_set():
                try:
                    if self.kv is None:
                        await ensure_consumer(self.js, wire.LANES_STREAM, consumer_config(self.cfg, self.provider))
                        self.kv = await ensure_state_kv(self.js, self.cfg)
                    rev = await self._acquire()
                except Exception as e:  # NATS away or slow: try again
                    log.warning("batch_lane.acquire_failed", provider=self.provider, error=type(e).__name__)
                    rev = None
                if rev is None:
                    await self._sleep(self.lease_s / 3)
                    continue
                log.info("batch_lane.owner", provider=self.provider, me=self.me)
                if not await self._own(rev):  # resumed nothing: the KV is read again after a pause
                    await self._sleep(_RETRY_S)
        finally:
            await self.api.aclose()
            log.info("batch_lane.stopped", provider=self.provider)

    async def _own(self, rev: int) -> bool:
        """Drive every provider batch of this provider and collect new ones, while the lease
        holds. Losing it stops everything at once: the next owner resumes from the KV. So does
        a task that failed on an error of its own: everything restarts from the KV (what a
        kill -9 would do), never a lane that renews its lease and drives nothing.
        False when it stopped on a failure: the caller pauses before taking the lane up again."""
        assert self.kv is not None
        try:
            states = await self._load_states()
        except Exception as e:  # a timeout on a busy server: still the owner, read it again
            log.warning("batch_lane.resume_failed", provider=self.provider, error=repr(e)[:200])
            return False
        tasks = [asyncio.create_task(self._collect())]
        for st, r in states:
            tasks.append(asyncio.create_task(self._drive(st, r)))
        self._tasks = tasks
        try:
            while not self.stopping.is_set():
                await self._sleep(self.lease_s / 3)
                if self.stopping.is_set():
                    break
                try:
                    rev = await self.kv.update(owner_key(self.provider), self._owner_value(), last=rev)
                except KeyWrongLastSequenceError:
                    log.warning("batch_lane.lease_lost", provider=self.provider, me=self.me)
                    return True
                except Exception as e:  # NATS away: the lease may lapse; CAS tells us next time
                    log.warning("batch_lane.renew_failed", provider=self.provider, error=type(e).__name__)
                failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
                if failed:
                    log.error("batch_lane.task_failed", provider=self.provider, error=repr(failed[0])[:300], restarting=True)
                    return False
            return True
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.stopping.is_set():  # a clean stop hands the lane over at once
                try:
                    await self.kv.delete(owner_key(self.provider), last=rev)
                except Exception:
                    pass

    async def _load_states(self) -> list[tuple[ProviderBatch, int]]:
        assert self.kv is not None
        out = []
        mine = f"batch.{self.provider}."
        for entry in await live_entries(self.kv):  # the values come with the read: no get per key
            if not entry.key.startswith(mine) or not entry.value:
                continue
            st = msgspec.json.decode(entry.value, type=ProviderBatch)
            self.known.update(st.seqs)
            if st.batch_id:
                self.claimed.add(st.batch_id)
            self.revs[entry.key] = entry.revision or 0
            if st.stage != "done":
                out.append((st, entry.revision or 0))
        return out

    async def _save(self, st: ProviderBatch) -> None:
        """The stage, compare-and-set on the revision we hold: a process that lost the lane
        can never overwrite its successor's progress."""
        assert self.kv is not None
        key = state_key(self.provider, st.id)
        try:
            if key in self.revs:
                self.revs[key] = await self.kv.update(key, encode(st), last=self.revs[key])
            else:
                self.revs[key] = await self.kv.create(key, encode(st))
        except KeyWrongLastSequenceError as e:
            raise LeaseLost(key) from e

    async def _sleep(self, s: float) -> None:
        await nap(self.stopping, s)

    # -- collecting -----------------------------------------------------------------------
    async def _collect(self) -> None:
        psub = await self.js.pull_subscribe_bind(durable=lane_consumer(self.provider), stream=wire.LANES_STREAM)
        pending: dict[str, _Collection] = {}
        try:
            while True:
                try:
                    msgs = await psub.fetch(256, timeout=0.5)
                except (asyncio.TimeoutError, TimeoutError):
                    msgs = []
                except Exception as e:  # reconnecting
                    log.warning("batch_lane.fetch_failed", provider=self.provider, error=type(e).__name__)
                    await asyncio.sleep(_RETRY_S)
                    msgs = []
                now = time.time()
                for m in msgs:
                    await self._take(m, pending, now)
                for model, coll in list(pending.items()):
                    cap = capability(self.cfg, model)
                    if cap is not None and flush_due(len(coll.jobs), coll.size, coll.oldest_at, now, cap):
                        del pending[model]
                        await self._flush(model, coll)
        finally:
            for coll in pending.values():  # not recorded in any batch: back to the stream
                for m in coll.msgs:
                    try:
                        await m.nak()
                    except Exception:
                        pass
            # A fetch cancelled mid-wait leaves its subscription unfinished: left open, it held
            # the connection's drain at exit for its whole timeout (25 s a worker, seen in tests).
            try:
                await psub.unsubscribe()
            except Exception:
                pass

    async def _take(self, m: Msg, pending: dict[str, _Collection], now: float) -> None:
        seq = m.metadata.sequence.stream
        if seq in self.known:  # recorded in a provider batch before an ack was lost
            await m.ack()
            return
        d = decode_dispatch(m.data)
        job = d.job
        if m.metadata.num_delivered > 1 and await bus.result_exists(self.js, job.team, job.id, job.run):
            await m.ack()
            return
        hop = d.route.chain[d.hop]
        cap = capability(self.cfg, hop.model)
        if cap is None or too_late(job.deadline, now, cap):  # config changed, or it waited too long
            if await self._decide(d):
                await bus.publish_dispatch(self.js, d)
            await m.ack()
            return
        line = self.api.encode_line(custom_id(job.team, job.id, job.run, d.hop), job.request, self.cfg.models[hop.model])
        coll = pending.setdefault(hop.model, _Collection())
        if coll.jobs and not fits(len(coll.jobs), coll.size, len(line), cap):
            del pending[hop.model]
            await self._flush(hop.model, coll)
            coll = pending.setdefault(hop.model, _Collection())
        coll.msgs.append(m)
        coll.jobs.append((seq, d))
        coll.lines.append(line)
        coll.size += len(line)
        coll.oldest_at = coll.oldest_at or now

    async def _flush(self, model: str, coll: _Collection) -> None:
        deadlines = [d.job.deadline for _, d in coll.jobs if d.job.deadline is not None]
        st = ProviderBatch(id=uuid.uuid4().hex, provider=self.provider, model=model, seqs=[s for s, _ in coll.jobs],
                           collected_at=time.time(), earliest_deadline=min(deadlines) if deadlines else None)
        await self._save(st)  # from here the jobs belong to this provider batch
        self.known.update(st.seqs)
        await _gather_bounded([m.ack() for m in coll.msgs])
        log.info("batch_lane.collected", provider=self.provider, model=model, batch=st.id, jobs=len(st.seqs), bytes=coll.size)
        self._tasks.append(asyncio.create_task(self._drive(st, self.revs[state_key(self.provider, st.id)], dict(coll.jobs))))

    # -- one provider batch ---------------------------------------------------------------
    async def _load_jobs(self, seqs: list[int]) -> dict[int, Dispatch]:
        async def one(seq: int) -> tuple[int, Dispatch] | None:
            try:
                raw = await self.js.get_msg(wire.LANES_STREAM, seq=seq, direct=True)
            except NotFoundError:  # aged out of PB_LANES: nothing left to run or answer
                log.error("batch_lane.job_missing", provider=self.provider, seq=seq)
                return None
            return seq, decode_dispatch(raw.data or b"")

        return dict(x for x in await _gather_bounded([one(s) for s in seqs]) if x is not None)

    async def _drive(self, st: ProviderBatch, rev: int, jobs: dict[int, Dispatch] | None = None) -> None:
        cap = capability(self.cfg, st.model)
        if cap is None:  # the config dropped the lane: everything left goes realtime
            cap = Capability(api="openai", reserve_s=1e12)
        while jobs is None:  # a resumed batch: its jobs are read back from PB_LANES
            try:
                jobs = await self._load_jobs(st.seqs)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # timeouts on a busy server: read them again
                log.warning("batch_lane.step_failed", provider=self.provider, batch=st.id, stage="loading", error=repr(e)[:200])
                await self._sleep(_RETRY_S)
                if self.stopping.is_set():
                    return
        while st.stage != "done":
            now = time.time()
            fb = fallback_at(st.earliest_deadline, cap)
            try:
                if st.stage in ("collected", "uploaded", "created") and fb is not None and now >= fb:
                    st = await self._fall_back(st, jobs)
                elif st.stage == "collected":
                    st = msgspec.structs.replace(st, dropped=await self._cancelled(jobs))
                    if not self._lines(st, jobs):  # every job cancelled: the provider never sees them
                        st = msgspec.structs.replace(st, stage="done")
                        log.info("batch_lane.all_cancelled", provider=self.provider, batch=st.id, stage="collected")
                    else:
                        file_id = await self.api.prepare(st.id, self._lines(st, jobs))
                        st = msgspec.structs.replace(st, stage="uploaded", file_id=file_id)
                        log.info("batch_lane.uploaded", provider=self.provider, batch=st.id, file_id=file_id, dropped=len(st.dropped))
                elif st.stage == "uploaded":
                    if st.creating_since is None and await self._all_cancelled(st, jobs):  # no create was ever sent
                        st = msgspec.structs.replace(st, stage="done")
                        log.info("batch_lane.all_cancelled", provider=self.provider, batch=st.id, stage="uploaded")
                    else:
                        st = await self._create(st, jobs, cap)
                        continue
                elif st.stage in ("created", "fell_back"):
                    if st.batch_id is None:
                        st = msgspec.structs.replace(st, stage="done")
                    else:
                        b = await self.api.get(st.batch_id)
                        if b.status not in TERMINAL:
                            if st.stage == "created" and st.batch_id not in self.cancel_asked and await self._all_cancelled(st, jobs):
                                await self._cancel_provider_batch(st)
                                continue
                            st.polls += 1  # not saved: a resumed poll may start fast again
                            await self._sleep(poll_delay_s(st.polls, cap, time.time(), fb if st.stage == "created" else None))
                            continue
                        counts = msgspec.structs.asdict(b.request_counts) if b.request_counts else None
                        log.info("batch_lane.ended", provider=self.provider, batch=st.id, status=b.status, counts=counts)
                        ended = msgspec.structs.replace(st, status=b.status, output_file_id=b.output_file_id, error_file_id=b.error_file_id)
                        if st.stage == "fell_back":  # its jobs went realtime; what it answered is billed
                            await self._bill_late(ended, jobs, cap)
                            st = msgspec.structs.replace(ended, stage="done")
                        else:
                            st = msgspec.structs.replace(ended, stage="ended")
                elif st.stage == "ended":
                    await self._fan_out(st, jobs, cap)
                    st = msgspec.structs.replace(st, stage="done")
                    log.info("batch_lane.done", provider=self.provider, batch=st.id)
            except BatchAPIError as e:
                if e.transient:
                    log.warning("batch_lane.provider_error", provider=self.provider, batch=st.id, stage=st.stage, error=str(e)[:200])
                    await self._sleep(_RETRY_S)
                    continue
                # Refused for good (a file or batch it will not take, or one that vanished):
                # every job still waiting goes realtime.
                log.warning("batch_lane.refused", provider=self.provider, batch=st.id, stage=st.stage, error=str(e)[:200])
                await self._realtime(st, jobs, f"provider batch refused: {e}", status=e.status)
                st = msgspec.structs.replace(st, stage="done")
            except LeaseLost:
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS trouble: the stage is unchanged, try again
                log.warning("batch_lane.step_failed", provider=self.provider, batch=st.id, stage=st.stage, error=repr(e)[:200])
                await self._sleep(_RETRY_S)
                continue
            await self._save(st)

    def _lines(self, st: ProviderBatch, jobs: dict[int, Dispatch]) -> list[bytes]:
        dropped = set(st.dropped)
        return [self.api.encode_line(custom_id(d.job.team, d.job.id, d.job.run, d.hop), d.job.request, self.cfg.models[st.model])
                for d in (jobs[s] for s in st.seqs if s in jobs and s not in dropped)]

    # -- cancel ---------------------------------------------------------------------------
    async def _decide(self, d: Dispatch) -> bool:
        """Claim the job's end for the lane: True when the lane ends it (its answer, or realtime);
        False when a cancel claimed it first. Then its `cancelled` result is made sure of: a
        cancel that died between its claim and its result leaves that to whoever comes next."""
        job = d.job
        owner = await claim_end(self.js, job.team, job.id, job.run, END_LANE)
        if owner == END_LANE:
            return True
        await self._finish_cancel(d, owner)
        return False

    async def _finish_cancel(self, d: Dispatch, owner: bytes) -> None:
        job = d.job
        if owner.startswith(END_CANCEL) and not await bus.result_exists(self.js, job.team, job.id, job.run):
            reason = owner[len(END_CANCEL):].decode(errors="replace")
            await bus.publish_result(self.js, job.team, job.id, lane_cancelled(job, d.history, self.provider, reason), job.run)

    async def _cancelled(self, jobs: dict[int, Dispatch]) -> list[int]:
        """The sequences whose end a cancel has claimed, each one's result made sure of."""
        async def one(seq: int, d: Dispatch) -> int | None:
            owner = await read_end(self.js, d.job.team, d.job.id, d.job.run)
            if owner is None or not owner.startswith(END_CANCEL):
                return None
            await self._finish_cancel(d, owner)
            return seq

        return sorted(s for s in await _gather_bounded([one(s, d) for s, d in jobs.items()]) if s is not None)

    async def _all_cancelled(self, st: ProviderBatch, jobs: dict[int, Dispatch]) -> bool:
        """Every job of the provider batch ended by a cancel (its marks, one KV read)."""
        assert self.kv is not None
        ended = set(st.dropped) | await read_marks(self.kv, self.provider, st.id)
        return all(s in ended for s in st.seqs if s in jobs)

    async def _cancel_provider_batch(self, st: ProviderBatch) -> None:
        """Nobody wants its answers: cancel it provider-side (what it ran meanwhile is billed at
        the fan-out). Asked once per process; one that ended meanwhile is fanned out as usual."""
        assert st.batch_id is not None
        self.cancel_asked.add(st.batch_id)
        try:
            await self.api.cancel(st.batch_id)
            log.info("batch_lane.cancelled", provider=self.provider, batch=st.id, provider_batch=st.batch_id)
        except BatchAPIError as e:
            if e.transient:
                self.cancel_asked.discard(st.batch_id)
                raise
            log.info("batch_lane.cancel_failed", provider=self.provider, batch=st.id, error=str(e)[:200])

    async def _create(self, st: ProviderBatch, jobs: dict[int, Dispatch], cap: Capability) -> ProviderBatch:
        """Create the provider batch, once: the moment is recorded before the create is sent,
        and a create sent before (by us or a crashed owner) is looked up and adopted."""
        file_id = st.file_id
        assert file_id is not None
        lines = self._lines(st, jobs)
        async with self.creating:
            since = st.creating_since
            if since is None:
                st = msgspec.structs.replace(st, creating_since=time.time())
                await self._save(st)
            b = await self.api.lookup(st.id, since, len(lines), self.claimed) or await self.api.create_batch(st.id, file_id, cap.completion_window, lines)
            self.claimed.add(b.id)
            st = msgspec.structs.replace(st, stage="created", batch_id=b.id, created_at=time.time(), status=b.status)
            await self._save(st)
        log.info("batch_lane.created", provider=self.provider, batch=st.id, provider_batch=b.id, adopted=since is not None)
        return st

    async def _fall_back(self, st: ProviderBatch, jobs: dict[int, Dispatch]) -> ProviderBatch:
        """The earliest deadline is near: cancel provider-side, send every job realtime. A
        provider batch that ended meanwhile is fanned out as usual instead."""
        if st.stage == "uploaded" and st.batch_id is None:  # a create whose answer a crash lost
            found = await self.api.lookup(st.id, st.creating_since, len(self._lines(st, jobs)), self.claimed)
            st = msgspec.structs.replace(st, batch_id=found.id) if found else st
        if st.batch_id is not None:
            b = await self.api.get(st.batch_id)
            if b.status in TERMINAL:
                return msgspec.structs.replace(st, stage="ended", status=b.status, output_file_id=b.output_file_id, error_file_id=b.error_file_id)
            try:
                await self.api.cancel(st.batch_id)
            except BatchAPIError as e:  # already ended, or gone: its answers are billed below
                log.info("batch_lane.cancel_failed", provider=self.provider, batch=st.id, error=str(e)[:200])
        await self._realtime(st, jobs, "the provider batch had not answered reserve_s before the earliest deadline it holds")
        log.warning("batch_lane.fell_back", provider=self.provider, batch=st.id, jobs=len(jobs), stage=st.stage)
        return msgspec.structs.replace(st, stage="fell_back")

    def _attempt(self, st: ProviderBatch, d: Dispatch, status: int, error: str | None, decision: AttemptDecision, latency_ms: float) -> Attempt:
        return Attempt(provider=self.provider, model=st.model, hop=d.hop, attempt=BATCH_ATTEMPT, status=status, run=d.job.run,
                       latency_ms=round(latency_ms, 2), error=error, decision=decision)

    async def _realtime(self, st: ProviderBatch, jobs: dict[int, Dispatch], why: str, status: int = 0) -> None:
        async def one(d: Dispatch) -> None:
            if await bus.result_exists(self.js, d.job.team, d.job.id, d.job.run) or not await self._decide(d):
                return
            this = self._attempt(st, d, status, why[:300], "realtime", 0.0)
            await bus.publish_dispatch(self.js, msgspec.structs.replace(d, history=[*d.history, this]))

        await _gather_bounded([one(d) for d in jobs.values()])

    def _cost(self, st: ProviderBatch, d: Dispatch, line: Answered, cap: Capability, now: float) -> tuple[CostRecord, Completed, Attempt]:
        job = d.job
        model = self.cfg.models[st.model]
        usage, reported = checked_usage(line.response.usage, model)
        response = msgspec.structs.replace(line.response, usage=usage) if reported is not None else line.response
        latency_ms = (now - (st.created_at or now)) * 1000
        queue_ms = ((st.created_at or now) - (d.admitted_at or now)) * 1000
        rec = CostRecord(
            job_id=job.id, team=job.team, key_prefix=job.key[:8] if job.key else None, feature=job.feature, intent=job.intent,
            tier=d.route.tier, provider=self.provider, model=st.model, quantization=model.quantization, hop=d.hop,
            attempt=BATCH_ATTEMPT, run=job.run, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=call_cost(model, usage.prompt_tokens, usage.completion_tokens) * cap.discount, latency_ms=round(latency_ms, 2),
            queue_ms=round(max(0.0, queue_ms), 2), outcome="ok", ts=st.created_at or now, reported_usage=reported, lane="batch",
        )
        this = self._attempt(st, d, 200, None, "succeed", latency_ms)
        result = Completed(job_id=job.id, response=response, tier=d.route.tier, provider=self.provider, model=st.model,
                           cost_usd=rec.cost_usd, attempts=[*d.history, this], latency_ms=this.latency_ms, queue_ms=rec.queue_ms,
                           metadata=job.metadata, reported_usage=reported, lane="batch")
        return rec, result, this

    async def _answers(self, st: ProviderBatch) -> dict[str, Line]:
        assert st.batch_id is not None
        return await self.api.results(BatchObject(id=st.batch_id, status=st.status or "", output_file_id=st.output_file_id,
                                                  error_file_id=st.error_file_id))

    async def _fan_out(self, st: ProviderBatch, jobs: dict[int, Dispatch], cap: Capability) -> None:
        """Each job's answer as the ordinary path would give it (cost first, then result);
        a job whose line errored or never ran goes realtime. A job a cancel ended keeps its
        `cancelled` result; if its line was answered, that call is billed: its cost record only.
        Redone after a crash: jobs with a result get no other, the rest are republished under
        the same ids."""
        lines = await self._answers(st)
        now = time.time()
        counts = {"answered": 0, "realtime": 0, "cancelled": 0}

        async def one(d: Dispatch) -> None:
            job = d.job
            line = lines.get(custom_id(job.team, job.id, job.run, d.hop))
            if await bus.result_exists(self.js, job.team, job.id, job.run):
                if isinstance(line, Answered):  # billed whatever its result (a redo is deduped)
                    await bus.publish_cost(self.js, self._cost(st, d, line, cap, now)[0])
                return
            if isinstance(line, Answered):
                rec, result, this = self._cost(st, d, line, cap, now)
                await bus.publish_cost(self.js, rec)
                if not await self._decide(d):
                    counts["cancelled"] += 1
                    return
                try:
                    await bus.publish_result(self.js, job.team, job.id, result, job.run)
                except bus.PayloadTooLarge:  # billed already; realtime could only bill it again
                    err = ResponseTooLarge(message=f"{self.provider}'s batch answer for job {job.id} is over the NATS message limit",
                                           hint="lower max_tokens; the call is billed in its cost record")
                    await bus.fail_job(self.js, job.team, job.id, err, reason="response_too_large", job=job, attempts=[*d.history, this])
                counts["answered"] += 1
                return
            if not await self._decide(d):
                counts["cancelled"] += 1
                return
            why = f"batch line {line.code}: {line.message}" if isinstance(line, Errored) else f"no answer in the provider batch ({st.status})"
            this = self._attempt(st, d, line.status if isinstance(line, Errored) else 0, why[:300], "realtime", 0.0)
            await bus.publish_dispatch(self.js, msgspec.structs.replace(d, history=[*d.history, this]))
            counts["realtime"] += 1

        await _gather_bounded([one(d) for d in jobs.values()])
        log.info("batch_lane.fanned_out", provider=self.provider, batch=st.id, status=st.status, **counts)

    async def _bill_late(self, st: ProviderBatch, jobs: dict[int, Dispatch], cap: Capability) -> None:
        """A provider batch we gave up on may still have answered some lines before it was
        cancelled: those calls are billed, so each gets its cost record (its job's result
        came from the realtime lane)."""
        lines = await self._answers(st)
        now = time.time()
        recs = [self._cost(st, d, line, cap, now)[0] for d in jobs.values()
                if isinstance(line := lines.get(custom_id(d.job.team, d.job.id, d.job.run, d.hop)), Answered)]
        await _gather_bounded([bus.publish_cost(self.js, r) for r in recs])
        if recs:
            log.info("batch_lane.billed_late", provider=self.provider, batch=st.id, lines=len(recs))


async def _gather_bounded(coros: list) -> list:
    sem = asyncio.Semaphore(_PARALLEL)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))
