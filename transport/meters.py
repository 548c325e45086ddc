"""The process's Prometheus metrics: one registry per process (process metrics included), the
instruments the broker, the pools and the bus feed, and the one-line calls they make.

Every panelboard process is its own OS process (spawned, never forked), each serving its own
registry on its own port (`--metrics-port`), so no multiprocess mode is needed: Prometheus
sums across instances. Labels stay bounded: providers, models, tiers, teams and error kinds
come from the config or the code, never from job ids or free text.
"""

from __future__ import annotations

import time
import weakref
from bisect import bisect_left
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sized

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nats.aio.msg import Msg

disable_created_metrics()  # no *_created series beside every counter: half the scrape, nothing read them
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

class Tally:
    """A labelled counter for the hot path: a dict increment (~0.1 us), where a prometheus_client
    child costs ~3 us per update, which at eight updates a job is a tenth of a pool's CPU. The
    processes are single-threaded asyncio, so no lock; the registry reads it at scrape time."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()):
        self.name, self.doc, self.labelnames = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}
        _ALL.append(self)

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        f = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for k, v in list(self.values.items()):
            f.add_metric(k, v)
        return f


class Spread:
    """A labelled histogram, kept as per-bucket counts and a sum (cumulated at scrape time)."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = ()):
        self.name, self.doc, self.labelnames, self.bounds = name, doc, labels, buckets
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}
        _ALL.append(self)

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.bounds) + 1)
            self.sums[labels] = 0.0
        counts[bisect_left(self.bounds, seconds)] += 1
        self.sums[labels] += seconds

    def family(self) -> HistogramMetricFamily:
        f = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for k, counts in list(self.counts.items()):
            running, buckets = 0, []
            for le, n in zip((*(str(b) for b in self.bounds), "+Inf"), counts):
                running += n
                buckets.append((le, running))
            f.add_metric(list(k), buckets, self.sums[k])
        return f


_ALL: list[Tally | Spread] = []

JOBS = Tally("panelboard_jobs", "Jobs ended: completed, or failed/rejected by error kind.", ("outcome",))
CALLS = Tally("panelboard_provider_calls", "Provider calls by provider, model and outcome (ok, RateLimited, Timeout, ServerError, ClientError).",
              ("provider", "model", "outcome"))
RETRIES = Tally("panelboard_retries", "Calls retried on the same hop, by what triggered the retry.", ("provider", "model", "trigger"))
FALLBACKS = Tally("panelboard_fallbacks", "Jobs moved to the next hop of their chain: from which provider to which, and why.",
                  ("from_provider", "to_provider", "trigger"))
DEAD = Tally("panelboard_dead_letters", "Dead letters published on pb.dead.<reason>.", ("reason",))
LATENCY = Spread("panelboard_call_latency_seconds", "Provider call latency, as the worker measured it.", ("provider", "model"), SECONDS)
TTFT = Spread("panelboard_time_to_first_token_seconds", "From the provider call to its first streamed token (streaming jobs).",
              ("provider", "model"), SECONDS)
QUEUE_WAIT = Spread("panelboard_queue_wait_seconds", "Time a message waited in its stream before a process took it up.",
                    ("stream", "provider"), SECONDS)
ADMISSION = Spread("panelboard_admission_seconds", "Broker overhead per job: from delivery to its dispatch (or refusal) and ack.", (), SECONDS)
DISPATCH_TO_CALL = Spread("panelboard_dispatch_to_call_seconds", "Worker overhead per call: from taking up the delivery to calling the provider.",
                          ("provider",), SECONDS)
TOKENS = Tally("panelboard_call_tokens", "Tokens billed per call, as the worker saw them.", ("provider", "team", "kind"))
SPEND = Tally("panelboard_call_spend_usd", "USD at catalog price, as the worker priced each call.", ("provider", "tier", "team"))


class _Instruments(Collector):
    def collect(self) -> Iterable[Any]:
        return [m.family() for m in _ALL]


REGISTRY.register(_Instruments())


def trigger(outcome: Any) -> str:
    """What a retry or fallback reacted to, in the config's trigger words."""
    name = type(outcome).__name__
    status = getattr(outcome, "status", None)
    if name == "RateLimited":
        return "quota" if getattr(outcome, "hard", False) else "429"
    if name == "Timeout":
        return "timeout"
    if isinstance(status, int):
        return "5xx" if status >= 500 else str(status)
    return name.lower()


