"""Layer 2 health tracking: the window, assess() and order_chain() from tables; then the
aggregator against a real nats-server, fed synthetic cost records, read back from PB_HEALTH."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import msgspec
import pytest

from panelboard.broker.health import HealthState, Thresholds, Window, WindowStats, assess, check, kv_key, order_chain, thresholds
from panelboard.config import parse
from panelboard.schemas.config import HealthSettings, HealthThresholds
from panelboard.schemas.job import CostRecord, Hop, Route

T = Thresholds(p95_ms=2000, error_rate=0.2, min_calls=10, min_probe_calls=3, cooldown_s=30)


# -- the window -------------------------------------------------------------------------
def test_p95_from_the_histogram_is_within_five_percent():
    w = Window("p", "m", window_s=60, bucket_s=10)
    for i in range(1, 1001):  # 1..1000 ms
        w.add(100.0, float(i), error=False)
    s = w.stats(105.0)
    assert s.calls == 1000 and 950 <= s.p95_ms <= 950 * 1.05
    assert 500 <= s.p50_ms <= 500 * 1.05


def test_buckets_slide_out_of_the_window_and_errors_count():
    w = Window("p", "m", window_s=30, bucket_s=10)
    w.add(100.0, 5000, error=True)  # bucket 10
    w.add(115.0, 100, error=False)  # bucket 11
    w.add(125.0, 100, error=False)  # bucket 12
    assert w.stats(129.0).calls == 3 and w.stats(129.0).errors == 1
    s = w.stats(131.0)  # bucket 10 is out
    assert (s.calls, s.errors, s.p95_ms) == (2, 0, pytest.approx(100, rel=0.05))
    w.add(50.0, 1, error=False, now=131.0)  # a record older than the window is dropped
    assert w.stats(131.0).calls == 2


def test_records_count_by_outcome():
    w = Window("novita", "novita/llama")
    base = dict(job_id="j", team="t", key_prefix=None, feature=None, intent=None, tier="x", provider="novita", model="novita/llama",
                quantization=None, hop=0, attempt=0, prompt_tokens=10, completion_tokens=5, cost_usd=0.0, queue_ms=0.0, ts=100.0)
    for outcome, lat in (("ok", 100), ("Timeout", 3000), ("ClientError", 50), ("lost", 0), ("RateLimited", 20)):
        w.add_record(CostRecord(outcome=outcome, latency_ms=lat, **base), now=100.0)
    s = w.stats(100.0)
    assert (s.calls, s.errors, s.tokens) == (4, 2, 60)  # `lost` measured nothing; a 400 is the request's fault


# -- assess: hysteresis -----------------------------------------------------------------
def stats(calls: int, p95: float | None = 500, errors: int = 0) -> WindowStats:
    return WindowStats("novita", "novita/llama", calls, errors, 0, p95, p95)


def st(state: str, since: float = 0.0, recovering: float | None = None) -> HealthState:
    return HealthState(provider="novita", model="novita/llama", state=state, since=since, recovering_since=recovering)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "window, previous, now, want_state, want_since, want_recovering",
    [
        # healthy stays healthy within the thresholds
        (stats(50, p95=1500), st("healthy"), 100, "healthy", 0.0, None),
        # too few calls: no verdict, even at a terrible P95
        (stats(9, p95=9000), st("healthy"), 100, "healthy", 0.0, None),
        # P95 past the threshold over enough calls: degraded from now
        (stats(10, p95=2500), st("healthy"), 100, "degraded", 100, None),
        # error rate past the threshold: degraded
        (stats(20, p95=100, errors=5), st("healthy"), 100, "degraded", 100, None),
        # a first assessment starts healthy
        (stats(3, p95=100), None, 100, "healthy", 100, None),
        # degraded and still bad: stays, no recovery clock
        (stats(20, p95=3000), st("degraded", 50, recovering=90), 100, "degraded", 50, None),
        # degraded, now good on a few probe calls: the recovery clock starts
        (stats(3, p95=300), st("degraded", 50), 100, "degraded", 50, 100),
        # ...keeps running while it stays good
        (stats(5, p95=300), st("degraded", 50, recovering=100), 120, "degraded", 50, 100),
        # ...and restores it after the cooldown
        (stats(5, p95=300), st("degraded", 50, recovering=100), 130, "healthy", 130, None),
        # degraded with no probe traffic: unchanged, clock kept
        (stats(1, p95=300), st("degraded", 50, recovering=100), 200, "degraded", 50, 100),
        (stats(0, p95=None), st("degraded", 50), 200, "degraded", 50, None),
    ],
)
def test_assess(window, previous, now, want_state, want_since, want_recovering):
    got = assess(window, T, previous, now)
    assert (got.state, got.since, got.recovering_since) == (want_state, want_since, want_recovering)
    assert got.updated == now and got.calls == window.calls
    if got.state == "degraded" and (previous is None or not previous.degraded):
        assert "over" in got.reason


def test_thresholds_take_provider_then_model_overrides():
    h = HealthSettings(p95_ms=5000, error_rate=0.25,
                       overrides={"novita": HealthThresholds(p95_ms=2500), "novita/llama": HealthThresholds(error_rate=0.1)})
    assert (thresholds(h, "novita", "novita/llama").p95_ms, thresholds(h, "novita", "novita/llama").error_rate) == (2500, 0.1)
    assert (thresholds(h, "together", "together/x").p95_ms, thresholds(h, "together", "together/x").error_rate) == (5000, 0.25)


# -- order_chain ------------------------------------------------------------------------
A, B, C = (Hop(model=f"{p}/llama", provider=p) for p in ("novita", "deepinfra", "fireworks"))
ROUTE = Route(tier="cheap-fast", chain=(A, B, C))


def health(*degraded: Hop) -> dict:
    return {(h.provider, h.model): HealthState(provider=h.provider, model=h.model, state="degraded") for h in degraded} | {
        (h.provider, h.model): HealthState(provider=h.provider, model=h.model) for h in (A, B, C) if h not in degraded}


@pytest.mark.parametrize(
    "degraded, want",
    [
        ((), (A, B, C)),
        ((A,), (B, C, A)),  # the primary goes last, still a last resort
        ((B,), (A, C, B)),
        ((A, B), (C, A, B)),
        ((A, B, C), (A, B, C)),  # nothing better: as configured
    ],
)
def test_order_chain_moves_degraded_hops_behind_healthy_ones(degraded, want):
    assert order_chain(ROUTE, health(*degraded), random.Random(0), probe_share=0.0).chain == want


def test_order_chain_sends_a_probe_share_to_the_degraded_hop():
    rng = random.Random(3)
    firsts = Counter(order_chain(ROUTE, health(A), rng, probe_share=0.05).chain[0] for _ in range(10_000))
    assert 0.04 < firsts[A] / 10_000 < 0.06 and firsts[C] == 0
    probe = next(r for r in (order_chain(ROUTE, health(A), random.Random(s), 0.5) for s in range(20)) if r.chain[0] == A)
    assert probe.chain == (A, B, C)  # a probe keeps the healthy hops behind it


def test_unknown_hops_count_as_healthy():
    assert order_chain(ROUTE, {}, random.Random(0), 1.0) == ROUTE


def test_kv_keys_are_valid_and_distinct():
    import re

    keys = {kv_key("novita", "novita/llama-3.3-70b"), kv_key("x", "a b:c@d"), kv_key("x", "a_b:c@d"), kv_key("p", ".hidden.")}
    assert len(keys) == 4 and all(re.fullmatch(r"[-/_=.A-Za-z0-9]+", k) and not k.startswith(".") and not k.endswith(".") for k in keys)
    assert kv_key("novita", "novita/llama-3.3-70b") == "novita.novita/llama-3.3-70b"


# -- the aggregator against a real server ---------------------------------------------------
CONFIG = """
providers:
  novita: {api: openai, base_url: http://127.0.0.1:1/novita}
  deepinfra: {api: openai, base_url: http://127.0.0.1:1/deepinfra}
models:
  novita/llama: {provider: novita, model: l, input_per_m: 0.1, output_per_m: 0.1}
  deepinfra/llama: {provider: deepinfra, model: l, input_per_m: 0.2, output_per_m: 0.2}
tiers:
  cheap: {fallbacks: [{model: novita/llama}, {model: deepinfra/llama}]}
intents: {x: cheap}
health: {p95_ms: 2000, min_calls: 10, min_probe_calls: 3, window_s: 10, bucket_s: 1, cooldown_s: 5, publish_s: 0.05,
         overrides: {deepinfra: {p95_ms: 4000}}}
"""


def record(provider: str, latency_ms: float, ts: float, i: int, outcome: str = "ok") -> CostRecord:
    return CostRecord(job_id=f"j{i}", team="t", key_prefix=None, feature=None, intent="x", tier="cheap", provider=provider,
                      model=f"{provider}/llama", quantization=None, hop=0, attempt=0, prompt_tokens=10, completion_tokens=10,
                      cost_usd=0.0, latency_ms=latency_ms, queue_ms=0.0, outcome=outcome, ts=ts)


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def server(tmp_path):
    from panelboard.natsserver import NatsServer

    srv = NatsServer(tmp_path / "nats").start()
    yield srv
    srv.stop()


async def _publish(js, records) -> None:
    from panelboard.schemas import wire
    from panelboard.schemas.codec import encode

    for r in records:
        await js.publish(wire.cost(r.team), encode(r))


async def _until(kv, key: str, pred, timeout: float = 10.0) -> HealthState:
    """Wait for PB_HEALTH[key] to satisfy pred, on the bucket's own updates."""
    watcher = await kv.watch(key)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"PB_HEALTH[{key}] never satisfied the condition")
            try:
                e = await watcher.updates(timeout=left)
            except Exception:
                continue
            if e is not None and e.value:
                s = msgspec.json.decode(e.value, type=HealthState)
                if pred(s):
                    return s
    finally:
        await watcher.stop()


async def test_aggregator_degrades_recovers_and_survives_a_restart(server):
    from nats.aio.client import Client as NATS

    from panelboard.broker.health_aggregator import Aggregator
    from panelboard.broker.health_status import render_status, status
    from panelboard.broker.health_view import HealthView, read_states
    from panelboard.transport import streams

    cfg = parse(CONFIG)
    assert check(cfg) == []
    nc = NATS()
    await nc.connect(server.url)
    js = nc.jetstream()
    await streams.ensure_streams(js, cfg)
    await streams.ensure_pool_consumers(js, cfg, "novita")
    kv = await streams.ensure_health_kv(js, cfg)
    assert (await streams.ensure_health_kv(js, cfg))._name == kv._name == "PB_HEALTH"  # idempotent
    clock = Clock()
    agg = Aggregator(js, cfg, kv, clock=clock)
    task = asyncio.create_task(agg.run())
    view = await HealthView.start(js, cfg)
    try:
        # Given novita answers in 3 s (threshold 2 s) and deepinfra in 3 s (its override: 4 s)
        now = clock.t
        await _publish(js, [record("novita", 3000, now, i) for i in range(12)] + [record("deepinfra", 3000, now, 100 + i) for i in range(12)])
        # Then novita is degraded, deepinfra is not
        s = await _until(kv, kv_key("novita", "novita/llama"), lambda s: s.degraded)
        assert "p95" in s.reason and s.calls == 12
        d = await _until(kv, kv_key("deepinfra", "deepinfra/llama"), lambda s: s.calls == 12)
        assert d.state == "healthy"
        # And a broker's view routes around it
        await view.wait_for(lambda states: states.get(("novita", "novita/llama"), d).degraded, timeout=5)
        route = Route(tier="cheap", chain=(Hop("novita/llama", "novita"), Hop("deepinfra/llama", "deepinfra")))
        assert order_chain(route, view.states, random.Random(0), 0.0).chain[0].provider == "deepinfra"
        # And `panelboard status` shows it, with queue depths
        rep = await status(js, cfg)
        text = render_status(rep)
        assert "DEGRADED" in text and "pool-novita" in text and "p95" in text

        # When the slow calls leave the window and probes come back fast
        clock.t = now + 11
        await _publish(js, [record("novita", 200, clock.t, 200 + i) for i in range(4)])
        r = await _until(kv, kv_key("novita", "novita/llama"), lambda s: s.recovering_since is not None)
        assert r.degraded  # not before the cooldown
        clock.t += 6
        await _publish(js, [record("novita", 200, clock.t, 300 + i) for i in range(4)])
        h = await _until(kv, kv_key("novita", "novita/llama"), lambda s: not s.degraded)
        assert h.since == pytest.approx(clock.t) and "recovered" in h.reason

        # When novita degrades again and the aggregator restarts
        clock.t += 1
        await _publish(js, [record("novita", 100, clock.t, 400 + i, outcome="ServerError") for i in range(12)])
        bad = await _until(kv, kv_key("novita", "novita/llama"), lambda s: s.degraded)
        agg.stopping.set()
        await asyncio.wait_for(task, 5)
        # Then the state is in PB_HEALTH, and a new aggregator starts from it (hysteresis kept)
        kept = (await read_states(kv))[("novita", "novita/llama")]
        assert kept.degraded and kept.since == bad.since
        agg2 = Aggregator(js, cfg, kv, clock=Clock())  # real time: it replays the last window_s of PB_COSTS
        task2 = asyncio.create_task(agg2.run())
        try:
            await asyncio.wait_for(agg2.caught_up.wait(), 5)
            assert agg2.states[("novita", "novita/llama")].since == bad.since
            assert agg2.records >= 12  # the window was rebuilt from the stream
        finally:
            agg2.stopping.set()
            await asyncio.wait_for(task2, 5)
    finally:
        await view.stop()
        if not task.done():
            agg.stopping.set()
            await asyncio.wait_for(task, 5)
        await nc.close()


async def test_health_state_persists_across_a_server_restart(server):
    from nats.aio.client import Client as NATS

    from panelboard.broker.health_view import read_states
    from panelboard.transport import streams

    cfg = parse(CONFIG)
    nc = NATS()
    await nc.connect(server.url)
    kv = await streams.ensure_health_kv(nc.jetstream(), cfg)
    await kv.put(kv_key("novita", "novita/llama"), msgspec.json.encode(HealthState(provider="novita", model="novita/llama", state="degraded", since=5.0)))
    await nc.close()
    server.stop()
    server.start()
    nc = NATS()
    await nc.connect(server.url)
    try:
        kv = await streams.ensure_health_kv(nc.jetstream(), cfg)
        got = await read_states(kv)
        assert got[("novita", "novita/llama")].degraded and got[("novita", "novita/llama")].since == 5.0
    finally:
        await nc.close()


def test_status_cli_prints_health_and_queues(server):
    from tests.conftest import run_cli

    cfg_path = server.data_dir.parent / "health.yaml"
    cfg_path.write_text(CONFIG)
    r = run_cli("status", "--config", str(cfg_path), "--nats-url", server.url, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "novita/llama" in r.stdout and "queues" in r.stdout
    r = run_cli("status", "--config", str(cfg_path), "--nats-url", server.url, "--json", timeout=60)
    assert r.returncode == 0 and '"health"' in r.stdout
