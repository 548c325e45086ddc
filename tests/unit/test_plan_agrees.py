"""`route explain` and the broker run one planning function (broker/plan.py): on every case
here the chain the explanation shows is the chain the broker dispatches, or both refuse."""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from nats.aio.client import Client as NATS

from panelboard.broker.explain import explain, route_of
from panelboard.broker.health import HealthState
from panelboard.broker.service import Broker
from panelboard.config import DEFAULT_CONFIG, load, parse
from panelboard.schemas.job import Job

BASE = load(DEFAULT_CONFIG)
# No probe draw: the broker sends a share of jobs to a degraded hop first, explain shows the rest.
CFG = msgspec.structs.replace(BASE, health=msgspec.structs.replace(BASE.health, probe_share=0.0))
GROUPED = parse(DEFAULT_CONFIG.read_text().replace("{primary: novita/llama-3.3-70b,", "{primary: novita/llama-3.3-70b, group: llama,")
                .replace("{secondary: deepinfra/llama-3.3-70b,", "{secondary: deepinfra/llama-3.3-70b, group: llama,"))
BAD = {("novita", "novita/llama-3.3-70b"): HealthState(provider="novita", model="novita/llama-3.3-70b", state="degraded", p95_ms=3100,
                                                       error_rate=0.4, calls=80, reason="slow")}


def job(content: str, intent: str | None = None, **kw) -> Job:
    return msgspec.convert({"id": "j1", "intent": intent, "request": {"messages": [{"role": "user", "content": content}]}, **kw}, Job)


CASES = [
    ("given intent", CFG, job("Extract the date: due 2026-12-01", intent="extraction"), {}, {}),
    ("classified", CFG, job("Write a polite email to a client telling them the delivery will be two weeks late."), {}, {}),
    ("unknown intent", CFG, job("x", intent="poetry"), {}, {}),
    ("no intent, classifier off", msgspec.structs.replace(CFG, classifier="off"), job("hello"), {}, {}),
    ("past its deadline", CFG, job("x", intent="extraction", deadline=1.0), {}, {}),
    ("degraded first hop", CFG, job("x", intent="extraction"), BAD, {}),
    ("min_precision", msgspec.structs.replace(CFG, tiers={**CFG.tiers, "cheap-fast": msgspec.structs.replace(CFG.tiers["cheap-fast"], min_precision="bf16")}),
     job("x", intent="extraction"), {}, {}),
    ("grouped, loaded", GROUPED, job("x", intent="extraction"), {}, {"novita": 1000}),
]


@pytest.mark.parametrize("name,cfg,j,health,load", CASES, ids=[c[0] for c in CASES])
def test_explain_shows_what_the_broker_dispatches(name, cfg, j, health, load):
    broker = Broker(NATS().jetstream(), cfg)  # never connected: planning touches no NATS
    broker.health, broker.load, broker.rng = dict(health), dict(load), random.Random(0)
    now = time.time()
    decided = broker.plan(j, now)
    shown = explain(j, cfg, health, load, now=now, bound=broker.governor.on is not False)
    assert route_of(shown) == decided.route
    assert (shown.error is None) == (decided.error is None) and shown.error == decided.error
    assert shown.intent == decided.intent and shown.intent_source == decided.intent_source
    assert shown.max_tokens == (decided.job.request.max_tokens if decided.route else None)
