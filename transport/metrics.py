"""Prometheus metrics on a port of each long-running process (`--metrics-port`, bound to
127.0.0.1 unless `--metrics-host` says otherwise).

Each process serves its own registry (transport.meters: process metrics, the broker's and the
pools' instruments), the queue depth of every durable consumer (read from JetStream at scrape
time, so all processes agree) and, in the ledger, the cost meters: spend, tokens, requests and
provider latency from every cost record.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine

from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
from prometheus_client.registry import Collector

from panelboard.transport import logs, meters, streams
from panelboard.transport.connection import connect
from panelboard.schemas import wire
from panelboard.schemas.config import Config
from panelboard.schemas.job import CostRecord

log = logs.get("metrics")

DEFAULT_HOST = "127.0.0.1"  # metrics name providers, teams and spend: not for every interface by default
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class CostMeters:
    """Counters fed by the cost records the ledger commits, in a registry of their own. A record
    redelivered after a crash is counted again by the new process, whose counters started from
    zero: Prometheus' rate() treats the restart as a reset."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.spend = Counter("panelboard_spend_usd", "USD spent at the catalog price, by provider, model, team and shadow.",
                             ["provider", "model", "team", "shadow"], registry=r)
        self.tokens = Counter("panelboard_tokens", "Tokens billed, by provider and kind.", ["provider", "kind"], registry=r)
        self.requests = Counter("panelboard_requests", "Provider calls, by provider and outcome.", ["provider", "outcome"], registry=r)
        self.latency = Histogram("panelboard_provider_latency_seconds", "Provider call latency.", ["provider"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.by_tier: dict[str, float] = {}  # for the dashboard page
        self._quarantined = Counter("panelboard_ledger_quarantined",
                                    "Cost records the ledger could not write, dead-lettered on pb.dead.cost_record.", registry=r)

    def observe(self, rec: CostRecord) -> None:
        self.spend.labels(rec.provider, rec.model, rec.team, str(rec.shadow).lower()).inc(rec.cost_usd)
        self.tokens.labels(rec.provider, "prompt").inc(rec.prompt_tokens)
        self.tokens.labels(rec.provider, "completion").inc(rec.completion_tokens)
        self.requests.labels(rec.provider, rec.outcome).inc()
        self.by_tier[rec.tier] = self.by_tier.get(rec.tier, 0.0) + rec.cost_usd
        if rec.outcome != "lost":  # no latency was measured
            self.latency.labels(rec.provider).observe(rec.latency_ms / 1000)

    def quarantine(self) -> None:
        self._quarantined.inc()

    @property
    def quarantined(self) -> int:
        return int(self._quarantined._value.get())


class _Queues(Collector):
    """Queue depths read at scrape time (filled in by `read` just before)."""

    def __init__(self) -> None:
        self.pending = GaugeMetricFamily("panelboard_queue_pending", "Messages not yet delivered to a durable consumer.", labels=["stream", "consumer"])
        self.unacked = GaugeMetricFamily("panelboard_queue_unacked", "Messages delivered and not yet acknowledged.", labels=["stream", "consumer"])

    async def read(self, js: JetStreamContext) -> "_Queues":
        # A pool lane is one row, its team consumers summed (workers/fair.py).
        for (provider, lane), d in (await streams.pool_depths(js)).items():
            name = streams.pool_consumer(provider, lane)
            self.pending.add_metric([wire.DISPATCH_STREAM, name], d.queued)
            self.unacked.add_metric([wire.DISPATCH_STREAM, name], d.running)
        for stream in (wire.JOBS_STREAM, wire.COSTS_STREAM):
            try:
                consumers = await js.consumers_info(stream)
            except NotFoundError:
                continue
            for c in consumers:
                if c.config.durable_name:
                    self.pending.add_metric([stream, c.config.durable_name], c.num_pending or 0)
                    self.unacked.add_metric([stream, c.config.durable_name], c.num_ack_pending or 0)
        return self

    def collect(self):
        return [self.pending, self.unacked]


async def exposition(js: JetStreamContext, cost: CostMeters | None) -> bytes:
    queues = CollectorRegistry()
    queues.register(await _Queues().read(js))
    return generate_latest(meters.REGISTRY) + generate_latest(queues) + (generate_latest(cost.registry) if cost else b"")


# The page at / belongs to the operator app (panelboard/dashboard.py), which registers it here
# when it starts a process, so this layer serves it without importing upward.
Page = Callable[[JetStreamContext, Config, "dict[str, float] | None"], Awaitable[str]]
dashboard_page: Page | None = None


@asynccontextmanager
async def serving(port: int | None, js: JetStreamContext, cost: CostMeters | None = None,
                  host: str = DEFAULT_HOST, cfg: Config | None = None) -> AsyncIterator[int | None]:
    """GET /metrics on host:port (port 0 picks a free one) while the block runs, and with a
    config the dashboard page at /; yields the port. `port=None` serves nothing."""
    if port is None:
        yield None
        return

    async def handle(_req: web.Request) -> web.Response:
        return web.Response(body=await exposition(js, cost), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    page = dashboard_page

    async def dashboard(_req: web.Request) -> web.Response:
        assert cfg is not None and page is not None
        return web.Response(text=await page(js, cfg, cost.by_tier if cost else None), content_type="text/html")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    if cfg is not None and page is not None:
        app.router.add_get("/", dashboard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("metrics.listening", host=host, port=bound, path="/metrics")
    try:
        yield bound
    finally:
        await runner.cleanup()


async def alongside(port: int | None, url: str, main: Awaitable[None], host: str = DEFAULT_HOST, cfg: Config | None = None,
                    follower: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    """Serve this process's metrics while `main` runs. `follower`: a task of the caller's kept
    running beside it (the app passes the team budget gauges; transport knows no SQL tables)."""
    nc = await connect(url, "panelboard-metrics")
    extra: asyncio.Task[None] | None = asyncio.create_task(follower()) if follower is not None else None
    try:
        async with serving(port, nc.jetstream(), host=host, cfg=cfg):
            await main
    finally:
        if extra is not None:
            extra.cancel()
        await nc.drain()
