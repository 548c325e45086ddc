"""Layer 2 end to end: a primary whose latency rises from 200 ms to 3 s loses its traffic to
the next hop, and gets it back once it recovers, with no manual weights."""

from __future__ import annotations

import asyncio
import time

import pytest

from panelboard.clients import Client
from panelboard.stack import Stack
from tests.conftest import ROOT, Mock

pytestmark = pytest.mark.fault

MSG = [{"role": "user", "content": "Extract the date: due 2026-12-01"}]


def primary_share(log: list[dict], since: float, until: float) -> tuple[float, int]:
    """Share of jobs whose first call (hop 0, attempt 0) went to fast1, by call start time."""
    first = [e for e in log if e["request_id"].endswith(":0:0") and since <= e["ts"] - e["latency_ms"] / 1000 < until]
    return (sum(e["provider"] == "fast1" for e in first) / len(first) if first else float("nan")), len(first)


async def test_share_moves_off_a_slow_primary_and_back_after_it_recovers(tmp_path):
    with Stack(tmp_path, config=ROOT / "tests" / "data" / "health.yaml", mock_args=["--latency-ms", "200"]) as s:
        s.start()
        mock = Mock(s.mock_url)
        stop = asyncio.Event()
        async with Client(s.nats_url) as c:
            async def driver() -> None:  # a steady closed loop of 16 jobs in flight
                async def lane() -> None:
                    while not stop.is_set():
                        await (await c.submit(MSG, intent="extraction")).result(timeout=60)
                await asyncio.gather(*(lane() for _ in range(16)))

            load = asyncio.create_task(driver())
            await asyncio.sleep(3)  # a healthy baseline
            t_slow = time.time()
            mock.control(provider="fast1", latency_ms=3000)
            moved = await wait_share(mock, below=0.10, start=t_slow, timeout=30)
            t_back = time.time()
            mock.control(provider="fast1", latency_ms=200)
            back = await wait_share(mock, above=0.50, start=t_back, timeout=60)
            stop.set()
            await load
    print(f"\nfailover: primary share < 10% {moved:.1f}s after it slowed; > 50% again {back:.1f}s after it recovered")
    assert moved < 15 and back < 40


async def wait_share(mock: Mock, start: float, timeout: float, below: float | None = None, above: float | None = None) -> float:
    """Seconds from `start` until the primary's share over the last 2 s crosses the bound."""
    while time.time() - start < timeout:
        await asyncio.sleep(0.5)
        now = time.time()
        share, n = primary_share(mock.log(), now - 2.5, now - 0.5)
        if n >= 10 and ((below is not None and share < below) or (above is not None and share > above)):
            return now - start
    raise AssertionError(f"the primary's share never crossed the bound within {timeout}s")
