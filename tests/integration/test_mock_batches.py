"""The mock's OpenAI Files + Batches endpoints, judged by the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import anthropic
import httpx
import openai
import pytest

from panelboard.loadgen.mock_provider import MockServer
from tests.support.mock_server import mock  # noqa: F401  (pytest fixture)


@pytest.fixture
async def oai(mock: MockServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{mock.url}/bp/v1", api_key="x", max_retries=0) as client:
        yield client


def jsonl(n: int, model: str = "m-1") -> bytes:
    return b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}}).encode() + b"\n"
                    for i in range(n))


async def control(mock: MockServer, **settings) -> None:
    async with httpx.AsyncClient() as http:  # the mock runs on this test's own event loop
        (await http.post(f"{mock.url}/_mock/batches/control", json={"provider": "bp", **settings})).raise_for_status()


async def until_ended(oai: openai.AsyncOpenAI, batch_id: str, bound_s: float = 20.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + bound_s
    while loop.time() < end:
        b = await oai.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {b.status}")


async def test_a_batch_runs_validating_to_completed_with_one_output_line_per_request(mock, oai):
    await control(mock, validate_ms=20, delay_ms=200)
    f = await oai.files.create(file=("in.jsonl", jsonl(5)), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    b = await oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"pb_batch": "x1"})
    assert b.status == "validating" and b.metadata == {"pb_batch": "x1"}
    done = await until_ended(oai, b.id)
    assert done.status == "completed" and done.request_counts.completed == 5 and done.error_file_id is None
    lines = [json.loads(x) for x in (await oai.files.content(done.output_file_id)).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"r{i}" for i in range(5)]
    assert all(x["response"]["status_code"] == 200 and x["response"]["body"]["usage"]["total_tokens"] > 0 for x in lines)
    # every line ran once, logged like a chat call under its custom id
    assert sorted(e.request_id for e in mock.log("bp")) == [f"r{i}" for i in range(5)]
    listed = await oai.batches.list()
    assert [x.id for x in listed.data] == [b.id]
    files = await oai.files.list(purpose="batch")
    assert f.id in [x.id for x in files.data]


async def test_an_expired_batch_reports_unrun_lines_as_batch_expired(mock, oai):
    await control(mock, validate_ms=0, delay_ms=60_000, window_s=0.3)
    f = await oai.files.create(file=("in.jsonl", jsonl(4)), purpose="batch")
    b = await oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await until_ended(oai, b.id)
    assert done.status == "expired" and done.output_file_id is None
    errs = [json.loads(x) for x in (await oai.files.content(done.error_file_id)).text.splitlines()]
    assert {e["error"]["code"] for e in errs} == {"batch_expired"} and len(errs) == 4
    assert mock.log("bp") == []  # nothing ran, nothing billed


async def test_faults_fail_a_batch_error_some_lines_and_cancel_stops_it(mock, oai):
    await control(mock, validate_ms=0, delay_ms=100, line_error_every=2)
    f = await oai.files.create(file=("in.jsonl", jsonl(4)), purpose="batch")
    done = await until_ended(oai, (await oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")).id)
    assert done.status == "completed" and done.request_counts.completed == 2 and done.request_counts.failed == 2
    errs = [json.loads(x) for x in (await oai.files.content(done.error_file_id)).text.splitlines()]
    assert [e["response"]["status_code"] for e in errs] == [500, 500]

    await control(mock, fault="fail")
    failed = await until_ended(oai, (await oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")).id)
    assert failed.status == "failed" and failed.errors.data[0].code == "invalid_request"

    await control(mock, validate_ms=0, delay_ms=60_000)
    b = await oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    await oai.batches.cancel(b.id)
    cancelled = await until_ended(oai, b.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):  # only the 24h window exists
        await oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]


async def test_anthropic_message_batches_run_to_ended_with_one_result_per_request(mock):
    await control(mock, validate_ms=0, delay_ms=150)
    reqs = [{"custom_id": f"r{i}", "params": {"model": "claude-x", "max_tokens": 32, "messages": [{"role": "user", "content": f"q{i}"}]}}
            for i in range(4)]
    async with anthropic.AsyncAnthropic(base_url=f"{mock.url}/bp", api_key="x", max_retries=0) as claude:
        b = await claude.messages.batches.create(requests=reqs)  # type: ignore[arg-type]
        assert b.processing_status == "in_progress" and b.request_counts.processing == 4
        for _ in range(200):
            b = await claude.messages.batches.retrieve(b.id)
            if b.processing_status == "ended":
                break
            await asyncio.sleep(0.05)
        assert b.processing_status == "ended" and b.request_counts.succeeded == 4 and b.results_url
        results = [r async for r in await claude.messages.batches.results(b.id)]
        assert sorted(r.custom_id for r in results) == [f"r{i}" for i in range(4)]
        assert all(r.result.type == "succeeded" and r.result.message.usage.output_tokens > 0 for r in results)
        assert [x.id for x in (await claude.messages.batches.list()).data] == [b.id]
        # an expiring batch ends with every request expired; cancel ends one with them canceled
        await control(mock, validate_ms=0, delay_ms=60_000, window_s=0.2)
        e = await claude.messages.batches.create(requests=reqs)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert (await claude.messages.batches.retrieve(e.id)).request_counts.expired == 4
        await control(mock, validate_ms=0, delay_ms=60_000)
        c = await claude.messages.batches.create(requests=reqs)  # type: ignore[arg-type]
        await claude.messages.batches.cancel(c.id)
        done = await claude.messages.batches.retrieve(c.id)
        assert done.processing_status == "ended" and done.request_counts.canceled == 4
