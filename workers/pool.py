"""A provider's worker pool: a durable pull consumer whose max_ack_pending is the provider's
concurrency cap, so the cap holds across every worker process of the pool.

Per delivery: call the provider through its adapter, decide (pure), then act, publishing
before acking:
    Succeed -> cost record + Completed result, ack
    Retry   -> cost record + attempt record, nak with delay (the slot is freed meanwhile)
    Forward -> cost record + attempt record + dispatch to the next hop, ack
    Fail    -> cost record + attempt record + dead letter + Failed result, ack
A redelivery first asks what the last delivery got done (see `recover`), so a crash never
calls the provider twice for a finished step, and a call lost mid-flight is still recorded.
"""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from panelboard.schemas.pricing import call_cost
from panelboard.schemas.triggers import link_timeout_ms
from panelboard.transport import bus, logs, meters, tracing
from panelboard.transport.fair_consumer import FairConsumer
from panelboard.transport.streams import ack_wait_s, lane_caps, team_consumer
from panelboard.schemas import shadow, wire
from panelboard.schemas.chat import ChatResponse, Usage
from panelboard.schemas.codec import decode_dispatch
from panelboard.schemas.config import Config, Link, Model, RetryPolicy
from panelboard.schemas.errors import DeadlineExceeded, InvalidJob, ResponseTooLarge
from panelboard.schemas.embeddings import EmbeddingsResponse
from panelboard.schemas.job import Attempt, Completed, CostRecord, Dispatch, Embedded, Failed, request_id
from panelboard.workers.decide import Fail, Forward, Numbering, Retry, Succeed, call_timeout_s, decide, number_attempt
from panelboard.workers.fair import FairShare
from panelboard.workers.flex import Step, first_attempt, flex_of, moved_to_standard, step_of, to_standard
from panelboard.workers.outcome import Inexpressible, Ok, Outcome, RateLimited, StreamBroken, Timeout, outcome_name, status_of
from panelboard.workers.pacer import Pacer
from panelboard.workers.pacing import lane_caps as limit_caps
from panelboard.workers.pressure import pause_s
from panelboard.workers.providers import Adapter, adapter_for
from panelboard.workers.stream import stream_call
from panelboard.workers.usage import checked_usage

log = logs.get("worker")


def key_prefix(key: str | None) -> str | None:
    return key[:8] if key else None


def cost_record(d: Dispatch, provider: str, attempt: int, outcome: Outcome | None, model: Model, queue_ms: float, now: float,
                reported: Usage | None = None) -> CostRecord:
    """One record per provider call; `outcome=None` is a call lost with its worker. Pure."""
    job = d.job
    usage = outcome.response.usage if isinstance(outcome, Ok) else (outcome.usage if isinstance(outcome, StreamBroken) else None)
    pt, ct = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    cached, written, reasoning = (usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens) if usage else (0, 0, 0)
    ttft = outcome.ttft_ms if isinstance(outcome, (Ok, StreamBroken)) else None
    return CostRecord(
        job_id=job.id, team=job.team, key_prefix=key_prefix(job.key), feature=job.feature, intent=job.intent,
        tier=d.route.tier, provider=provider, model=d.route.chain[d.hop].model, quantization=model.quantization,
        hop=d.hop, attempt=attempt, run=job.run, prompt_tokens=pt, completion_tokens=ct, cost_usd=call_cost(model, pt, ct, cached, written),
        cached_tokens=cached, cache_write_tokens=written, reasoning_tokens=reasoning,
        latency_ms=round(outcome.latency_ms, 2) if outcome else 0.0, queue_ms=round(queue_ms, 2),
        outcome=outcome_name(outcome), ts=now, shadow=d.shadow, reported_usage=reported,
        ttft_ms=ttft, usage_unknown=isinstance(outcome, StreamBroken) and usage is None,
    )


def billed_answer(result: Completed | Embedded, d: Dispatch, provider: str, model: Model, now: float) -> CostRecord | None:
    """The cost record of the call that answered `result`, rebuilt from the result: the same
    record the answering worker published beside it (its `ts` aside), for a redelivery that
    finds the result stored but cannot know whether the record was too. None when another
    hop answered (that hop's own worker bills its call). Pure."""
    last = result.attempts[-1] if result.attempts else None
    if last is None or last.hop != d.hop or last.provider != provider or last.decision != "succeed":
        return None
    ttft = result.ttft_ms if isinstance(result, Completed) else None
    reported = result.reported_usage if isinstance(result, Completed) else None
    rec = cost_record(d, provider, last.attempt, Ok(response=result.response, latency_ms=last.latency_ms, ttft_ms=ttft), model,
                      result.queue_ms, now, reported)
    return msgspec.structs.replace(rec, cost_usd=result.cost_usd, lane=result.lane if isinstance(result, Completed) else None)


