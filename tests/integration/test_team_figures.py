"""A team near its budget: the broker's budget and rate-limit headroom gauges and `panelboard
status` show what the governance database holds (spend, what is left, requests in the window)."""

from __future__ import annotations

import json

import pytest

from panelboard.transport import db
from panelboard.broker.budgets import NANO
from panelboard.broker.governance_store import Store
from panelboard.clients import Client
from panelboard.schemas.job import Completed
from panelboard.stack import Stack
from tests.conftest import ROOT, run_cli
from tests.integration.test_metrics import free_port_base, value, wait_for  # noqa: F401  (fixture)

GOV_CONFIG = ROOT / "tests" / "data" / "governance.yaml"
JOBS = 3
PRICED = [{"role": "user", "content": "Extract the total from: invoice 17, total $42."}]


async def test_a_team_near_its_budget_shows_spend_remaining_and_headroom(tmp_path, free_port_base):  # noqa: F811
    url = f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}"
    store = Store.open(url)
    try:
        await store.set_team("spenders", budget_nano=int(0.20 * NANO), period="daily", rpm=50)
        key, _prefix = await store.create_key("spenders")
    finally:
        await store.close()
    stack = Stack(tmp_path / "stack", config=GOV_CONFIG, metrics_port=free_port_base)
    stack.env[db.URL_ENV] = url
    with stack:
        stack.start(workers=1, ledger=False)
        async with Client(stack.nats_url, key=key, team="spenders") as c:
            for _ in range(JOBS):  # each answer: 8 tokens at $6,250/M = $0.05, so $0.15 of $0.20
                assert isinstance(await (await c.submit(PRICED, intent="priced", max_tokens=8)).result(timeout=60), Completed)

        # Remaining is budget - spent - reserved: a last call still reserved (its reservation
        # equals its cost here) shows the same remaining, so wait for the spend itself too.
        settled = lambda s: (abs(value(s, "panelboard_budget_remaining_usd", team="spenders") - 0.05) < 1e-9  # noqa: E731
                             and abs(value(s, "panelboard_budget_spent_usd", team="spenders") - 0.15) < 1e-9)
        b = wait_for(stack.metrics_ports["broker"], settled, 60)  # settlement, then the next refresh
        assert value(b, "panelboard_budget_usd", team="spenders", period="daily") == pytest.approx(0.20)
        assert value(b, "panelboard_budget_spent_usd", team="spenders") == pytest.approx(0.15)
        assert value(b, "panelboard_budget_remaining_usd", team="spenders") == pytest.approx(0.05)
        assert value(b, "panelboard_rate_limit_headroom", team="spenders", limit="rpm") == 50 - JOBS

        out = run_cli("status", "--json", "--sample-s", "0", "--config", str(GOV_CONFIG), "--nats-url", stack.nats_url or "",
                      "--database-url", url)
        assert out.returncode == 0, out.stderr
        (team,) = [t for t in json.loads(out.stdout)["teams"] if t["team"] == "spenders"]
        assert (team["spent_usd"], team["budget_usd"], team["remaining_usd"]) == pytest.approx((0.15, 0.20, 0.05))
        assert (team["rpm"], team["rpm_used"]) == (50, JOBS)
        text = run_cli("status", "--sample-s", "0", "--config", str(GOV_CONFIG), "--nats-url", stack.nats_url or "", "--database-url", url)
        assert "spenders: $0.15 of $0.20 (daily), $0.05 left; rpm 3/50" in text.stdout
