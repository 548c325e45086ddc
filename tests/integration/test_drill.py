"""`panelboard drill break-primary` against a running stack: the primary fails as asked, the
chain's next hop answers every job, the output says so per hop, and the primary is mended."""

from __future__ import annotations

import asyncio
import json

import pytest

from panelboard.clients import Client
from panelboard.drill import summarise
from panelboard.schemas.errors import ChainExhausted
from panelboard.schemas.job import Attempt, Failed
from panelboard.stack import Stack

from tests.conftest import TEST_CONFIG, run_cli

CHAINED = "\n  chained: {fallbacks: [{model: oa/small}, {model: an/claude}], retry_policy: {max_retries: 1, base_ms: 50}}\n"


def chained_config(tmp_path) -> str:
    text = TEST_CONFIG.read_text().replace("\ntiers:\n", "\ntiers:" + CHAINED, 1).replace("\nintents:\n", "\nintents:\n  chained: chained\n", 1)
    (tmp_path / "config.yaml").write_text(text)
    return str(tmp_path / "config.yaml")


@pytest.mark.parametrize("mode", ["500", "429", "hang"])
async def test_break_primary_moves_every_job_to_the_next_hop_and_mends_it(tmp_path, mode):
    cfg = chained_config(tmp_path)
    with Stack(tmp_path / "stack", config=cfg, mock_args=["--latency-ms", "5"]) as s:
        s.start(workers=1)
        r = await asyncio.to_thread(run_cli, "drill", "break-primary", "chained", "--mode", mode, "--jobs", "6", "--config", cfg,
                                    "--nats-url", s.nats_url, "--mock-url", s.mock_url, "--json", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        d = json.loads(r.stdout)
        async with Client(s.nats_url) as c:  # mended: the primary answers again
            after = await (await c.submit("after the drill", intent="chained", max_tokens=8)).result(timeout=120)
    primary, second = d["hops"]
    assert d["completed"] == 6 and d["verdict"].startswith("the chain held")
    assert primary["provider"] == "oa" and primary["answered"] == 0 and set(primary["statuses"]) == {"0" if mode == "hang" else mode}
    assert primary["attempts"] == 12 and primary["decisions"] == {"retry": 6, "forward": 6}  # one retry each, then on
    assert second["provider"] == "an" and second["answered"] == 6 and second["statuses"] == {"200": 6}
    assert after.provider == "oa"


def test_a_chain_that_did_not_hold_is_named_so():
    tried = [Attempt(provider=p, model=m, hop=h, attempt=0, status=500, latency_ms=1, decision=dec)
             for p, m, h, dec in (("a", "m", 0, "forward"), ("b", "n", 1, "fail"))]
    lost = Failed(job_id="j", error=ChainExhausted(message="every hop failed", hint="h"), attempts=tried)
    d = summarise("t", "i", "500", [("a", "m"), ("b", "n")], [lost], [1.0])
    assert d.completed == 0 and d.failed == {"chain_exhausted": 1} and "did NOT hold" in d.verdict
    assert [(h.attempts, h.answered) for h in d.hops] == [(1, 0), (1, 0)]