class Lease:
    """A delivery we hold, from the moment it reaches us (started or still queued). The server
    hands it to someone else once ack_wait passes without word from us, so we ack only while
    the lease is provably ours."""

    __slots__ = ("msg", "renewed", "twins")

    def __init__(self, msg: Msg):
        self.msg = msg
        self.renewed = time.monotonic()
        # Redeliveries of this same step that reached us while we still hold it (a restarted
        # server forgets deliveries): answered together with ours, never run twice.
        self.twins: list[Msg] = []


class Pool:
    def __init__(self, js: JetStreamContext, cfg: Config, provider: str, adapter: Adapter | None = None, api_key: str | None = None):
        self.js = js
        self.cfg = cfg
        self.provider = provider
        self.settings = cfg.providers[provider]
        self.adapter = adapter or adapter_for(self.settings, api_key)
        self.lanes = lane_caps(cfg, provider)
        self.ack_wait = ack_wait_s(cfg, provider)
        self.heartbeat_s = min(5.0, self.ack_wait / 4)
        self.served = False
        self.stopping = asyncio.Event()
        self.active: dict[Step, Lease] = {}  # workers/flex.py step_of -> who holds it
        self.paused_until = 0.0
        self.streak_429 = 0
        self.rng = random.Random()
        self.calls = 0
        self.suspect_before = 0.0  # set on reconnect: see runtime.serve
        self.consumers = [self._lane(lane, cap) for lane, cap in self.lanes.items()]
        self.fair = FairShare(js, cfg, provider, dict(zip(self.lanes, self.consumers)), self.stopping)
        self.base_caps = [c.cap for c in self.consumers]
        self.pacer = Pacer(js, cfg, provider, api_key, on_limit=self._set_limit)
        meters.watch_pool(self)

    # -- one delivery -------------------------------------------------------------------
    def _link(self, d: Dispatch) -> tuple[Link, RetryPolicy]:
        """This hop's triggers and the tier's retry policy. Found by model, not position: a
        tier's min_precision may have dropped links from the chain."""
        model = d.route.chain[d.hop].model
        tier = self.cfg.tiers.get(d.route.tier)
        link = next((lk for lk in tier.fallbacks if lk.model == model), None) if tier else None
        if tier is None or link is None:  # config changed under an in-flight job
            return Link(model=model), RetryPolicy()
        return link, tier.retry_policy

    async def _ack(self, lease: Lease) -> None:
        # A lease that lapsed (we were cut off from NATS longer than ack_wait) may now belong
        # to another worker: acking it would remove that worker's delivery, so we leave it to
        # the redelivery. A plain ack that gets lost is safe too: `recover` finishes it.
        if time.monotonic() - lease.renewed >= self.ack_wait:
            log.warning("lease.lost", provider=self.provider, subject=lease.msg.subject)
            return
        for m in (lease.msg, *lease.twins):
            await m.ack()

    async def handle(self, lease: Lease) -> None:
        msg = lease.msg
        try:
            d = decode_dispatch(msg.data)
        except Exception as e:  # only a foreign publisher can put this here: keep it, tell, move on
            err = InvalidJob(message=f"undecodable dispatch on {msg.subject}: {e}", hint="publish jobs to pb.jobs.<team>.<intent>, never to pb.dispatch.*")
            await bus.fail_job(self.js, None, None, err, reason="invalid", raw=msg.data, dead_msg_id=f"dispatch-{msg.metadata.sequence.stream}:dead")
            await self._ack(lease)
            return
        step = step_of(d)
        holder = self.active.get(step)
        if holder is not None:
            holder.twins.append(msg)
            return
        self.active[step] = lease
        try:
            await self._handle(lease, d)
        finally:
            del self.active[step]

    async def _handle(self, lease: Lease, d: Dispatch) -> None:
        msg = lease.msg
        job = d.job
        now = time.time()
        delivered = msg.metadata.num_delivered
        replayed = msg.metadata.timestamp.timestamp() < self.suspect_before
        # A first delivery is attempt 0 at no cost; only a redelivery, or one a restarted server
        # may be repeating, reads what was recorded (see `recover`).
        numbering, earlier = Numbering(attempt=first_attempt(d)), list[Attempt]()
        if delivered > 1 or replayed:
            found = await self.recover(d, delivered, lease, now)
            if found is None:
                return
            numbering, earlier = found
        attempt = numbering.attempt
        hop = d.route.chain[d.hop]
        model = self.cfg.models[hop.model]
        paced = None
        if model.model in self.pacer.windows:  # the provider told us of its window: wait for this call's slot
            paced = await self.pacer.pace(model.model, job)
            now = time.time()
        link, policy = self._link(d)
        flex = flex_of(d, self.settings)  # the flex tier: its own (long) timeout, its discount
        link_ms = flex.timeout_ms if flex else link_timeout_ms(link, self.settings.timeout_ms)
        timeout_s = call_timeout_s(link_ms, job.deadline, now)
        if timeout_s is None:
            err = DeadlineExceeded(message=f"job {job.id} passed its deadline before {self.provider} could start it", hint="submit with a later deadline, or none")
            await bus.fail_job(self.js, job.team, job.id, err, reason="deadline", job=job, attempts=[*d.history, *earlier])
            await self._ack(lease)
            return

        queue_ms = (now - (d.admitted_at or now)) * 1000
        rid = request_id(job.id, job.run, d.hop, attempt, d.shadow)
        request = msgspec.structs.replace(job.request, service_tier="flex") if flex else job.request
        if job.embeddings is not None:
            outcome = await self.adapter.embed(job.embeddings, model, rid, timeout_s)
        elif request.stream and not d.shadow:  # a mirror never streams to the client
            outcome = await stream_call(self.adapter, self.js._nc, msgspec.structs.replace(job, request=request) if flex else job, model, rid, timeout_s)
        else:
            outcome = await self.adapter.call(request, model, rid, timeout_s)
        self.calls += 1
        meters.called(self.provider, hop.model, outcome, now, msg.metadata.timestamp.timestamp())
        tracing.called(self.provider, hop.model, outcome)
        reported = None
        if isinstance(outcome, Ok):
            usage, reported = checked_usage(outcome.response.usage, model)
            if reported is not None:
                log.warning("provider.implausible_usage", job_id=job.id, provider=self.provider, model=hop.model,
                            prompt_tokens=reported.prompt_tokens, completion_tokens=reported.completion_tokens, billed=usage.total_tokens)
                outcome = msgspec.structs.replace(outcome, response=msgspec.structs.replace(outcome.response, usage=usage))
        self._pressure(outcome)
        # A timeout the deadline set is the deadline passing, even when the client's timer fired a
        # hair before the wall clock reached it (seen under load: a retry then failed at once).
        cut_to_deadline = timeout_s < link_ms / 1000
        past_deadline = job.deadline is not None and (time.time() >= job.deadline or (cut_to_deadline and isinstance(outcome, Timeout)))
        # A timeout the deadline cut short says nothing of the provider's load.
        self.pacer.answered(model.model, paced, outcome, now, blame=not (cut_to_deadline and isinstance(outcome, Timeout)))
        decision = decide(outcome, spent=numbering.spent, hop=d.hop, chain_len=len(d.route.chain), link=link, policy=policy,
                          provider=self.provider, rng=self.rng, past_deadline=past_deadline)
        cost = cost_record(d, self.provider, attempt, outcome, model, queue_ms, now, reported)
        if flex is not None:
            cost = msgspec.structs.replace(cost, cost_usd=cost.cost_usd * flex.discount, lane="flex")
        status = status_of(outcome)
        this = Attempt(
            provider=self.provider, model=hop.model, hop=d.hop, attempt=attempt, status=status, run=job.run,
            latency_ms=round(outcome.latency_ms, 2), error=None if isinstance(outcome, Ok) else getattr(outcome, "message", "")[:300],
            decision=decision.name,
        )
        history = [*d.history, *earlier, this]
        meters.decided(d, decision, outcome, cost)

        if flex is not None and isinstance(outcome, RateLimited) and outcome.unavailable:
            # The flex tier is full: the same hop on the standard tier, not the next hop.
            this = history[-1] = msgspec.structs.replace(this, decision="standard")
            await asyncio.gather(bus.publish_cost(self.js, cost), bus.publish_attempt(self.js, job.team, job.id, this))
            await bus.publish_dispatch(self.js, to_standard(d, history))
            await self._ack(lease)
            log.info("job.flex_unavailable", job_id=job.id, provider=self.provider, hop=d.hop, attempt=attempt)
            return

        if d.shadow:
            if isinstance(decision, Succeed) and isinstance(outcome, Ok):  # kept beside the live answer (`report quality`)
                if isinstance(outcome.response, ChatResponse):  # embeddings have no answer to compare
                    await bus.publish_shadow_answer(self.js, shadow.answer_of(d, outcome.response, self.provider, hop.model, cost.cost_usd, now))
            await self._shadow_step(d, lease, decision, cost, this, attempt, billable=not isinstance(outcome, Inexpressible))
            return

        match decision:
            case Succeed():
                assert isinstance(outcome, Ok)
                result: Completed | Embedded
                if isinstance(outcome.response, EmbeddingsResponse):
                    result = Embedded(
                        job_id=job.id, response=outcome.response, tier=d.route.tier, provider=self.provider, model=hop.model,
                        cost_usd=cost.cost_usd, attempts=history, latency_ms=this.latency_ms, queue_ms=round(queue_ms, 2), metadata=job.metadata,
                    )
                else:
                    result = Completed(
                        job_id=job.id, response=outcome.response, tier=d.route.tier, provider=self.provider, model=hop.model,
                        cost_usd=cost.cost_usd, attempts=history, latency_ms=this.latency_ms, queue_ms=round(queue_ms, 2),
                        metadata=job.metadata, reported_usage=reported, chunks=outcome.chunks, ttft_ms=outcome.ttft_ms, lane=cost.lane,
                    )
                # Both in flight at once (one round trip, not two), acked only once both are
                # stored. A crash between them can leave the result without its cost record
                # until the redelivery: `recover` finds the result and publishes the record
                # rebuilt from it (billed_answer), under the same dedupe id.
                costed, published = await asyncio.gather(bus.publish_cost(self.js, cost), bus.publish_result(self.js, job.team, job.id, result, job.run),
                                                         return_exceptions=True)
                if isinstance(published, bus.PayloadTooLarge) and costed is None:  # billed; calling again would only bill it again
                    await self._too_large(d, lease, msgspec.structs.replace(this, decision="fail"), history[:-1], published)
                    return
                for outcome_of_publish in (costed, published):
                    if isinstance(outcome_of_publish, BaseException):
                        raise outcome_of_publish
                await self._ack(lease)
                log.debug("job.completed", job_id=job.id, provider=self.provider, hop=d.hop, attempt=attempt, cost_usd=cost.cost_usd)
            case Retry(delay_s=delay):
                await asyncio.gather(bus.publish_cost(self.js, cost), bus.publish_attempt(self.js, job.team, job.id, this))
                for m in (msg, *lease.twins):
                    await m.nak(delay=delay)
                log.info("job.retry", job_id=job.id, provider=self.provider, hop=d.hop, attempt=attempt, status=status, delay_s=round(delay, 3))
            case Forward(hop=next_hop):
                await asyncio.gather(bus.publish_cost(self.js, cost), bus.publish_attempt(self.js, job.team, job.id, this))
                await self._forward(d, next_hop, history)
                await self._ack(lease)
                log.info("job.fallback", job_id=job.id, provider=self.provider, to=d.route.chain[next_hop].provider, status=status)
            case Fail(error=error):
                # A request the family cannot express was never sent: nothing to bill.
                billed = () if isinstance(outcome, Inexpressible) else (bus.publish_cost(self.js, cost),)
                await asyncio.gather(*billed, bus.publish_attempt(self.js, job.team, job.id, this))
                await bus.fail_job(self.js, job.team, job.id, error, reason=error.kind, job=job, attempts=history)
                await self._ack(lease)
                log.info("job.failed", job_id=job.id, provider=self.provider, error=error.kind, status=status)

    async def _too_large(self, d: Dispatch, lease: Lease, this: Attempt, earlier: list[Attempt], e: "bus.PayloadTooLarge") -> None:
        """An answer too big to publish as a result ends the job, once: recorded, failed, acked."""
        job = d.job
        this = msgspec.structs.replace(this, error=f"answer too large to deliver: {e.size:,} bytes")
        err = ResponseTooLarge(
            message=f"{self.provider} answered job {job.id} with {e.size:,} bytes, over the {e.limit:,}-byte limit of a NATS message",
            hint="lower max_tokens (or ask for a shorter answer), or raise max_payload on nats-server; the call is billed in its cost record",
            size_bytes=e.size, limit_bytes=e.limit,
        )
        await bus.publish_attempt(self.js, job.team, job.id, this)
        await bus.fail_job(self.js, job.team, job.id, err, reason=err.kind, job=job, attempts=[*earlier, this])
        await self._ack(lease)
        log.warning("job.response_too_large", job_id=job.id, provider=self.provider, size_bytes=e.size, limit_bytes=e.limit)

    async def _shadow_step(self, d: Dispatch, lease: Lease, decision, cost: CostRecord, this: Attempt, attempt: int, billable: bool = True) -> None:
        """A mirrored call: recorded and billed like any other, retried and forwarded along
        the shadow tier's chain, but it never answers the client and never dead-letters.
        Its end is an attempt record, which a redelivery finds (there is no result)."""
        job = d.job
        billed = (bus.publish_cost(self.js, cost),) if billable else ()
        await asyncio.gather(*billed, bus.publish_attempt(self.js, job.team, job.id, this, shadow=True))
        match decision:
            case Retry(delay_s=delay):
                for m in (lease.msg, *lease.twins):
                    await m.nak(delay=delay)
                return
            case Forward(hop=next_hop):
                await self._forward(d, next_hop, [*d.history, this])
        await self._ack(lease)
        log.debug("job.shadow", job_id=job.id, provider=self.provider, hop=d.hop, attempt=attempt, decision=this.decision)

    async def _forward(self, d: Dispatch, next_hop: int, history: list[Attempt]) -> None:
        nxt = Dispatch(job=d.job, route=d.route, hop=next_hop, history=history, admitted_at=d.admitted_at, shadow=d.shadow)
        await bus.publish_dispatch(self.js, nxt)

    async def recover(self, d: Dispatch, delivered: int, lease: Lease, now: float) -> tuple[Numbering, list[Attempt]] | None:
        """A redelivery, or a delivery a restarted server may be repeating. None when an earlier
        delivery already finished the step; else this call's numbering and the hop's earlier
        attempts (for the result's history).

        - a result exists: the job is done, the crash hit between publish and ack; the cost
          record of its answer is published again (it may be the one that was lost);
        - this hop's last recorded attempt forwarded: redo the (deduped) forward;
        - attempts delivered with no record were lost mid-call (crash, drain, lapsed lease):
          record them, so every call the provider may have served has a cost record.
        """
        job = d.job
        if not d.shadow and (stored := await bus.stored_result(self.js, job.team, job.id, job.run)) is not None:
            if not isinstance(stored, Failed) and (rec := billed_answer(stored, d, self.provider, self.cfg.models[d.route.chain[d.hop].model], now)) is not None:
                await bus.publish_cost(self.js, rec)  # deduped when the answering delivery's record was stored
            await self._ack(lease)
            return None
        recorded = sorted((a for a in await bus.read_attempts(self.js, job.team, job.id, job.run, d.shadow) if a.hop == d.hop), key=lambda a: a.attempt)
        last = recorded[-1] if recorded else None
        if d.shadow and last is not None and last.decision in ("succeed", "fail"):
            await self._ack(lease)
            return None
        if last is not None and last.decision == "forward":
            await self._forward(d, d.hop + 1, [*d.history, *recorded])
            await self._ack(lease)
            return None
        if moved_to_standard(d, recorded):  # redo the (deduped) move, as for a forward
            await bus.publish_dispatch(self.js, to_standard(d, [*d.history, *recorded]))
            await self._ack(lease)
            return None
        numbering = number_attempt(recorded, delivered)
        hop = d.route.chain[d.hop]
        model = self.cfg.models[hop.model]
        for n in numbering.lost:
            lost = Attempt(provider=self.provider, model=hop.model, hop=d.hop, attempt=n, status=0, latency_ms=0.0, run=job.run,
                           error="the worker holding this attempt stopped before it finished", decision="lost")
            rec = cost_record(d, self.provider, n, None, model, 0.0, now)
            await asyncio.gather(bus.publish_cost(self.js, rec), bus.publish_attempt(self.js, job.team, job.id, lost, d.shadow))
            recorded.append(lost)
        return numbering, sorted(recorded, key=lambda a: a.attempt)

    def _pressure(self, outcome: Outcome) -> None:
        pause = pause_s(outcome, self.streak_429)  # deliveries held meanwhile are kept by heartbeats
        self.streak_429 = self.streak_429 + 1 if pause and not isinstance(outcome, Ok) else 0
        if pause:
            until = time.monotonic() + pause
            if until > self.paused_until:
                self.paused_until = until
                log.warning("pool.paused", provider=self.provider, seconds=round(pause, 3), reason=type(outcome).__name__)

    async def _safe(self, lease: Lease) -> None:
        try:
            with tracing.hop(lease.msg, self.provider):
                await self.handle(lease)
        except asyncio.CancelledError:
            raise
        except Exception:  # NATS trouble mid-publish: leave it unacked; it is redelivered after ack_wait
            log.exception("job.handle_failed", provider=self.provider)
        if self.calls and not self.served:  # operators (and the kill -9 test) see a replacement serving
            self.served = True
            log.info("pool.first_call", provider=self.provider)

    # -- the loop -------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """One task for the whole pool: long calls say in_progress, so ack_wait never expires
        under a live worker and nobody else is handed its job."""
        while True:
            await asyncio.sleep(self.heartbeat_s / 2)
            now = time.monotonic()
            held = [lease for c in self.consumers for lease in (*c.inflight.values(), *c.held)]
            due = [lease for lease in held if now - lease.renewed >= self.heartbeat_s]
            if not due:
                continue
            try:
                for lease in due:
                    await lease.msg.in_progress()
                await self.js._nc.flush(timeout=2)  # renewed only once the server has them all
            except Exception:
                continue
            for lease in due:
                lease.renewed = now

    async def run(self) -> None:
        hb = asyncio.create_task(self._heartbeat())
        fair = asyncio.create_task(self.fair.run())
        pacer = asyncio.create_task(self.pacer.run())
        log.info("pool.started", provider=self.provider, lanes=self.lanes, ack_wait_s=self.ack_wait)
        try:
            await asyncio.gather(*(c.run() for c in self.consumers))
        finally:
            hb.cancel()
            fair.cancel()
            pacer.cancel()
            await self.adapter.aclose()
            log.info("pool.stopped", provider=self.provider, calls=self.calls)

    async def drain(self) -> None:
        """Stop taking deliveries on every lane, hand back the ones not started, and return
        once every call in flight has finished (heartbeats keep them ours meanwhile)."""
        await asyncio.gather(*(c.drain() for c in self.consumers))

    def _lane(self, lane: str, cap: int) -> FairConsumer[Lease]:
        """One priority lane: a durable consumer per team, whose max_ack_pending (the team's
        share of the lane's slots, workers/fair.py) sums to at most the lane's cap, and its
        own count of calls in flight. Deliveries are leases from the moment they arrive, so
        heartbeats keep the held ones too."""
        return FairConsumer(self.js._nc, wire.DISPATCH_STREAM, lambda team: team_consumer(self.provider, lane, team), self._safe, cap=cap,
                            weight=self.fair_weight, wrap=Lease, unwrap=_lease_msg, team_of=_team_of, pause=self._paused_for,
                            stopping=self.stopping, fields={"provider": self.provider, "lane": lane})

    def fair_weight(self, team: str) -> float:
        t = self.cfg.teams.get(team)
        return t.weight if t else 1.0

    @property
    def inflight(self) -> list[Lease]:
        """Deliveries being run now, on every lane (the metrics' pool_in_flight)."""
        return [lease for c in self.consumers for lease in c.inflight.values()]

    def _paused_for(self) -> float:
        return self.paused_until - time.monotonic()

    def _set_limit(self, limit: int) -> None:
        """The adaptive limit, spread over the lanes; each lane's consumer reads its cap every
        turn. Its max_ack_pending (the configured cap, across processes) stays the ceiling."""
        for c, cap in zip(self.consumers, limit_caps(self.base_caps, limit, self.settings.max_concurrency)):
            c.cap = cap

    @property
    def concurrency_limit(self) -> int:
        return self.pacer.limit


def _lease_msg(lease: Lease) -> Msg:
    return lease.msg


def _team_of(msg: Msg) -> str:
    """pb.dispatch.<provider>.<lane>.<team>; "" for a dispatch published without one (older versions)."""
    parts = msg.subject.split(".", 4)
    return parts[4] if len(parts) == 5 else ""
