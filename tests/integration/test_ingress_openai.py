"""The HTTP ingress through the official openai SDK (sync and async): `panelboard serve` over
real HTTP, in front of the session's real nats-server, broker, worker and mock provider."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from panelboard.schemas.job import Completed

MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


@pytest.fixture(scope="module")
def ingress(stack) -> str:
    url = stack.ingress_url or stack.start_ingress()
    return url


@pytest.fixture
def oai(ingress):
    with openai.OpenAI(base_url=ingress + "/v1", api_key="unused-in-open-mode", max_retries=0) as c:
        yield c


@pytest.fixture
async def aoai(ingress):
    async with openai.AsyncOpenAI(base_url=ingress + "/v1", api_key="unused-in-open-mode", max_retries=0) as c:
        yield c


def calls_for(mock, job_id: str) -> list[dict]:
    return [e for e in mock.log() if e["request_id"].split(":")[0] == job_id]


def test_sync_chat_completion_rides_the_queue_to_the_intents_tier(oai, mock):
    # When an existing OpenAI app sends `model: fast` (an intent) with a job id
    job_id = "http-" + uuid.uuid4().hex[:10]
    raw = oai.chat.completions.with_raw_response.create(model="fast", messages=MSG, max_tokens=8,
                                                        extra_headers={"x-pb-job-id": job_id, "x-pb-feature": "invoices"})
    r = raw.parse()
    # Then it gets a ChatCompletion the SDK parsed, served by the fast tier's model through the worker
    assert isinstance(r, ChatCompletion) and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.startswith("mock reply from oa/small-1")
    assert r.created > time.time() - 120 and r.usage.completion_tokens <= 8
    assert raw.headers["x-pb-job-id"] == job_id and raw.headers["x-pb-tier"] == "fast"
    # And the provider saw exactly one call for that job
    assert len(calls_for(mock, job_id)) == 1


def test_same_job_id_twice_is_one_call_and_the_same_answer(oai, mock):
    job_id = "idem-" + uuid.uuid4().hex[:10]
    h = {"x-pb-job-id": job_id}
    first = oai.chat.completions.create(model="fast", messages=MSG, max_tokens=8, extra_headers=h)
    again = oai.chat.completions.create(model="fast", messages=MSG, max_tokens=8, extra_headers=h)
    assert first.id == again.id and first.choices[0].message.content == again.choices[0].message.content
    assert len(calls_for(mock, job_id)) == 1


def test_model_pins_a_catalog_model_and_x_pb_intent_overrides_it(oai):
    # a catalog model id pins that model (the `claude` tier's Anthropic model, asked by its id)
    pinned = oai.chat.completions.with_raw_response.create(model="an/claude", messages=MSG, max_tokens=8)
    assert pinned.headers["x-pb-model"] == "an/claude" and pinned.parse().model == "claude-test"
    # x-pb-intent wins over the model name
    hdr = oai.chat.completions.with_raw_response.create(model="panelboard/auto", messages=MSG, max_tokens=8,
                                                        extra_headers={"x-pb-intent": "claude"})
    assert hdr.headers["x-pb-tier"] == "claude"
    # a model the gateway does not serve is the SDK's NotFoundError, naming what is served
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.code == "model_not_found" and "panelboard/auto" in e.value.message


def test_models_lists_auto_intents_tiers_and_catalog_models(oai):
    ids = [m.id for m in oai.models.list()]
    assert all(isinstance(m, Model) for m in oai.models.list())
    assert ids[0] == "panelboard/auto" and {"fast", "claude", "capped", "oa/small", "an/claude"} <= set(ids)


def test_bad_requests_are_bad_request_errors_before_anything_is_queued(oai, ingress):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="fast", messages=MSG, temperature=7)  # the broker's bounds: invalid_job
    assert e.value.code == "invalid_job" and "temperature" in e.value.message
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="fast", messages=MSG, extra_headers={"x-pb-priority": "urgent"})
    r = httpx.post(ingress + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(ingress + "/v1/chat/completions", json={"model": "fast", "messages": "hi"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(ingress):
    # 4 MiB against the 512 KiB default limit: refused on its Content-Length with 413
    big = {"model": "fast", "messages": [{"role": "user", "content": "x" * (4 << 20)}]}
    r = httpx.post(ingress + "/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    # and a chunked body (no Content-Length) is cut once what arrived passes the limit
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b"x" * (64 << 10)

    r = httpx.post(ingress + "/v1/chat/completions", content=chunks(), timeout=30)
    assert r.status_code == 413


async def test_async_client_many_at_once(aoai):
    rs = await asyncio.gather(*(aoai.chat.completions.create(model="fast", messages=[{"role": "user", "content": f"Extract {i}"}], max_tokens=8)
                                for i in range(20)))
    assert len({r.id for r in rs}) == 20 and all(r.choices[0].finish_reason in ("stop", "length") for r in rs)


async def test_streaming_a_job_id_already_answered_streams_its_stored_result(aoai, ingress):
    job_id = "again-" + uuid.uuid4().hex[:10]
    h = {"x-pb-job-id": job_id}
    first = await aoai.chat.completions.create(model="fast", messages=MSG, max_tokens=8, extra_headers=h)
    stream = await aoai.chat.completions.create(model="fast", messages=MSG, max_tokens=8, stream=True,
                                                stream_options={"include_usage": True}, extra_headers=h)
    chunks = [c async for c in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    async with httpx.AsyncClient() as http:  # the wire itself: SSE lines ending with [DONE]
        r = await http.post(ingress + "/v1/chat/completions", json={"model": "fast", "messages": MSG, "max_tokens": 4, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream") and r.text.rstrip().endswith("data: [DONE]")


async def test_a_real_stream_relays_the_workers_chunks_and_adds_up_to_the_result(aoai, stack):
    """The worker streams the mock's SSE onto the job's chunk subject (issue 12); the ingress
    relays them as they come: many chunks, whose text is the job's terminal Result."""
    from panelboard.clients import Client

    job_id = "sse-" + uuid.uuid4().hex[:10]
    stream = await aoai.chat.completions.create(model="fast", messages=MSG, max_tokens=32, stream=True,
                                                stream_options={"include_usage": True}, extra_headers={"x-pb-job-id": job_id})
    got = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert sum(1 for c in got if c.choices and c.choices[0].delta.content) > 2  # streamed, not one piece
    async with Client(stack.nats_url) as c:
        r = await c.result(job_id, timeout=30)
    assert isinstance(r, Completed) and r.response.choices[0].message.content == text
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == r.response.usage.completion_tokens


