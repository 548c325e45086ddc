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

from panelboard.broker import admission, difficulty, health, lanes, routing, waiting
from panelboard.broker.admission import Governor, Wait
from panelboard.broker.governance_store import Admitted
from panelboard.broker.health_aggregator import Aggregator
from panelboard.broker.health_view import HealthView, pool_load
from panelboard.broker.plan import Plan, plan
from panelboard.transport import bus, logs, meters, tracing
from panelboard.transport.consumer import Consumer
from panelboard.transport.lanes import publish_to_batch_lane
from panelboard.transport.streams import BROKER_CONSUMER, ensure_health_kv
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_job
from panelboard.schemas.config import Config
from panelboard.schemas.errors import BadKey, InvalidJob, JobError, PromptTooLarge
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
    if job.embeddings is not None and job.request.messages:
        return InvalidJob(message="the job has both a chat request and an embeddings request", hint="send one job per request: `request` or `embeddings`")
    if not job.request.messages and job.embeddings is None:
        return InvalidJob(message="the request has no messages", hint="send at least one message (or, for embeddings, `embeddings: {\"input\": ...}`)")
    return None


class Broker:
    def __init__(self, js: JetStreamContext, cfg: Config, governor: Governor | None = None, control_url: str | None = None):
        self.js = js
        self.control_url = control_url  # where the control plane (broker/control.py) connects; None: not served
        self.cfg = cfg
        self.table = routing.routes(cfg)
        self.router = difficulty.load(cfg.router.model, cfg.router.kind) if cfg.router is not None else None
        self.governor = governor or Governor(cfg, None)
        self.stopping = asyncio.Event()
        # Admission is short and I/O bound: many jobs at once, each its own task.
        self.consumer: Consumer[Msg] = Consumer(js._nc, wire.JOBS_STREAM, BROKER_CONSUMER, self._safe, cap=MAX_INFLIGHT,
                                                min_request=MAX_INFLIGHT // 8, stopping=self.stopping)
        self.handled = 0
        self.suspect_before = 0.0  # set on reconnect: see runtime.serve
        # Layer 2: every broker's live copy of PB_HEALTH and of its pools' queue depths.
        self.health: health.Health = {}
        self.load: dict[str, int] = {}
        self.rng = random.Random()
        self.waits = waiting.WaitLog()  # keys over a limit with on_limit=wait: logged and shown in `status`
        meters.watch_broker(self)

    async def handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        header_id = headers.get(wire.HDR_MSG_ID)
        seq = msg.metadata.sequence.stream
        # The subject's team is who published it: a tenant user may publish only under its own.
        team = wire.jobs_subject_team(msg.subject)
        early: InvalidJob | PromptTooLarge | None = admission.screen(msg.data, self.cfg.governance)
        if early is None:
            try:
                job = admission.with_passthrough(decode_job(msg.data), msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                early = InvalidJob(
                    message=f"the job could not be decoded: {e}",
                    hint="send a JSON Job as documented in the README's wire contract (id, client, request.messages)",
                )
        if early is not None:
            # The raw payload is kept: its dead letter cuts keys to their prefix and truncates it.
            await bus.reject_job(self.js, team, seq, early, reason=early.kind if isinstance(early, PromptTooLarge) else "invalid",
                                 raw=msg.data)
            log.info("job.rejected", seq=seq, team=team, error=early.kind, detail=early.message[:200])
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
        now = time.time()
        decision: Route | JobError
        if err is not None:
            decision = err
        else:  # intent (classified when none), tier, strategy, health order, output bound: broker/plan.py
            p = self.plan(job, now)
            job = p.job
            decision = p.decision
        mirror = self.shadow_route(decision) if isinstance(decision, Route) else None
        if isinstance(decision, Route) and self.governor.on is not False:
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
            d = Dispatch(job=job, route=decision, hop=0, admitted_at=time.time(), lane="flex" if lane.lane == "flex" else None)
            await (publish_to_batch_lane(self.js, d) if lane.lane == "batch" else bus.publish_dispatch(self.js, d))
            log.debug("job.dispatched", job_id=job.id, tier=decision.tier, provider=decision.chain[0].provider, lane=lane.lane)
        else:
            reason = decision.kind
            await bus.fail_job(self.js, team, job.id, decision, reason=reason, job=job)
            log.info("job.rejected", job_id=job.id, team=team, error=reason, detail=decision.message)
        await msg.ack()

    async def drain(self) -> None:
        """Stop taking jobs, finish the ones being admitted, and return (see Consumer.drain)."""
        await self.consumer.drain()

    async def reject(self, msg: Msg, team: str, seq: int, error: JobError, job: Job) -> None:
        reason = error.kind
        await bus.reject_job(self.js, team, seq, error, reason="invalid" if reason == "invalid_job" else reason, job=job)
        log.info("job.rejected", seq=seq, team=team, job_id=job.id[:128], error=reason, detail=error.message[:200])
        await msg.ack()

    def plan(self, job: Job, now: float) -> Plan:
        """broker/plan.py with this broker's state; `route explain` runs the same function."""
        return plan(job, self.cfg, self.table, self.health, self.load, self.rng, self.cfg.health.probe_share, now,
                    bound=self.governor.on is not False, router=self.router)  # under governance the worst case reserved is the worst case run

    def shadow_route(self, live: Route, sampled: bool = False) -> Route | None:
        """The candidate route to mirror this job to, for the tier's sampled share of jobs
        (`sampled`: the draw was made before)."""
        tier = self.cfg.tiers.get(live.tier)  # a pinned model outside every tier has none
        rule = tier.shadow if tier is not None else None
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
        self.handled += 1
        try:
            with meters.admission(msg), tracing.admission(msg):
                await self.handle(msg)
        except Exception:  # NATS trouble mid-publish: leave the job unacked, it is redelivered
            log.exception("job.handle_failed", subject=msg.subject)

    async def _follow_health(self) -> None:
        """Aggregate PB_COSTS into PB_HEALTH (every broker does it from the same records, so
        they agree) and keep local copies of the health states and pool loads."""

        view = await HealthView.start(self.js, self.cfg)
        self.health = view.states
        aggregator = asyncio.create_task(Aggregator(self.js, self.cfg, await ensure_health_kv(self.js, self.cfg)).run())
        try:
            while not self.stopping.is_set():
                try:
                    self.load = await pool_load(self.js)
                except Exception as e:  # a leader election: keep the last figures
                    log.debug("broker.load_failed", error=type(e).__name__)
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
                    log.debug("broker.waits_publish_failed", error=type(e).__name__)

    async def run(self) -> None:
        await self.governor.start(self.js)  # keys, limits, budgets, settlement: when governance is on
        follower = asyncio.create_task(self._follow_health()) if self.cfg.health.enabled else None
        waits = asyncio.create_task(self._publish_waits())
        control = None
        if self.control_url is not None:  # low rate, its own connection: started before jobs flow, stopped after
            from panelboard.broker.control import control_plane  # faststream: only a broker process loads it

            control = control_plane(self.js, self.control_url)
            await control.start()
        log.info("broker.started", tiers=list(self.cfg.tiers), intents=len(self.cfg.intents))
        try:
            await self.consumer.run()
        finally:
            if control is not None:
                await control.stop()
        if follower is not None:
            follower.cancel()
        waits.cancel()
        await self.governor.stop()
        log.info("broker.stopped", handled=self.handled)
