"""A provider's worker pool: a durable pull consumer whose max_ack_pending is the provider's
concurrency cap, so the cap holds across every worker process of the pool.

Per delivery: call the provider through its adapter, decide (pure), then act, publishing
before acking: Succeed -> cost + result; Retry -> cost, nak with delay; Forward -> cost,
dispatch to the next hop; Fail -> cost, Failed result + dead letter.
"""

from __future__ import annotations

import asyncio
import random
import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.pricing import call_cost
from panelboard import bus, logs
from panelboard.streams import pool_consumer
from schemas import wire
from schemas.codec import decode_dispatch
from schemas.config import Config, Link, RetryPolicy
from schemas.errors import DeadlineExceeded, InvalidJob
from schemas.job import Attempt, Completed, CostRecord, Dispatch
from workers.decide import Fail, Forward, Retry, Succeed, decide, link_timeout_ms
from workers.outcome import Ok, Outcome, status_of
from workers.providers import Adapter, adapter_for

log = logs.get("worker")

HEARTBEAT_S = 5.0  # in_progress() for calls older than this, well inside ack_wait


def key_prefix(key: str | None) -> str | None:
    return key[:8] if key else None


class Pool:
    def __init__(self, js: JetStreamContext, cfg: Config, provider: str, adapter: Adapter | None = None, api_key: str | None = None):
        self.js = js
        self.cfg = cfg
        self.provider = provider
        self.settings = cfg.providers[provider]
        self.adapter = adapter or adapter_for(self.settings, api_key)
        self.cap = self.settings.max_concurrency
        self.stopping = asyncio.Event()
        self.inflight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self.rng = random.Random()
        self.calls = 0

    # -- one delivery -------------------------------------------------------------------
    def _link(self, d: Dispatch) -> tuple[Link, RetryPolicy]:
        tier = self.cfg.tiers.get(d.route.tier)
        if tier is None or d.hop >= len(tier.fallbacks):  # config changed under an in-flight job
            return Link(model=d.route.chain[d.hop].model), RetryPolicy()
        return tier.fallbacks[d.hop], tier.retry_policy

    async def handle(self, msg: Msg) -> None:
        try:
            d = decode_dispatch(msg.data)
        except Exception as e:  # only a foreign publisher can put this here: keep it, tell, move on
            err = InvalidJob(message=f"undecodable dispatch on {msg.subject}: {e}", hint="publish jobs to pb.jobs.<intent>, never to pb.dispatch.*")
            await bus.fail_job(self.js, None, None, err, reason="invalid", raw=msg.data, dead_msg_id=f"dispatch-{msg.metadata.sequence.stream}:dead")
            await msg.ack()
            return
        job = d.job
        attempt = msg.metadata.num_delivered - 1
        hop = d.route.chain[d.hop]
        model = self.cfg.models[hop.model]
        link, policy = self._link(d)
        now = time.time()
        if job.deadline is not None and job.deadline <= now:
            err = DeadlineExceeded(message=f"job {job.id} passed its deadline before {self.provider} could start it", hint="submit with a later deadline, or none")
            await bus.fail_job(self.js, job.client, job.id, err, reason="deadline", job=job, attempts=d.history)
            await msg.ack()
            return

        queue_ms = (now - (d.admitted_at or now)) * 1000
        timeout_s = link_timeout_ms(link, self.settings.timeout_ms) / 1000
        request_id = f"{job.id}:{d.hop}:{attempt}"
        outcome = await self.adapter.call(job.request, model, request_id, timeout_s)
        self.calls += 1
        status = status_of(outcome)
        this = Attempt(
            provider=self.provider, model=hop.model, hop=d.hop, attempt=attempt, status=status,
            latency_ms=round(outcome.latency_ms, 2), error=None if isinstance(outcome, Ok) else getattr(outcome, "message", "")[:300],
        )
        decision = decide(outcome, attempt=attempt, hop=d.hop, chain_len=len(d.route.chain), link=link, policy=policy, provider=self.provider, rng=self.rng)
        cost = self._cost_record(d, attempt, outcome, model, queue_ms, now)
        history = [*d.history, this]

        match decision:
            case Succeed():
                assert isinstance(outcome, Ok)
                result = Completed(
                    job_id=job.id, response=outcome.response, tier=d.route.tier, provider=self.provider, model=hop.model,
                    cost_usd=cost.cost_usd, attempts=history, latency_ms=this.latency_ms, queue_ms=round(queue_ms, 2),
                )
                await asyncio.gather(bus.publish_cost(self.js, cost), bus.publish_result(self.js, job.client, job.id, result))
                await msg.ack()
                log.debug("job.completed", job_id=job.id, provider=self.provider, hop=d.hop, attempt=attempt, cost_usd=cost.cost_usd)
            case Retry(delay_s=delay):
                await bus.publish_cost(self.js, cost)
                await msg.nak(delay=delay)
                log.info("job.retry", job_id=job.id, provider=self.provider, hop=d.hop, attempt=attempt, status=status, delay_s=round(delay, 3))
            case Forward(hop=next_hop):
                nxt = Dispatch(job=job, route=d.route, hop=next_hop, history=history, admitted_at=d.admitted_at, reserved_usd=d.reserved_usd)
                await asyncio.gather(bus.publish_cost(self.js, cost), bus.publish_dispatch(self.js, nxt))
                await msg.ack()
                log.info("job.fallback", job_id=job.id, provider=self.provider, to=d.route.chain[next_hop].provider, status=status)
            case Fail(error=error):
                await bus.publish_cost(self.js, cost)
                await bus.fail_job(self.js, job.client, job.id, error, reason=error.__struct_config__.tag, job=job, attempts=history)
                await msg.ack()
                log.info("job.failed", job_id=job.id, provider=self.provider, error=error.__struct_config__.tag, status=status)

    def _cost_record(self, d: Dispatch, attempt: int, outcome: Outcome, model, queue_ms: float, now: float) -> CostRecord:
        job = d.job
        usage = outcome.response.usage if isinstance(outcome, Ok) else None
        pt, ct = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        return CostRecord(
            job_id=job.id, team=job.team, key_prefix=key_prefix(job.key), feature=job.feature, intent=job.intent,
            tier=d.route.tier, provider=self.provider, model=d.route.chain[d.hop].model, quantization=model.quantization,
            hop=d.hop, attempt=attempt, prompt_tokens=pt, completion_tokens=ct, cost_usd=call_cost(model, pt, ct),
            latency_ms=round(outcome.latency_ms, 2), queue_ms=round(queue_ms, 2),
            outcome="ok" if usage else type(outcome).__name__, ts=now,
        )

    async def _safe(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:  # NATS trouble mid-publish: leave it unacked; it is redelivered after ack_wait
            log.exception("job.handle_failed", provider=self.provider)

    # -- the loop -------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """One task for the whole pool: long calls say in_progress, so ack_wait never expires
        under a live worker and nobody else is handed its job."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            now = time.monotonic()
            for msg, started in list(self.inflight.values()):
                if now - started >= HEARTBEAT_S:
                    try:
                        await msg.in_progress()
                    except Exception:
                        pass

    async def run(self) -> None:
        psub = await self.js.pull_subscribe_bind(pool_consumer(self.provider), wire.DISPATCH_STREAM)
        hb = asyncio.create_task(self._heartbeat())
        log.info("pool.started", provider=self.provider, cap=self.cap)
        try:
            while not self.stopping.is_set():
                free = self.cap - len(self.inflight)
                if free <= 0:
                    await asyncio.wait(list(self.inflight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await psub.fetch(min(free, 256), timeout=1.0)
                except (TimeoutError, asyncio.TimeoutError):
                    continue
                except Exception as e:
                    log.warning("pool.fetch_failed", provider=self.provider, error=type(e).__name__)
                    await asyncio.sleep(0.5)
                    continue
                started = time.monotonic()
                for m in msgs:
                    t = asyncio.create_task(self._safe(m))
                    self.inflight[t] = (m, started)
                    t.add_done_callback(self.inflight.pop)
        finally:
            await self.drain(psub, hb)

    async def drain(self, psub, hb: asyncio.Task[None], grace_s: float = 20.0) -> None:
        """On SIGTERM: stop fetching, let in-flight calls finish, nak what is left."""
        if self.inflight:
            log.info("pool.draining", provider=self.provider, inflight=len(self.inflight))
            done, pending = await asyncio.wait(list(self.inflight), timeout=grace_s)
            for t in pending:
                msg, _ = self.inflight.get(t, (None, 0))
                t.cancel()
                if msg is not None:
                    try:
                        await msg.nak()
                    except Exception:
                        pass
        hb.cancel()
        try:
            await psub.unsubscribe()
        except Exception:
            pass
        await self.adapter.aclose()
        log.info("pool.stopped", provider=self.provider, calls=self.calls)