def test_embeddings_ride_the_queue_and_parse_with_the_sdk(oai, mock):
    job_id = "emb-" + uuid.uuid4().hex[:8]
    raw = oai.embeddings.with_raw_response.create(model="fast", input=["hello", "world"], dimensions=8,
                                                  extra_headers={"x-pb-job-id": job_id})
    r = raw.parse()  # openai.types.CreateEmbeddingResponse
    assert [d.index for d in r.data] == [0, 1] and all(len(d.embedding) == 8 for d in r.data)
    assert r.usage.prompt_tokens > 0 and raw.headers["x-pb-job-id"] == job_id
    assert len(calls_for(mock, job_id)) == 1  # one provider call, through the worker pool
    with pytest.raises(openai.BadRequestError):  # a family that cannot embed says so
        oai.embeddings.create(model="claude", input="x")


def test_health_ready_and_metrics(ingress):
    assert httpx.get(ingress + "/healthz").json() == {"ok": True}
    assert httpx.get(ingress + "/readyz").json() == {"ready": True}
    text = httpx.get(ingress + "/metrics").text
    assert 'route="/v1/chat/completions",status="200"' in text


def test_access_log_has_job_ids_and_never_the_key(oai, stack, ingress):
    key = "pb_abcde_" + "k" * 32
    job_id = "log-" + uuid.uuid4().hex[:8]
    with openai.OpenAI(base_url=ingress + "/v1", api_key=key, max_retries=0) as c:
        c.chat.completions.create(model="fast", messages=MSG, max_tokens=4, extra_headers={"x-pb-job-id": job_id})
    deadline = time.monotonic() + 10
    while not stack.logged("ingress", job_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = (stack.home / "logs" / "ingress.log").read_text()
    line = next(ln for ln in log.splitlines() if job_id in ln)
    assert '"key_prefix": "pb_abcde"' in line and key not in log and "k" * 32 not in log


def test_completed_result_is_the_queue_result(oai, client_result):
    job_id = "same-" + uuid.uuid4().hex[:8]
    r = oai.chat.completions.create(model="fast", messages=MSG, max_tokens=8, extra_headers={"x-pb-job-id": job_id})
    res = client_result(job_id)
    assert isinstance(res, Completed) and res.response.id == r.id


@pytest.fixture
def client_result(stack):
    from panelboard.clients import SyncClient

    def get(job_id: str):
        with SyncClient(stack.nats_url) as c:
            return c.result(job_id, timeout=30)

    return get


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_a_tool_call_turn_and_its_answer_round_trip(oai):
    msgs = [{"role": "user", "content": "What is the weather in Oslo?"}]
    r = oai.chat.completions.create(model="fast", messages=msgs, tools=TOOLS, tool_choice="auto", max_tokens=32)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    msgs += [r.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny, 12 C"}]
    final = oai.chat.completions.create(model="fast", messages=msgs, tools=TOOLS, max_tokens=32)
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")


def test_workers_share_one_port(stack):
    main_url = stack.ingress_url
    try:
        url = stack.start_ingress("ingress-pair", 2)
        for _ in range(40):  # a new connection each: the kernel spreads them over the processes
            r = httpx.get(url + "/v1/models", headers={"connection": "close"})
            assert r.status_code == 200
        log = (stack.home / "logs" / "ingress-pair.log").read_text().splitlines()
        pids = {json.loads(ln)["pid"] for ln in log if '"path": "/v1/models"' in ln}
        assert len(pids) == 2
    finally:
        stack.stop_proc("ingress-pair")
        stack.ingress_url = main_url
