"""Prometheus metrics in the text exposition format, on a port of each long-running process.

Every process serves the queue depth of each durable consumer (read from JetStream at scrape
time, so all processes agree). The ledger also serves spend, tokens, requests and provider
latency: it sees every cost record. A few counters and one histogram do not need
prometheus_client and its process-global registry.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable

from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from panelboard.transport import logs
from panelboard.transport.connection import connect
from panelboard.schemas import wire
from panelboard.schemas.job import CostRecord

log = logs.get("metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUES = (wire.JOBS_STREAM, wire.DISPATCH_STREAM, wire.COSTS_STREAM)


def _labels(**kv: str) -> str:
    esc = {k: str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n") for k, v in kv.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


class CostMeters:
    """Counters fed by the cost records the ledger commits. A record redelivered after a crash
    is counted again by the new process, whose counters started from zero: Prometheus' rate()
    treats the restart as a reset."""

    def __init__(self) -> None:
        self.spend: dict[tuple[str, str, str, bool], float] = defaultdict(float)  # (provider, model, team, shadow)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)  # (provider, prompt|completion)
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (provider, outcome)
        self.latency: dict[str, list[int]] = {}  # provider -> cumulative bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.quarantined = 0  # records the ledger dead-lettered (pb.dead.cost_record)

    def observe(self, rec: CostRecord) -> None:
        self.spend[(rec.provider, rec.model, rec.team, rec.shadow)] += rec.cost_usd
        self.tokens[(rec.provider, "prompt")] += rec.prompt_tokens
        self.tokens[(rec.provider, "completion")] += rec.completion_tokens
        self.requests[(rec.provider, rec.outcome)] += 1
        if rec.outcome == "lost":  # no latency was measured
            return
        seconds = rec.latency_ms / 1000
        counts = self.latency.setdefault(rec.provider, [0] * (len(LATENCY_BUCKETS_S) + 1))
        for i, le in enumerate(LATENCY_BUCKETS_S):
            if seconds <= le:
                counts[i] += 1
        counts[-1] += 1
        self.latency_sum[rec.provider] += seconds

    def render(self) -> list[str]:
        out = ["# HELP panelboard_spend_usd_total USD spent at the catalog price, by provider, model, team and shadow.",
               "# TYPE panelboard_spend_usd_total counter"]
        out += [f"panelboard_spend_usd_total{_labels(provider=p, model=m, team=t, shadow=str(s).lower())} {v!r}"
                for (p, m, t, s), v in sorted(self.spend.items())]
        out += ["# HELP panelboard_tokens_total Tokens billed, by provider and kind.", "# TYPE panelboard_tokens_total counter"]
        out += [f"panelboard_tokens_total{_labels(provider=p, kind=k)} {v}" for (p, k), v in sorted(self.tokens.items())]
        out += ["# HELP panelboard_requests_total Provider calls, by provider and outcome.", "# TYPE panelboard_requests_total counter"]
        out += [f"panelboard_requests_total{_labels(provider=p, outcome=o)} {v}" for (p, o), v in sorted(self.requests.items())]
        out += ["# HELP panelboard_provider_latency_seconds Provider call latency.", "# TYPE panelboard_provider_latency_seconds histogram"]
        for p, counts in sorted(self.latency.items()):
            for le, n in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), counts):
                out.append(f"panelboard_provider_latency_seconds_bucket{_labels(provider=p, le=le)} {n}")
            out.append(f"panelboard_provider_latency_seconds_sum{_labels(provider=p)} {self.latency_sum[p]!r}")
            out.append(f"panelboard_provider_latency_seconds_count{_labels(provider=p)} {counts[-1]}")
        out += ["# HELP panelboard_ledger_quarantined_total Cost records the ledger could not write, dead-lettered on pb.dead.cost_record.",
                "# TYPE panelboard_ledger_quarantined_total counter", f"panelboard_ledger_quarantined_total {self.quarantined}"]
        return out


async def queue_depth(js: JetStreamContext) -> list[str]:
    out = ["# HELP panelboard_queue_pending Messages not yet delivered to a durable consumer.",
           "# TYPE panelboard_queue_pending gauge"]
    unacked = ["# HELP panelboard_queue_unacked Messages delivered and not yet acknowledged.",
               "# TYPE panelboard_queue_unacked gauge"]
    for stream in QUEUES:
        try:
            consumers = await js.consumers_info(stream)
        except NotFoundError:
            continue
        for c in consumers:
            if not c.config.durable_name:
                continue
            labels = _labels(stream=stream, consumer=c.config.durable_name)
            out.append(f"panelboard_queue_pending{labels} {c.num_pending}")
            unacked.append(f"panelboard_queue_unacked{labels} {c.num_ack_pending}")
    return out + unacked


async def exposition(js: JetStreamContext, meters: CostMeters | None) -> str:
    lines = await queue_depth(js)
    if meters is not None:
        lines += meters.render()
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def serving(port: int | None, js: JetStreamContext, meters: CostMeters | None = None) -> AsyncIterator[int | None]:
    """GET /metrics on `port` (0 picks a free one) while the block runs; yields the port.
    `port=None` serves nothing."""
    if port is None:
        yield None
        return

    async def handle(_req: web.Request) -> web.Response:
        return web.Response(body=(await exposition(js, meters)).encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", port)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("metrics.listening", port=bound, path="/metrics")
    try:
        yield bound
    finally:
        await runner.cleanup()


async def alongside(port: int | None, url: str, main: Awaitable[None]) -> None:
    """Run a process' main coroutine with the metrics port open beside it (broker, worker)."""
    if port is None:
        await main
        return
    nc = await connect(url, "panelboard-metrics")
    try:
        async with serving(port, nc.jetstream()):
            await main
    finally:
        await nc.drain()