def called(provider: str, model: str, outcome: Any, started: float, queued_since: float | None) -> None:
    """A provider call ended; `started`: when the worker took up the delivery (time.time()),
    `queued_since`: when the dispatch was published."""
    call_start = time.time() - outcome.latency_ms / 1000
    kind = type(outcome).__name__
    CALLS.inc((provider, model, "ok" if kind == "Ok" else kind))
    LATENCY.observe((provider, model), outcome.latency_ms / 1000)
    DISPATCH_TO_CALL.observe((provider,), max(0.0, call_start - started))
    if queued_since is not None:
        QUEUE_WAIT.observe(("PB_DISPATCH", provider), max(0.0, started - queued_since))


def decided(d: Any, decision: Any, outcome: Any, cost: Any) -> None:
    """A pool's decision on one call (workers.decide's Succeed | Retry | Forward | Fail)."""
    SPEND.inc((cost.provider, cost.tier, cost.team), cost.cost_usd)
    if cost.prompt_tokens or cost.completion_tokens:
        TOKENS.inc((cost.provider, cost.team, "prompt"), cost.prompt_tokens)
        TOKENS.inc((cost.provider, cost.team, "completion"), cost.completion_tokens)
    match type(decision).__name__:
        case "Retry":
            RETRIES.inc((cost.provider, cost.model, trigger(outcome)))
        case "Forward":
            FALLBACKS.inc((cost.provider, d.route.chain[decision.hop].provider, trigger(outcome)))


def ended(result: Any) -> None:
    """A terminal Result was published: counted as `completed`, or by its error kind."""
    error = getattr(result, "error", None)
    JOBS.inc(("completed" if error is None else error.kind,))


@contextmanager
def admission(msg: "Msg") -> Iterator[None]:
    """Around the broker's handling of one PB_JOBS delivery."""
    t0 = time.time()
    QUEUE_WAIT.observe(("PB_JOBS", ""), max(0.0, t0 - msg.metadata.timestamp.timestamp()))
    try:
        yield
    finally:
        ADMISSION.observe((), time.time() - t0)


# -- state read at scrape time ---------------------------------------------------------------

class _PoolLike(Protocol):
    provider: str
    lanes: dict[str, int]
    @property
    def inflight(self) -> Sized: ...
    paused_until: float
    @property
    def concurrency_limit(self) -> int: ...


class _BrokerLike(Protocol):
    health: Any


class _State(Collector):
    """Gauges of live objects, read when scraped: nothing to keep in step on the hot path."""

    def __init__(self) -> None:
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()  # a stopped pool drops out with its object
        self.brokers: weakref.WeakSet[Any] = weakref.WeakSet()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        inflight = GaugeMetricFamily("panelboard_pool_in_flight", "Provider calls this process has in flight, per pool.", labels=["provider"])
        cap = GaugeMetricFamily("panelboard_pool_concurrency_cap", "The pool's max_concurrency (its consumers' max_ack_pending, all lanes).",
                                labels=["provider"])
        paused = GaugeMetricFamily("panelboard_pool_paused", "1 while the pool is paused by a 429 (backpressure), else 0.", labels=["provider"])
        limit = GaugeMetricFamily("panelboard_pool_concurrency_limit", "The pool's adaptive concurrency limit in this process (AIMD, up to the cap).",
                                  labels=["provider"])
        now = time.monotonic()
        for p in self.pools:
            inflight.add_metric([p.provider], len(p.inflight))
            cap.add_metric([p.provider], sum(p.lanes.values()))
            paused.add_metric([p.provider], 1.0 if p.paused_until > now else 0.0)
            limit.add_metric([p.provider], p.concurrency_limit)
        health = GaugeMetricFamily("panelboard_health_state", "1 for each provider/model's current state: healthy, degraded or recovering.",
                                   labels=["provider", "model", "state"])
        for b in self.brokers:
            for st in list(b.health.values()):
                state = "recovering" if st.state == "degraded" and st.recovering_since else st.state
                for s in ("healthy", "degraded", "recovering"):
                    health.add_metric([st.provider, st.model, s], 1.0 if s == state else 0.0)
            break  # every broker of a process sees the same PB_HEALTH
        return [inflight, cap, paused, limit, health]


STATE = _State()
REGISTRY.register(STATE)


def watch_pool(pool: _PoolLike) -> None:
    STATE.pools.add(pool)


def watch_broker(broker: _BrokerLike) -> None:
    STATE.brokers.add(broker)
