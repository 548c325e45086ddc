"""The broker: consume pb.jobs.>, admit, claim, route, dispatch to the first hop, then ack.

Every message the stream acked ends in exactly one terminal message: refused before it is
claimed (not decodable, bad ids, team mismatch, bad key), a Failed on
pb.rejects.<subject team>.<seq>; claimed, its Result on pb.results.<team>.<job>.

A raw nats-py pull loop rather than a faststream subscriber: faststream's per-message dispatch
costs ~0.4 ms CPU here, the raw loop ~0.03 ms, and this is the hot path.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from panelboard.broker import admission, classify, health, lanes, routing, strategies, waiting
from panelboard.broker.admission import Governor, Wait
from panelboard.broker.governance_store import Admitted
from panelboard.transport import bus, logs
from panelboard.transport.lanes import publish_to_batch_lane
from panelboard.transport.puller import Puller
from panelboard.transport.streams import BROKER_CONSUMER
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_job
from panelboard.schemas.config import Config
from panelboard.schemas.errors import BadKey, DeadlineExceeded, InvalidJob, JobError, PromptTooLarge
from panelboard.schemas.job import ID_RE, Dispatch, Job, Route

log = logs.get("broker")

MAX_INFLIGHT = 1024  # jobs being admitted at once; well under the consumer's max_ack_pending


ID_RULE = "use 1-128 characters from A-Z a-z 0-9 _ - (ids become subject tokens)"


def validate(job: Job, header_id: str | None, team: str) -> InvalidJob | None:
    """Wire-contract checks msgspec's types cannot express, against the team of the subject
    the job was published on. Pure."""
    if not ID_RE.match(team):
        return InvalidJob(message=f"the job was published on pb.jobs.{team[:64]}, whose team token is not a valid team",
                          hint="publish to pb.jobs.<team>.<intent> (intent `_` for none); " + ID_RULE)
    if not ID_RE.match(job.id):
        return InvalidJob(message=f"job id {job.id[:64]!r} ({len(job.id)} characters) is not a valid id", hint=ID_RULE)
    if job.team != team:
        return InvalidJob(message=f"the job says team {job.team[:64]!r} but was published on pb.jobs.{team}",
                          hint=f"set the job's team to {team!r}, or publish it on pb.jobs.<its team>.<intent> as that team's user")
    if header_id is not None and not wire.submit_msg_id_fits(header_id, team, job.id):
        return InvalidJob(message=f"Nats-Msg-Id {header_id[:200]!r} does not name job {job.id!r} of team {team!r}",
                          hint="send no Nats-Msg-Id, or <team>.<job id>.<nonce> with a nonce unique to this submit")
    if not job.request.messages:
        return InvalidJob(message="the request has no messages", hint="send at least one message")
    return None


def admit(job: Job, cfg: Config, table: dict[str, Route], now: float) -> Route | JobError:
    """Everything the broker decides about a job before dispatch. Pure."""
    if job.deadline is not None and job.deadline <= now:
        return DeadlineExceeded(message=f"job {job.id} passed its deadline before it was admitted", hint="submit with a later deadline, or none")
    return routing.resolve(job, cfg, table)


class Broker:
    def __init__(self, js: JetStreamContext, cfg: Config, governor: Governor | None = None):
        self.js = js
        self.cfg = cfg
        self.table = routing.routes(cfg)
        self.governor = governor or Governor(cfg, None)
        self.stopping = asyncio.Event()
        self.handled = 0
        self.suspect_before = 0.0  # set on reconnect: see runtime.serve
        # Layer 2: every broker's live copy of PB_HEALTH and of its pools' queue depths.
        self.health: health.Health = {}
        self.load: dict[str, int] = {}
        self.rng = random.Random()
        self.waits = waiting.WaitLog()  # keys over a limit with on_limit=wait: logged and shown in `status`

    async def handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        header_id = headers.get(wire.HDR_MSG_ID)
        seq = msg.metadata.sequence.stream
        # The subject's team is who published it: a tenant user may publish only under its own.
        team = wire.jobs_subject_team(msg.subject)
        early: InvalidJob | PromptTooLarge | None = admission.screen(msg.data, self.cfg.governance)
        if early is None:
            try:
                job = decode_job(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                early = InvalidJob(
                    message=f"the job could not be decoded: {e}",
                    hint="send a JSON Job as documented in the README's wire contract (id, client, request.messages)",
                )
        if early is not None:
            # The raw payload is kept: its dead letter cuts keys to their prefix and truncates it.
            await bus.reject_job(self.js, team, seq, early, reason=early.__struct_config__.tag if isinstance(early, PromptTooLarge) else "invalid",
                                 raw=msg.data)
            log.info("job.rejected", seq=seq, team=team, error=early.__struct_config__.tag, detail=early.message[:200])
            await msg.ack()
            return
        if (bad := validate(job, header_id, team)) is not None:  # not addressable by its ids: by its seq
            await self.reject(msg, team, seq, bad, job)
            return
        if msg.metadata.timestamp.timestamp() < self.suspect_before and await self.already_underway(job):
            await msg.ack()
            return
        err: JobError | None = admission.check_fields(job)
        if err is None and (found := admission.forbidden_fields(msg.data)):
            err = admission.refuse_fields(found)
        if err is None and not job.intent:  # layer 1: no intent given, classify the request
            intent, source, _ = classify.intent_for(job, self.cfg)
            if source == "classified":
                job = msgspec.structs.replace(job, intent=intent)  # cost records carry it
        now = time.time()
        decision = err or admit(job, self.cfg, self.table, now)
        if isinstance(decision, Route):
            decision = strategies.choose(decision, self.cfg, self.health, self.load, self.rng)
            if self.cfg.health.enabled:  # layer 2: degraded hops behind healthy ones, bar a probe share
                decision = health.order_chain(decision, self.health, self.rng, self.cfg.health.probe_share)
        reserved = 0.0
        mirror = self.shadow_route(decision) if isinstance(decision, Route) else None
        if isinstance(decision, Route) and self.governor.on is not False:
            job = admission.bound(job, decision, self.cfg)  # the worst case reserved is the worst case run
            verdict = await self.governor.admit(job, decision, msg, now, shadow=mirror)
            if isinstance(verdict, Wait):  # backpressure: the job waits in the stream
                await msg.nak(delay=verdict.delay_s)
                log.debug("job.waiting", job_id=job.id, reason=verdict.reason, delay_s=round(verdict.delay_s, 3))
                if (row := self.waits.note(verdict.reason, job.id, now)) is not None:  # once per key per interval
                    log.info("ratelimit.waiting", owner=row.owner, limit=row.limit, jobs=row.jobs, waiting_s=round(now - row.since, 1),
                             hint="on_limit=wait: these jobs stay in PB_JOBS until the window frees room; "
                                  "raise the limit or use on_limit=fail (`panelboard status` lists them)")
                return
            self.waits.done(job.id)
            if isinstance(verdict, Admitted) and verdict.team != team:
                # The ledger's admissions are keyed by job id alone: this id was admitted for
                # another team. Refused, never run or billed under that team.
                verdict = InvalidJob(message=f"job id {job.id!r} is already recorded in this gateway's ledger for another team",
                                     hint="submit it under another job id")
            if isinstance(verdict, (BadKey, InvalidJob)):  # the team is not authenticated: nothing to claim
                await self.reject(msg, team, seq, verdict, admission.public(job))
                return
            if isinstance(verdict, Admitted):
                reserved = verdict.reserved_nano / 1e9
                # A mirror runs only on its own reservation (taken at the first admission).
                mirror = self.shadow_route(decision, sampled=True) if verdict.shadow_nano else None
            else:
                decision = verdict
        job = admission.public(job)  # from here on, never the whole key
        if not isinstance(decision, Route) and self.governor.on is not False:
            # Refused before the key was checked: the team is not authenticated, so the job id
            # is not claimed under it (that would let anyone pre-empt another team's id).
            await self.reject(msg, team, seq, decision, job)
            return
        # The team is authenticated (subject permissions, or the key): the job id becomes ours.
        if not await bus.claim(self.js, team, job.id, job.run, seq):
            # Another message of this team owns this id: a duplicate submit; its one result is
            # the original's, on the same subject.
            log.info("job.duplicate", job_id=job.id, team=team, seq=seq)
            await msg.ack()
            return
        if isinstance(decision, Route):
            if mirror is not None:  # before the live one: both or neither on a crash
                await bus.publish_dispatch(self.js, Dispatch(job=job, route=mirror, hop=0, admitted_at=time.time(), shadow=True))
            lane = lanes.choose(job, decision, self.cfg, now)
            d = Dispatch(job=job, route=decision, hop=0, admitted_at=time.time(), reserved_usd=reserved, lane="flex" if lane.lane == "flex" else None)
            await (publish_to_batch_lane(self.js, d) if lane.lane == "batch" else bus.publish_dispatch(self.js, d))
            log.debug("job.dispatched", job_id=job.id, tier=decision.tier, provider=decision.chain[0].provider, lane=lane.lane)
        else:
            reason = decision.__struct_config__.tag
            await bus.fail_job(self.js, team, job.id, decision, reason=reason, job=job)
            log.info("job.rejected", job_id=job.id, team=team, error=reason, detail=decision.message)
        await msg.ack()

    async def reject(self, msg: Msg, team: str, seq: int, error: JobError, job: Job) -> None:
        reason = error.__struct_config__.tag
        await bus.reject_job(self.js, team, seq, error, reason="invalid" if reason == "invalid_job" else reason, job=job)
        log.info("job.rejected", seq=seq, team=team, job_id=job.id[:128], error=reason, detail=error.message[:200])
        await msg.ack()

    def shadow_route(self, live: Route, sampled: bool = False) -> Route | None:
        """The candidate route to mirror this job to, for the tier's sampled share of jobs
        (`sampled`: the draw was made before)."""
        rule = self.cfg.tiers[live.tier].shadow
        if rule is None or (not sampled and self.rng.random() >= rule.sample):
            return None
        return self.table[rule.tier]

    async def already_underway(self, job: Job) -> bool:
        """After a server restart lost recent acks: a job with a result or recorded attempts
        was dispatched before; dispatching it again would run it twice."""
        if await bus.result_exists(self.js, job.team, job.id, job.run):
            return True
        return bool(await bus.read_attempts(self.js, job.team, job.id, job.run))

    async def _safe(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:  # NATS trouble mid-publish: leave the job unacked, it is redelivered
            log.exception("job.handle_failed", subject=msg.subject)

    async def _follow_health(self) -> None:
        """Aggregate PB_COSTS into PB_HEALTH (every broker does it from the same records, so
        they agree) and keep local copies of the health states and pool loads."""
        from panelboard.broker.health_service import Aggregator, HealthView, pool_load
        from panelboard.transport.streams import ensure_health_kv

        view = await HealthView.start(self.js, self.cfg)
        self.health = view.states
        aggregator = asyncio.create_task(Aggregator(self.js, self.cfg, await ensure_health_kv(self.js, self.cfg)).run())
        try:
            while not self.stopping.is_set():
                try:
                    self.load = await pool_load(self.js)
                except Exception as e:  # a leader election: keep the last figures
                    log.debug("panelboard.broker.load_failed", error=type(e).__name__)
                try:
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
        finally:
            aggregator.cancel()
            await view.stop()

    async def _publish_waits(self) -> None:
        """This broker's table of waiting keys into PB_WAITING, every interval while it has one."""
        name = f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")
        shown = False
        while True:
            await asyncio.sleep(waiting.INTERVAL_S / 2)
            table = self.waits.snapshot(time.time())
            if table or shown:
                try:
                    await waiting.publish(self.js, name, table, self.cfg.nats.replicas)
                    shown = bool(table)
                except Exception as e:  # reconnecting: the next round tries again
                    log.debug("panelboard.broker.waits_publish_failed", error=type(e).__name__)

    async def run(self) -> None:
        await self.governor.start(self.js)  # keys, limits, budgets, settlement: when governance is on
        follower = asyncio.create_task(self._follow_health()) if self.cfg.health.enabled else None
        waits = asyncio.create_task(self._publish_waits())
        puller = Puller(self.js._nc, wire.JOBS_STREAM, BROKER_CONSUMER, min_request=MAX_INFLIGHT // 8)
        await puller.start()
        inflight: set[asyncio.Task[None]] = set()
        log.info("panelboard.broker.started", tiers=list(self.cfg.tiers), intents=len(self.cfg.intents))
        while not self.stopping.is_set():
            free = MAX_INFLIGHT - len(inflight)
            if free <= 0:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                await puller.top_up(free)
            except Exception as e:  # reconnecting: nats-py retries underneath
                log.warning("panelboard.broker.pull_failed", error=type(e).__name__)
            if puller.idle and inflight:  # too few free slots for a pull request: let some finish
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            msg = await puller.get(timeout=0.5)
            if msg is None:
                continue
            for m in [msg, *puller.take_ready()]:
                t = asyncio.create_task(self._safe(m))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
                self.handled += 1
        for m in await puller.stop():
            await m.nak()
        if inflight:
            await asyncio.wait(inflight, timeout=10)
        if follower is not None:
            follower.cancel()
        waits.cancel()
        await self.governor.stop()
        log.info("panelboard.broker.stopped", handled=self.handled)
