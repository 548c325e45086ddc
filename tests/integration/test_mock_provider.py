"""The mock provider, driven through the official OpenAI and Anthropic SDKs and plain HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from panelboard.loadgen.mock_provider import MockConfig, MockServer, start_mock
from tests.support.mock_server import claude, mock, oai  # noqa: F401  (pytest fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def http(mock: MockServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        yield client


def tokens(*texts: str) -> int:
    return max(1, math.ceil(sum(len(t) for t in texts) / 4))


async def chat(
    http: httpx.AsyncClient, provider: str = "novita", model: str = "m", rid: str | None = None
) -> httpx.Response:
    headers = {"x-pb-request-id": rid} if rid else {}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return await http.post(f"/{provider}/v1/chat/completions", json=body, headers=headers)


# --- happy paths ----------------------------------------------------------------------


async def test_openai_completion_parses_with_deterministic_usage(mock: MockServer, oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a panelboard?"}]

    raw = await oai.chat.completions.with_raw_response.create(
        model="llama-3.1-8b", messages=messages, extra_headers={"x-pb-request-id": "job-1"}
    )
    again = await oai.chat.completions.create(model="llama-3.1-8b", messages=messages)

    done = raw.parse()  # the openai SDK parses synchronously here; anthropic awaits
    assert raw.headers["x-request-id"] == "job-1"
    assert done.id == "chatcmpl-job-1" and done.object == "chat.completion"
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].message.content.startswith("mock reply from novita/llama-3.1-8b: ")
    assert done.usage.prompt_tokens == tokens("be brief", "what is a panelboard?")
    assert 8 <= done.usage.completion_tokens <= 200
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert (again.usage, again.choices[0].message.content) == (done.usage, done.choices[0].message.content)
    [entry, _] = mock.log("novita")
    assert (entry.request_id, entry.api, entry.model, entry.status, entry.fault) == (
        "job-1", "openai", "llama-3.1-8b", 200, None
    )


async def test_anthropic_message_parses_counting_system_and_blocks(claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="claude-sonnet",
        system=[{"type": "text", "text": "you are terse"}],
        max_tokens=1024,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "bye"},
        ],
        extra_headers={"x-pb-request-id": "job-2"},
    )

    msg = await raw.parse()
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "job-2"
    assert msg.id == "msg_job-2" and msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert msg.content[0].text.startswith("mock reply from anthropic/claude-sonnet: ")
    assert msg.usage.input_tokens == tokens("you are terse", "hello ", "there", "hi", "bye")
    assert 8 <= msg.usage.output_tokens <= 200


async def test_max_tokens_caps_the_reply(oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    done = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    msg = await claude.messages.create(
        model="m", system="s", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )

    assert (done.choices[0].finish_reason, done.usage.completion_tokens) == ("length", 3)
    assert len(done.choices[0].message.content) == 12
    assert (msg.stop_reason, msg.usage.output_tokens) == ("max_tokens", 3)


# --- faults from the model name -------------------------------------------------------


async def test_fault_429_is_a_rate_limit_with_retry_after(mock: MockServer, oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await oai.chat.completions.create(model="m-fault-429", messages=[{"role": "user", "content": "hi"}])

    err = caught.value
    assert err.response.headers["retry-after"] == "1"
    assert err.response.headers["retry-after-ms"] == "1000"
    assert "mock fault 429 injected for provider novita" in err.message
    assert [(e.status, e.fault) for e in mock.log()] == [(429, "429")]


async def test_anthropic_fault_529_is_overloaded(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.create(model="fault-529", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_context_fault_names_the_token_counts(oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as from_openai:
        await oai.chat.completions.create(model="m-fault-context", messages=[{"role": "user", "content": "x" * 40}])
    with pytest.raises(anthropic.BadRequestError) as from_anthropic:
        await claude.messages.create(
            model="m-fault-context", max_tokens=10, messages=[{"role": "user", "content": "x" * 40}]
        )

    assert from_openai.value.code == "context_length_exceeded"
    assert from_anthropic.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 10 tokens > 9 maximum",
    }


async def test_quota_fault_is_not_a_plain_rate_limit(oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(openai.RateLimitError) as from_openai:
        await oai.chat.completions.create(model="fault-quota", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError) as from_anthropic:
        await claude.messages.create(model="fault-quota", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    assert from_openai.value.code == from_openai.value.type == "insufficient_quota"
    assert "retry-after" not in from_openai.value.response.headers
    assert from_anthropic.value.body["error"]["message"].startswith("enforced_spend_limit_reached")


async def test_malformed_fault_answers_200_with_broken_json(http: httpx.AsyncClient) -> None:
    resp = await chat(http, model="m-fault-malformed")

    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)


async def test_huge_faults_answer_200_with_a_huge_body_or_an_absurd_usage(http: httpx.AsyncClient) -> None:
    big = await chat(http, model="m-fault-huge_body")
    absurd = await chat(http, model="m-fault-huge_usage")

    assert big.status_code == 200 and len(big.content) >= 1_500_000
    assert big.json()["choices"][0]["message"]["content"]
    assert absurd.status_code == 200 and len(absurd.content) < 10_000
    assert absurd.json()["usage"]["completion_tokens"] == 3_000_000_000


async def test_slow_model_adds_latency(mock: MockServer, http: httpx.AsyncClient) -> None:
    assert (await chat(http, model="m-slow-100")).status_code == 200

    assert mock.log()[0].latency_ms >= 100


async def test_client_timeout_on_a_hang_frees_the_slot(mock: MockServer, oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        await oai.chat.completions.create(
            model="m-fault-timeout", messages=[{"role": "user", "content": "hi"}], timeout=0.2
        )

    for _ in range(100):  # the server notices the disconnect on its own schedule
        if mock.log():
            break
        await asyncio.sleep(0.02)
    assert [(e.status, e.fault) for e in mock.log()] == [(499, "timeout")]
    assert mock.stats().in_flight == {"novita": 0}


# --- runtime control ------------------------------------------------------------------


async def test_control_every_2_fails_exactly_every_second_request(http: httpx.AsyncClient) -> None:
    ctl = await http.post("/_mock/control", json={"provider": "novita", "fault": "500", "every": 2})
    assert ctl.json() | {"fault": "500", "every": 2} == ctl.json()

    statuses = [(await chat(http)).status_code for _ in range(6)]
    other = (await chat(http, provider="deepinfra")).status_code
    await http.post("/_mock/control", json={"provider": "novita", "fault": None})
    cleared = (await chat(http)).status_code

    assert statuses == [200, 500, 200, 500, 200, 500]
    assert other == 200
    assert cleared == 200
    stats = (await http.get("/_mock/stats")).json()
    assert stats["status_counts"]["novita"] == {"200": 4, "500": 3}


async def test_control_before_first_call_and_ratelimit_header(http: httpx.AsyncClient) -> None:
    await http.post("/_mock/control", json={"provider": "fireworks", "fault": "503", "ratelimit_remaining": 7})

    resp = await chat(http, provider="fireworks")

    assert resp.status_code == 503
    assert resp.headers["x-ratelimit-remaining-requests"] == "7"
    assert resp.json()["error"]["message"] == "mock fault 503 injected for provider fireworks"


async def test_a_request_window_counts_down_in_each_familys_headers_then_answers_429(http: httpx.AsyncClient) -> None:
    from panelboard.schemas.pacing import rate_signal

    await http.post("/_mock/control", json={"provider": "win", "ratelimit_requests": 3, "ratelimit_window_s": 30})
    seen = [await chat(http, provider="win") for _ in range(4)]
    assert [r.status_code for r in seen] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in seen] == ["2", "1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in seen)
    sig = rate_signal(seen[0].headers, 0.0)  # our own parser reads the reset back: the window's end, about 30 s away
    assert sig is not None and sig.requests_reset_at is not None and 29 < sig.requests_reset_at <= 30.001
    assert 28 < float(seen[3].headers["retry-after-ms"]) / 1000 <= 30.001
    assert seen[3].json()["error"]["code"] == "rate_limit_exceeded"

    await http.post("/_mock/control", json={"provider": "winan", "ratelimit_requests": 1, "ratelimit_window_s": 30})
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    first, second = [await http.post("/winan/v1/messages", json=body) for _ in range(2)]
    assert (first.status_code, second.status_code) == (200, 429)
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0" and first.headers["anthropic-ratelimit-requests-limit"] == "1"
    an = rate_signal(first.headers, time.time())
    assert an is not None and an.requests_reset_at is not None and 0 < an.requests_reset_at - time.time() <= 30.001
    assert second.json()["error"]["type"] == "rate_limit_error"


async def test_control_rejects_unknown_faults(http: httpx.AsyncClient) -> None:
    resp = await http.post("/_mock/control", json={"provider": "novita", "fault": "418"})

    assert resp.status_code == 400


async def test_reset_clears_log_and_faults(http: httpx.AsyncClient) -> None:
    await http.post("/_mock/control", json={"provider": "novita", "fault": "429"})
    assert (await chat(http)).status_code == 429

    await http.post("/_mock/reset")

    assert (await http.get("/_mock/log")).json() == []
    assert (await chat(http)).status_code == 200


# --- the request log and concurrency --------------------------------------------------


async def test_log_holds_every_request_id_once(http: httpx.AsyncClient) -> None:
    sent = [f"id-{i}" for i in range(8)]
    models = ["m", "m-fault-500", "m-fault-429", "m-fault-malformed"]

    await asyncio.gather(*(chat(http, model=models[i % 4], rid=rid) for i, rid in enumerate(sent)))
    await chat(http, provider="deepinfra")  # no id sent: one is made up

    novita = (await http.get("/_mock/log", params={"provider": "novita"})).json()
    everything = (await http.get("/_mock/log")).json()
    assert Counter(e["request_id"] for e in novita) == Counter(sent)
    assert len(everything) == 9 and everything[-1]["request_id"] not in sent
    assert set(everything[0]) == {"ts", "provider", "api", "request_id", "model", "status", "latency_ms", "fault"}


async def test_max_in_flight_reflects_concurrency(mock: MockServer, http: httpx.AsyncClient) -> None:
    mock.control("novita", latency_ms=50)

    results = await asyncio.gather(*(chat(http) for _ in range(20)))

    assert {r.status_code for r in results} == {200}
    stats = mock.stats()
    assert stats.max_in_flight["novita"] >= 10
    assert stats.in_flight["novita"] == 0
    assert len(mock.log("novita")) == 20


async def test_log_path_gets_json_lines_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    server = await start_mock(MockConfig(port=0, log_path=str(path)))
    async with httpx.AsyncClient(base_url=server.url) as http:
        await chat(http, rid="a")
        await chat(http, rid="b")

    await server.stop()

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["request_id"] for e in lines] == ["a", "b"]


# --- the CLI --------------------------------------------------------------------------


async def test_cli_serves_until_terminated() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panelboard.loadgen.mock_provider", "--port", "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("mock provider listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with httpx.AsyncClient(base_url=url) as http:
            resp = await chat(http, rid="cli-1")
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "cli-1"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
