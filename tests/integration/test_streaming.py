"""Token streaming end to end: client.stream -> broker -> pool -> the mock's SSE stream ->
chunks on pb.chunks.<team>.<job> -> the terminal Result and its cost record. Every chunk is
judged by the official openai SDK's ChatCompletionChunk, every result by ChatCompletion."""

from __future__ import annotations

import asyncio
import json

import msgspec
import nats
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from panelboard.clients import Client, SyncClient
from panelboard.clients.errors import JobFailed
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost
from panelboard.schemas.job import Completed, Failed

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
STORY = [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]


async def cost_of(client: Client, team: str, job_id: str, bound_s: float = 30.0):
    """The cost records of one job, read from PB_COSTS once there are any."""
    js = client.js
    deadline = asyncio.get_running_loop().time() + bound_s
    while True:
        sub = await js.subscribe(wire.cost(team), ordered_consumer=True, deliver_policy="all")
        recs = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1)
                if (rec := decode_cost(msg.data)).job_id == job_id:
                    recs.append(rec)
        except nats.errors.TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        if recs or asyncio.get_running_loop().time() > deadline:
            return recs
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("intent, provider", [("fast", "oa"), ("claude", "an")])
async def test_a_stream_parses_as_chunks_that_assemble_to_the_result(stack, mock, intent, provider):
    mock.control(provider=provider, stream_chunks=6)
    team = f"st-{provider}"
    async with Client(stack.nats_url, team=team) as client:
        raw = await client.nc.subscribe(wire.chunks(team, "probe-unused"))  # a second reader proves nothing leaks across jobs
        s = client.stream(STORY, intent=intent, stream_options={"include_usage": True})
        chunks = [ChatCompletionChunk.model_validate(msgspec.to_builtins(c)) async for c in s]
        await raw.unsubscribe()
        assert isinstance(s.result, Completed) and s.result.chunks == len(chunks)
        final = ChatCompletion.model_validate(msgspec.to_builtins(s.result.response))
        texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(texts) == 6 and "".join(texts) == final.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.total_tokens == final.usage.total_tokens > 0
        [rec] = await cost_of(client, team, s.id)
        assert rec.outcome == "ok" and rec.ttft_ms is not None and 0 < rec.ttft_ms <= rec.latency_ms
        assert (rec.prompt_tokens, rec.completion_tokens) == (final.usage.prompt_tokens, final.usage.completion_tokens)
        assert s.result.ttft_ms == rec.ttft_ms


@pytest.mark.parametrize("intent", ["fast", "claude"])
async def test_tool_call_deltas_stream_and_assemble(client, intent):
    s = client.stream("Oslo", intent=intent, tools=[WEATHER])
    chunks = [ChatCompletionChunk.model_validate(msgspec.to_builtins(c)) async for c in s]
    call = ChatCompletion.model_validate(msgspec.to_builtins(s.result.response)).choices[0].message.tool_calls[0]
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert pieces[0].id == call.id and pieces[0].function.name == "get_weather"
    assert "".join(p.function.arguments or "" for p in pieces) == call.function.arguments and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_stream_cut_after_3_chunks_ends_failed_with_a_cost_record(stack, mock):
    team = "st-cut"
    mock.control(provider="oa", fault="cut", after_chunks=3)
    try:
        async with Client(stack.nats_url, team=team) as client:
            s = client.stream(STORY, intent="fast")
            got = []
            with pytest.raises(JobFailed):
                async for c in s:
                    got.append(c)
            assert len(got) == 3
            assert isinstance(s.result, Failed) and "broke after 3 chunk" in s.result.error.message
            [a] = s.result.attempts
            assert a.decision == "fail"  # never retried: the client holds part of an answer
            [rec] = await cost_of(client, team, s.id)
            assert rec.outcome == "StreamBroken" and rec.usage_unknown and rec.ttft_ms is not None
    finally:
        mock.control(provider="oa", fault=None)


async def test_an_anthropic_sse_error_after_chunks_keeps_the_usage_it_knew(stack, mock):
    team = "st-err"
    mock.control(provider="an", fault="sse_error", after_chunks=3)
    try:
        async with Client(stack.nats_url, team=team) as client:
            s = client.stream(STORY, intent="claude")
            with pytest.raises(JobFailed):
                async for _ in s:
                    pass
            assert "error event" in s.result.error.message
            [rec] = await cost_of(client, team, s.id)
            assert rec.outcome == "StreamBroken" and not rec.usage_unknown and rec.prompt_tokens > 0  # from message_start
    finally:
        mock.control(provider="an", fault=None)


async def test_a_429_before_the_first_chunk_moves_the_stream_to_the_next_hop(client, mock):
    s = client.stream(STORY, intent="limited-first")
    chunks = [c async for c in s]
    assert isinstance(s.result, Completed) and s.result.provider == "an" and len(chunks) == s.result.chunks > 1
    assert [(a.provider, a.status, a.decision) for a in s.result.attempts] == [("st429", 429, "forward"), ("an", 200, "succeed")]


async def test_a_stream_waits_its_turn_when_the_pool_is_at_its_cap_then_flows(client, mock):
    before = mock.stats()["max_in_flight"].get("capped", 0)
    busy = [await client.submit(f"busy {i}", intent="capped") for i in range(12)]
    s = client.stream(STORY, intent="capped")
    chunks = [c async for c in s]
    assert isinstance(s.result, Completed) and len(chunks) == s.result.chunks > 1
    assert s.result.queue_ms > 100  # it waited for a slot
    assert all([isinstance(await h.result(timeout=60), Completed) for h in busy])
    assert max(before, 4) >= mock.stats()["max_in_flight"]["capped"]


def test_the_sync_twin_streams(stack):
    with SyncClient(stack.nats_url) as c:
        text = "".join(ch.choices[0].delta.content or "" for ch in c.stream(STORY, intent="fast") if ch.choices)
        assert text == c.chat(STORY, intent="fast").text
