"""Every error class of the HTTP ingress, provoked for real and judged by the official SDKs:
a stack of its own with virtual keys required (tests/data/ingress.yaml), a real nats-server,
broker, worker, SQLite key database and the mock provider."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import aiohttp
import anthropic
import httpx
import openai
import pytest

from panelboard.transport import db
from panelboard.broker import budgets
from panelboard.broker.governance_store import Store
from panelboard.clients import Client
from panelboard.natsserver import NatsServer
from panelboard.schemas import wire
from panelboard.schemas.errors import Cancelled
from panelboard.schemas.job import Completed, Failed
from panelboard.stack import Stack
from tests.conftest import ROOT, Mock

CONFIG = ROOT / "tests" / "data" / "ingress.yaml"
MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


class Gw:
    def __init__(self, stack: Stack, keys: dict[str, str]):
        self.stack = stack
        self.url = stack.ingress_url or ""
        self.keys = keys
        self.mock = Mock(stack.mock_url or "")

    def oai(self, key: str = "good", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys.get(key, key), **{"max_retries": 0, **kw})

    def claude(self, key: str = "good", **kw) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.keys.get(key, key), **{"max_retries": 0, **kw})

    def calls_for(self, job_id: str) -> int:
        return sum(1 for e in self.mock.log() if e["request_id"].split(":")[0] == job_id)


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Gw:
    home: Path = tmp_path_factory.mktemp("ingress-gov")
    server = NatsServer(home / "nats").start()
    url = f"sqlite+aiosqlite:///{home / 'keys.db'}"

    async def make_keys() -> dict[str, str]:
        store = Store.open(url)
        try:
            keys = {"good": (await store.create_key("web"))[0],
                    "limited": (await store.create_key("web", rpm=1, on_limit="fail"))[0]}
            await store.set_team("poor", budget_nano=budgets.NANO // 100, period="monthly")  # $0.01
            keys["poor"] = (await store.create_key("poor"))[0]
            return keys
        finally:
            await store.close()

    keys = asyncio.run(make_keys())
    stack = Stack(home / "stack", config=CONFIG, nats_url=server.url, env={db.URL_ENV: url})
    try:
        stack.start(workers=1, ledger=False, ingress=True)
        yield Gw(stack, keys)
    finally:
        stack.stop()
        server.stop()


def test_a_good_key_is_served_and_its_team_pays(gw):
    with gw.oai() as c:
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=MSG, max_tokens=8)
    assert raw.status_code == 200 and raw.parse().choices[0].message.content.startswith("mock reply")
    with gw.claude() as c:
        m = c.messages.create(model="fast", max_tokens=8, messages=MSG)
    assert m.content[0].type == "text" and m.usage.output_tokens <= 8


def test_panelboard_auto_lets_the_classifier_pick_the_intent(gw):
    with gw.oai() as c:
        raw = c.chat.completions.with_raw_response.create(model="panelboard/auto", messages=MSG, max_tokens=8)
    assert raw.headers["x-pb-tier"] == "fast"  # "Extract the date ..." is extraction -> fast


def test_a_bad_key_is_an_authentication_error_on_both_apis(gw):
    bogus = "pb_zzzzz_" + "z" * 32
    with gw.oai(bogus) as c, pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="fast", messages=MSG, max_tokens=8)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with gw.claude(bogus) as c, pytest.raises(anthropic.AuthenticationError):
        c.messages.create(model="fast", max_tokens=8, messages=MSG)


def test_over_budget_is_insufficient_quota_and_never_retried(gw):
    # $0.01 left, a worst case of $0.05 (8 tokens at $6250/M): default SDK retries stay off
    with gw.oai("poor", max_retries=2) as c, pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="priced", messages=MSG, max_tokens=8)
    assert e.value.code == "insufficient_quota" and e.value.response.headers["x-should-retry"] == "false"
    with gw.claude("poor") as c, pytest.raises(anthropic.EnforcedSpendLimitReachedError):
        c.messages.create(model="priced", max_tokens=8, messages=MSG)


def test_rate_limited_is_a_rate_limit_error_with_retry_after(gw):
    with gw.oai("limited") as c:
        c.chat.completions.create(model="fast", messages=MSG, max_tokens=8)  # the one request of this minute
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="fast", messages=MSG, max_tokens=8)
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 61


def test_invalid_requests_are_bad_request_errors(gw):
    with gw.oai() as c, pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="fast", messages=MSG, max_tokens=8, extra_body={"api_base": "http://evil"})
    assert e.value.code == "invalid_job"  # the broker refuses a job that names an address
    with gw.claude() as c, pytest.raises(anthropic.BadRequestError):
        c.messages.create(model="fast", max_tokens=8, messages=[{"role": "system", "content": "no"}])  # type: ignore[list-item]


def test_too_large_is_413_on_both_apis(gw):
    big = [{"role": "user", "content": "x" * 70_000}]  # over this stack's 64 KiB job limit
    with gw.oai() as c, pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="fast", messages=big, max_tokens=8)
    assert e.value.status_code == 413
    with gw.claude() as c, pytest.raises(anthropic.ContentTooLargeError):
        c.messages.create(model="fast", max_tokens=8, messages=big)


def test_chain_exhausted_is_502_and_the_sdk_does_not_send_it_again(gw):
    job_id = "broken-" + uuid.uuid4().hex[:8]
    with gw.oai(max_retries=2) as c, pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="broken", messages=MSG, max_tokens=8, extra_headers={"x-pb-job-id": job_id})
    assert e.value.status_code == 502 and e.value.code == "chain_exhausted"
    assert gw.calls_for(job_id) == 1  # one hop, no retries: one call, and the SDK did not resend


def test_a_provider_refusal_is_passed_through(gw):
    with gw.oai() as c, pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="refusing", messages=MSG, max_tokens=8)
    assert e.value.code == "provider_error"


def test_deadline_is_504(gw):
    # a 1 s deadline against a 3 s call: the worker cuts the call at the deadline
    with gw.oai() as c, pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="slow", messages=MSG, max_tokens=8, extra_headers={"x-pb-deadline": "1"})
    assert e.value.status_code == 504
    with gw.claude() as c, pytest.raises(anthropic.GatewayTimeoutError):
        c.messages.create(model="slow", max_tokens=8, messages=MSG, extra_headers={"x-pb-deadline": "1"})


async def test_a_stream_cut_after_chunks_is_an_error_event(gw):
    """The mock cuts the provider's stream after 3 events: the chunks already relayed stay
    with the caller, and the SDK raises on the error event that follows (no retry, no [DONE])."""
    got = []
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.keys["good"], max_retries=0) as c:
        stream = await c.chat.completions.create(model="cuts", messages=MSG, max_tokens=32, stream=True)
        with pytest.raises(openai.APIError) as e:
            async for ch in stream:
                got.append(ch.choices[0].delta.content if ch.choices else None)
    assert got and e.value.message


async def test_a_caller_that_hangs_up_before_dispatch_cancels_its_job(gw):
    # Given the one-slot pool busy with a 1.5 s call
    async with Client(gw.stack.nats_url, key=gw.keys["good"], team="web") as sdk:
        blocker = await sdk.submit(MSG, intent="capped", max_tokens=8)
        deadline = time.monotonic() + 30
        while gw.mock.stats()["in_flight"].get("capped", 0) == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # When an HTTP caller's request for the same pool waits in the queue (dispatched behind
        # the blocker, which the pool holds) and the caller hangs up
        job_id = "gone-" + uuid.uuid4().hex[:8]
        subject = wire.dispatch("capped", "interactive", ">")  # every team's

        async def waiting() -> int:
            info = await sdk.js.stream_info(wire.DISPATCH_STREAM, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())

        async with aiohttp.ClientSession() as http:
            call = asyncio.ensure_future(http.post(
                gw.url + "/v1/chat/completions", json={"model": "capped", "messages": MSG, "max_tokens": 8},
                headers={"authorization": f"Bearer {gw.keys['good']}", "x-pb-job-id": job_id}))
            while await waiting() < 2:
                assert time.monotonic() < deadline and not call.done(), "the request never reached the pool's queue"
                await asyncio.sleep(0.01)
            call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        # Then its job ends cancelled, and the provider is never called for it
        r = await sdk.result(job_id, timeout=30)
        assert isinstance(r, Failed) and isinstance(r.error, Cancelled)
        assert isinstance(await blocker.result(timeout=30), Completed)
    await asyncio.sleep(0.5)  # give a wrongly dispatched call time to reach the mock
    assert gw.calls_for(job_id) == 0


def test_the_anthropic_stream_reports_a_failure_before_its_first_event_as_an_error(gw):
    with gw.claude() as c, pytest.raises(anthropic.InternalServerError) as e:
        with c.messages.stream(model="broken", max_tokens=8, messages=MSG) as s:
            list(s.text_stream)
    assert e.value.status_code == 502


def test_readyz_answers_while_nats_is_up(gw):
    assert httpx.get(gw.url + "/readyz").status_code == 200
