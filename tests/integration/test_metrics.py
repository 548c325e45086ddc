"""Every process's /metrics, read after a run that provokes each metric: retries, a 2-hop
fallback, a degraded provider, a paused pool, a dead letter, spend, tokens, overhead."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from panelboard.clients import Client
from panelboard.schemas.job import Completed, Failed
from panelboard.stack import Stack

CONFIG = Path(__file__).resolve().parents[1] / "data" / "metrics.yaml"


@pytest.fixture
def free_port_base() -> int:
    """The first of 4 consecutive free ports (broker, worker, ledger, one spare)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        try:
            for p in range(base, base + 4):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no 4 consecutive free ports")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def wait_for(port: int, check, bound_s: float = 60.0) -> dict:
    deadline = time.monotonic() + bound_s
    while True:
        try:
            s = scrape(port)
        except httpx.ConnectError:  # the process is still starting
            s = {}
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.25)


async def test_metrics_after_fallbacks_retries_a_pause_a_dead_letter_and_a_degraded_provider(tmp_path, free_port_base):
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "5"], metrics_port=free_port_base) as stack:
        stack.start(workers=1)
        ports = stack.metrics_ports
        assert set(ports) == {"broker", "worker-0", "ledger"}
        async with Client(stack.nats_url) as c:
            chained = [await c.submit([{"role": "user", "content": f"extract {i}"}], intent="chain") for i in range(6)]
            refused = await c.submit([{"role": "user", "content": "bad"}], intent="refused")
            limited = await c.submit([{"role": "user", "content": "busy"}], intent="limited")
            results = [await h.result(timeout=90) for h in [*chained, refused, limited]]
        assert all(isinstance(r, Completed) and r.provider == "good" for r in results[:6])
        assert isinstance(results[6], Failed) and isinstance(results[7], Completed)

        w = scrape(ports["worker-0"])
        assert value(w, "panelboard_retries_total", provider="flaky", trigger="5xx") == 6  # max_retries 1 per job
        assert value(w, "panelboard_fallbacks_total", from_provider="flaky", to_provider="good", trigger="5xx") == 6
        assert value(w, "panelboard_fallbacks_total", from_provider="busy", to_provider="good", trigger="429") == 1
        assert value(w, "panelboard_provider_calls_total", provider="flaky", outcome="ServerError") == 12
        assert value(w, "panelboard_provider_calls_total", provider="good", outcome="ok") == 7
        assert value(w, "panelboard_provider_calls_total", provider="good", outcome="ClientError") == 1
        assert value(w, "panelboard_jobs_total", outcome="completed") == 7
        assert value(w, "panelboard_dead_letters_total") == 1  # the 400; the fallen-back jobs completed
        assert value(w, "panelboard_call_latency_seconds_count", provider="good") == 8
        assert value(w, "panelboard_dispatch_to_call_seconds_count", provider="flaky") == 12
        assert value(w, "panelboard_queue_wait_seconds_count", stream="PB_DISPATCH", provider="good") == 8
        assert value(w, "panelboard_call_tokens_total", provider="good", team="default", kind="completion") > 0
        assert value(w, "panelboard_call_spend_usd_total", provider="good", tier="chain", team="default") > 0
        assert value(w, "panelboard_pool_concurrency_cap", provider="busy") == 4
        assert ("panelboard_pool_in_flight", (("provider", "good"),)) in w
        assert value(w, "process_resident_memory_bytes") > 0  # process metrics of this process
        assert ("panelboard_time_to_first_token_seconds_count", (("model", "m"), ("provider", "good"))) not in w  # defined, no streams yet

        b = wait_for(ports["broker"], lambda s: value(s, "panelboard_health_state", provider="flaky", state="degraded") == 1)
        assert value(b, "panelboard_health_state", provider="flaky", model="flaky/m", state="degraded") == 1
        assert value(b, "panelboard_health_state", provider="good", model="good/m", state="healthy") == 1
        assert value(b, "panelboard_admission_seconds_count") == 8
        assert value(b, "panelboard_queue_wait_seconds_count", stream="PB_JOBS") == 8
        assert value(b, "panelboard_queue_pending", stream="PB_JOBS", consumer="broker") == 0

        ledger = wait_for(ports["ledger"], lambda s: value(s, "panelboard_requests_total") >= 21)
        assert value(ledger, "panelboard_requests_total", provider="flaky", outcome="ServerError") == 12
        assert value(ledger, "panelboard_spend_usd_total", provider="good") > 0


async def test_a_429_shows_its_pool_paused(tmp_path, free_port_base):
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "5"], metrics_port=free_port_base) as stack:
        stack.start(workers=1, ledger=False)
        httpx.post(f"{stack.mock_url}/_mock/control", json={"provider": "busy", "retry_after_s": 5}).raise_for_status()
        async with Client(stack.nats_url) as c:
            h = await c.submit([{"role": "user", "content": "busy"}], intent="limited")
            w = wait_for(stack.metrics_ports["worker-0"], lambda s: value(s, "panelboard_pool_paused", provider="busy") == 1, 30)
            assert value(w, "panelboard_pool_paused", provider="busy") == 1
            assert value(w, "panelboard_pool_paused", provider="good") == 0
            assert isinstance(await h.result(timeout=60), Completed)
