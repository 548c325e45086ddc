"""Wait-mode rate limiting says why jobs sit: one log line per key per interval (not one per
job) and the key with its waiting jobs in `panelboard status`. A real broker and worker, a real
nats-server and the mock provider, keys in SQLite."""

from __future__ import annotations

import asyncio
import json
import time

from panelboard.broker import waiting
from panelboard.broker.governance_store import Store
from panelboard.clients import Client
from panelboard.transport import db
from panelboard.stack import Stack
from panelboard.schemas.job import Completed
from tests.conftest import ROOT, run_cli

GOV_CONFIG = ROOT / "tests" / "data" / "governance.yaml"
HELLO = [{"role": "user", "content": "Extract the total from: invoice 17, total $42."}]


def test_the_wait_log_logs_once_per_owner_per_interval_and_counts_jobs_not_retries():
    w = waiting.WaitLog(interval_s=10, horizon_s=65)
    rows = [w.note("key pb_abc rpm", f"j{i}", 100.0 + i * 0.1) for i in range(10)]
    assert [r is not None for r in rows] == [True] + [False] * 9  # one line, not ten
    assert [r is None for r in (w.note("key pb_abc rpm", "j0", 105.0), w.note("team t tpm", "x", 105.0))] == [True, False]
    assert w.note("key pb_abc rpm", "j1", 111.0).jobs == 10  # the next interval: a line, counting jobs, not naks
    w.done("j3")
    assert [(r.owner, r.limit, r.jobs) for r in w.snapshot(112.0)] == [("key pb_abc", "rpm", 9), ("team t", "tpm", 1)]
    assert [r.owner for r in w.snapshot(112.0 + 66)] == []  # jobs not seen within the horizon have left


async def test_status_shows_keys_waiting_on_a_limit_and_the_broker_logs_it_once_per_interval(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}"
    store = Store.open(url)
    try:
        key, prefix = await store.create_key("waiters", rpm=5, on_limit="wait")
    finally:
        await store.close()
    stack = Stack(tmp_path / "stack", config=GOV_CONFIG)
    stack.env[db.URL_ENV] = url
    try:
        stack.start(workers=1, ledger=False)
        async with Client(stack.nats_url, key=key, team="waiters") as c:
            handles = await asyncio.gather(*(c.submit(HELLO, intent="fast") for _ in range(15)))
            # Given 15 jobs on a key allowed 5 a minute: 5 run, 10 wait in the queue
            futs = [asyncio.ensure_future(h.result(timeout=60)) for h in handles]
            done: set = set()
            while len(done) < 5:
                new, _ = await asyncio.wait([f for f in futs if f not in done], timeout=60, return_when=asyncio.FIRST_COMPLETED)
                assert new, f"only {len(done)} jobs finished"
                done |= new
            assert all(isinstance(f.result(), Completed) for f in done)

            # Then `panelboard status` names the key (its prefix) and the 10 jobs behind it
            t0, rows = time.monotonic(), []
            while time.monotonic() - t0 < 60:
                out = run_cli("status", "--json", "--config", str(GOV_CONFIG), "--nats-url", stack.nats_url)
                assert out.returncode == 0, out.stderr
                rows = [w for w in json.loads(out.stdout)["waiting"] if w["owner"] == f"key {prefix}"]
                if rows and rows[0]["jobs"] == 10:
                    break
            assert rows and (rows[0]["limit"], rows[0]["jobs"]) == ("rpm", 10), rows
            text = run_cli("status", "--config", str(GOV_CONFIG), "--nats-url", stack.nats_url)
            assert "waiting on a rate limit" in text.stdout and f"key {prefix}" in text.stdout and key not in text.stdout
            for f in futs:
                f.cancel()
        # And the broker logged it at info: at least once, and not once per waiting job
        lines = [json.loads(ln) for ln in (stack.home / "logs" / "broker.log").read_text().splitlines()
                 if '"ratelimit.waiting"' in ln]
        assert 1 <= len(lines) < 10, lines
        assert lines[0]["owner"] == f"key {prefix}" and lines[0]["limit"] == "rpm" and lines[0]["level"] == "info"
    finally:
        stack.stop()
