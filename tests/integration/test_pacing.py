"""A pool paces itself by the provider's rate-limit headers: a window counting down to 0 is
spread out until its reset and never meets a 429; a provider that sends no such headers is
not paced at all; a 429 storm cuts the pool's concurrency limit, and `status` shows it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from panelboard.clients import Client
from panelboard.schemas.job import Completed, Failed
from panelboard.stack import Stack
from tests.conftest import ROOT, Mock, run_cli

CONFIG = ROOT / "tests" / "data" / "pacing.yaml"
MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]
WINDOW, WINDOW_S = 20, 2.0


@pytest.fixture(scope="module")
def pstack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("pacing"), config=CONFIG, mock_args=["--latency-ms", "5"])
    s.start(workers=1, ledger=False)
    yield s
    s.stop()


@pytest.fixture
def pmock(pstack):
    m = Mock(pstack.mock_url)
    m.http.post("/_mock/reset")
    return m


def pools(stack: Stack) -> dict[str, dict]:
    out = run_cli("status", "--json", "--sample-s", "0.2", "--config", str(CONFIG), "--nats-url", stack.nats_url or "", timeout=60)
    assert out.returncode == 0, out.stderr
    return {p["provider"]: p for p in json.loads(out.stdout)["pools"]}


async def run_jobs(stack: Stack, intent: str, n: int, while_running=None) -> list:
    async with Client(stack.nats_url) as c:
        prefix = f"{intent}-{uuid.uuid4().hex[:6]}"
        handles = await asyncio.gather(*(c.submit(MSG, intent=intent, job_id=f"{prefix}-{i}", max_tokens=32) for i in range(n)))
        seen = await asyncio.to_thread(while_running) if while_running else None
        return [await h.result(timeout=120) for h in handles], seen


@pytest.mark.parametrize("provider", ["paced", "pacedan"])  # OpenAI's x-ratelimit-* and Anthropic's anthropic-ratelimit-*
async def test_a_window_counting_down_to_zero_is_paced_and_never_meets_a_429(pstack, pmock, provider):
    # Given a provider that allows 20 requests per 2 s window and says so in its headers (a 429 past it)
    pmock.control(provider=provider, ratelimit_requests=WINDOW, ratelimit_window_s=WINDOW_S)
    jobs = 80

    def pacing_shown() -> str | None:  # `panelboard status` while the jobs run
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (row := pools(pstack)[provider])["pacing"]:
                return row["pacing"]
        return None

    # When 80 jobs arrive at once, more than the 16-slot pool could send within one window
    results, shown = await run_jobs(pstack, provider, jobs, pacing_shown)
    log = pmock.log(provider)
    counts = pmock.stats()["status_counts"][provider]
    ts = sorted(e["ts"] for e in log)
    print(f"\n{provider}: {jobs} jobs over {ts[-1] - ts[0]:.2f}s, statuses {counts}; status said: {shown}")
    # Then every job completed, the provider answered no 429 at all: each call fitted its window
    assert all(isinstance(r, Completed) for r in results), [r for r in results if not isinstance(r, Completed)][:3]
    assert counts == {"200": jobs}, counts
    # and the calls really were spread over the four windows they need, not sent at once and retried
    assert ts[-1] - ts[0] >= (jobs // WINDOW - 1) * WINDOW_S - 0.5
    # and `status` showed the pool being paced by the headers
    assert shown is not None and f"/{WINDOW} requests left" in shown


async def test_a_provider_without_rate_headers_is_not_paced(pstack, pmock):
    # Given a provider that sends no rate-limit headers and answers in 200 ms
    # When 48 jobs arrive at once
    results, _ = await run_jobs(pstack, "plain", 48)
    stats = pmock.stats()
    # Then the pool sends them as fast as its cap lets it: all 16 slots busy at once, no pacing shown
    assert all(isinstance(r, Completed) for r in results)
    assert stats["max_in_flight"]["plain"] == 16, stats
    row = pools(pstack)["plain"]
    assert row["pacing"] is None and row["limit"] == 16, row


async def test_a_429_storm_cuts_the_concurrency_limit_and_successes_raise_it_again(pstack, pmock):
    # Given a provider answering every call with a 429
    pmock.control(provider="storm", fault="429", every=1, retry_after_s=0.05)
    results, _ = await run_jobs(pstack, "storm", 16)
    assert all(isinstance(r, Failed) for r in results)
    # Then `status` shows the pool's limit cut below its cap of 16
    deadline = time.monotonic() + 30
    while (row := pools(pstack)["storm"])["limit"] in (None, 16) and time.monotonic() < deadline:
        pass
    print(f"\nstorm: limit after the 429s {row['limit']}")
    assert row["limit"] is not None and row["limit"] < 16, row
    cut = row["limit"]
    # When the provider recovers, successes raise it again (one more slot per limit-many successes)
    pmock.control(provider="storm", fault=None)
    results, _ = await run_jobs(pstack, "storm", 60)
    assert all(isinstance(r, Completed) for r in results)
    deadline = time.monotonic() + 30
    while (row := pools(pstack)["storm"])["limit"] <= cut and time.monotonic() < deadline:
        pass
    assert row["limit"] > cut, row


async def test_two_worker_processes_of_a_pool_share_the_window(tmp_path):
    # Given the pool served by two worker processes, which learn each other's view of the window through PB_PACE
    with Stack(tmp_path, config=CONFIG, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=2, ledger=False)
        m = Mock(s.mock_url)
        m.control(provider="paced", ratelimit_requests=WINDOW, ratelimit_window_s=WINDOW_S)
        # When 80 jobs arrive at once
        results, _ = await run_jobs(s, "paced", 80)
        counts = m.stats()["status_counts"]["paced"]
        served = {e["request_id"] for e in m.log("paced")}
    print(f"\ntwo workers: statuses {counts}")
    # Then together they still never overran it
    assert all(isinstance(r, Completed) for r in results)
    assert counts == {"200": 80} and len(served) == 80, counts
