"""The job path end to end: client -> broker -> worker pool -> real HTTP provider -> result."""

from __future__ import annotations

import asyncio
import json
import uuid

import msgspec
import pytest
from nats.js.errors import NotFoundError

from panelboard.clients import Client, SyncClient
from panelboard.clients.errors import UnknownIntentError
from panelboard.config import load
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost, decode_dead, decode_result
from panelboard.schemas.errors import InvalidJob, UnknownIntent
from panelboard.schemas.job import Completed, Failed
from tests.conftest import TEST_CONFIG, run_cli

CFG = load(TEST_CONFIG)
HELLO = [{"role": "user", "content": "Extract the total from: invoice 17, total $42."}]


def expected_cost(model: str, usage) -> float:
    m = CFG.models[model]
    return (usage.prompt_tokens * m.input_per_m + usage.completion_tokens * m.output_per_m) / 1e6


async def test_openai_family_job_completes_with_usage_and_cost(client, mock):
    h = await client.submit(HELLO, intent="fast", team="t-openai")
    r = await h.result(timeout=30)

    assert isinstance(r, Completed), r
    assert r.provider == "oa" and r.tier == "fast" and r.model == "oa/small"
    assert r.response.text and r.response.usage.prompt_tokens > 0 and r.response.usage.completion_tokens > 0
    assert r.cost_usd == pytest.approx(expected_cost("oa/small", r.response.usage))
    served = [e for e in mock.log("oa") if e["request_id"] == f"{h.id}:0:0"]
    assert len(served) == 1 and served[0]["model"] == "small-1"  # the catalog's upstream id, not ours


async def test_anthropic_family_translates_system_prompt_stop_reason_and_usage(client, mock):
    req = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Plan a trip in ten steps."}]
    r = await (await client.submit(req, intent="claude")).result(timeout=30)
    assert isinstance(r, Completed) and r.provider == "an"
    assert r.response.choices[0].finish_reason == "stop"
    u = r.response.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens > 0
    # The mock counts system text too: it arrived as Anthropic's top-level `system`.
    assert u.prompt_tokens == -(-(len("You are terse.") + len("Plan a trip in ten steps.")) // 4)

    capped = await (await client.submit(req, intent="claude", max_tokens=3)).result(timeout=30)
    assert isinstance(capped, Completed)
    assert capped.response.choices[0].finish_reason == "length" and capped.response.usage.completion_tokens == 3


async def reject_of(js, sub, team: str, seq: int):
    """The Failed the broker publishes for a refused publish: on pb.rejects.<team>.<seq>."""
    while True:
        msg = await sub.next_msg(timeout=10)
        if msg.subject == wire.reject(team, seq):
            return decode_result(msg.data)


async def stored_copy(js, subject: str, within_s: float = 10.0):
    """The stored copy of a result: a core subscriber can see a message before the stream has
    written it (nats-server delivers to both at once), so a direct get right after may 404."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            return decode_result((await js.get_last_msg(wire.RESULTS_STREAM, subject, direct=True)).data)
        except NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_malformed_job_gets_a_failed_result_and_a_dead_letter(client):
    sub = await client.nc.subscribe(wire.rejects_of(client.team))
    ack = await client.js.publish(wire.jobs(client.team, "fast"), b'{"id": "x", "request": 12', headers={wire.HDR_MSG_ID: uuid.uuid4().hex})
    r = await reject_of(client.js, sub, client.team, ack.seq)
    assert isinstance(r, Failed) and isinstance(r.error, InvalidJob)
    assert "wire contract" in r.error.hint
    dead = decode_dead((await client.js.get_last_msg(wire.DEAD_STREAM, wire.dead("invalid"))).data)
    assert dead.raw == b'{"id": "x", "request": 12'  # nothing is lost: the payload is kept


@pytest.mark.parametrize("case", ["dotted-id", "200-char-id", "mismatched-msg-id", "legacy-subject"])
async def test_a_raw_publish_with_bad_ids_gets_exactly_one_reject_its_submitter_reads(client, case):
    # Given a raw nats-py publish the broker cannot address by its ids
    team, job_id, subject = client.team, "raw-" + uuid.uuid4().hex[:8], wire.jobs(client.team, "fast")
    headers: dict[str, str] = {}
    if case == "dotted-id":
        job_id += ".x"
    elif case == "200-char-id":
        job_id += "y" * (200 - len(job_id))
    elif case == "mismatched-msg-id":
        headers[wire.HDR_MSG_ID] = "someone-else.victim-job.1"
    else:  # the pre-team subject shape pb.jobs.<intent>: its only token is taken as the team
        subject, team = "pb.jobs.fast", "fast"
    sub = await client.nc.subscribe(wire.rejects_of(team))
    body = json.dumps({"id": job_id, "client": "bad.client.*", "team": client.team, "request": {"messages": HELLO}}).encode()

    # When it is published
    ack = await client.js.publish(subject, body, headers=headers or None)

    # Then exactly one Failed lands on pb.rejects.<team>.<seq>, readable by direct get too
    r = await reject_of(client.js, sub, team, ack.seq)
    assert isinstance(r, Failed) and isinstance(r.error, InvalidJob), r
    assert await stored_copy(client.js, wire.reject(team, ack.seq)) == r
    info = await client.js.stream_info(wire.RESULTS_STREAM, subjects_filter=f"pb.*.{team}.{ack.seq}")
    assert info.state.subjects == {wire.reject(team, ack.seq): 1}
    print(f"\n{case}: {r.error.message[:100]}")


async def test_the_sdk_refuses_a_bad_job_id_before_publishing(client):
    before = (await client.js.stream_info(wire.JOBS_STREAM)).state.last_seq
    for bad in ("order.42", "x" * 129, "a b", "*"):
        with pytest.raises(ValueError, match="not valid: use 1-128 characters"):
            await client.submit(HELLO, intent="fast", job_id=bad)
    assert (await client.js.stream_info(wire.JOBS_STREAM)).state.last_seq == before  # nothing was sent


async def test_a_second_process_with_the_same_job_id_gets_the_result_at_once_without_a_new_call(stack, mock):
    # Given a job that is done, submitted by one client
    job_id = "again-" + uuid.uuid4().hex[:12]
    async with Client(stack.nats_url) as first:
        r1 = await (await first.submit(HELLO, intent="fast", job_id=job_id)).result(timeout=30)
    assert isinstance(r1, Completed)

    # When a fresh client (a new client id, as a new process has) submits the same job id
    async with Client(stack.nats_url) as second:
        h = await second.submit(HELLO, intent="fast", job_id=job_id)
        r2 = await h.result(timeout=5)

    # Then it gets the stored result without sending the job again, and the provider saw one call
    assert h.seq is None and r2 == r1
    assert len([e for e in mock.log("oa") if e["request_id"].startswith(job_id + ":")]) == 1


async def test_unknown_intent_fails_with_a_hint_naming_the_known_intents(client):
    h = await client.submit(HELLO, intent="astrology")
    r = await h.result(timeout=10)
    assert isinstance(r, Failed) and isinstance(r.error, UnknownIntent)
    assert "fast" in r.error.hint and "claude" in r.error.hint
    with pytest.raises(UnknownIntentError, match="astrology"):
        await client.chat(HELLO, intent="astrology", timeout=10)


async def test_resubmitting_a_job_id_is_one_job_and_one_provider_call(stack, client, mock):
    job_id = "dup-" + uuid.uuid4().hex[:12]
    for _ in range(3):
        await client.submit(HELLO, intent="fast", job_id=job_id)
    async with Client(stack.nats_url) as again:  # a second process resubmits too
        await again.submit(HELLO, intent="fast", job_id=job_id)
    r = await client.result(job_id, timeout=30)
    assert isinstance(r, Completed)
    calls = [e for e in mock.log("oa") if e["request_id"].startswith(job_id + ":")]
    assert len(calls) == 1
    info = await client.js.stream_info(wire.RESULTS_STREAM, subjects_filter=wire.result(client.team, job_id))
    assert info.state.subjects == {wire.result(client.team, job_id): 1}


async def test_provider_cap_holds_across_two_worker_processes(stack, client, mock):
    stack.start_worker("capped-extra", providers=["capped"])
    try:
        handles = [await client.submit(HELLO, intent="capped") for _ in range(24)]
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    finally:
        stack.stop_proc("capped-extra")
    assert all(isinstance(r, Completed) for r in results)
    # Cap 4, 200 ms calls, 24 jobs: the server-side max_ack_pending is the only thing holding it.
    assert mock.stats()["max_in_flight"]["capped"] == CFG.providers["capped"].max_concurrency


async def test_results_outlive_the_client_that_asked(stack):
    async with Client(stack.nats_url) as first:
        h = await first.submit(HELLO, intent="fast")
    # The first client is gone before its result arrives; a restarted one (a new client id)
    # reads it from the stream.
    async with Client(stack.nats_url) as second:
        r = await second.result(h.id, timeout=30)
    assert isinstance(r, Completed) and r.job_id == h.id


async def test_every_provider_call_publishes_a_cost_record(client):
    team = "team-" + uuid.uuid4().hex[:8]
    r = await (await client.submit(HELLO, intent="fast", team=team, feature="invoices")).result(timeout=30)
    raw = await client.js.get_last_msg(wire.COSTS_STREAM, wire.cost(team))
    rec = decode_cost(raw.data)
    assert (rec.job_id, rec.team, rec.feature, rec.intent, rec.tier, rec.provider) == (r.job_id, team, "invoices", "fast", "fast", "oa")
    assert rec.cost_usd == pytest.approx(r.cost_usd) and rec.quantization == "fp8" and rec.outcome == "ok"
    assert rec.prompt_tokens == r.response.usage.prompt_tokens


def test_sync_client_chat(stack):
    with SyncClient(stack.nats_url) as c:
        resp = c.chat(HELLO, intent="fast", timeout=30)
    assert "oa" in resp.text


def test_cli_submit_prints_the_answer_and_json(stack):
    out = run_cli("submit", "--nats-url", stack.nats_url, "--config", str(TEST_CONFIG), "--intent", "fast", "hello there", "--json")
    assert out.returncode == 0, out.stderr
    r = msgspec.json.decode(out.stdout.encode(), type=Completed)
    assert r.provider == "oa"
    bad = run_cli("submit", "--nats-url", stack.nats_url, "--intent", "nope", "hello")
    assert bad.returncode == 1 and "hint:" in bad.stderr


def test_demo_runs_the_article_mix_on_the_embedded_default(tmp_path):
    out = run_cli("demo", "--jobs", "40", "--json", cwd=str(tmp_path), timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads(out.stdout)
    assert s["submitted"] == s["completed"] == 40 and s["failed"] == 0
    assert set(s["by_tier"]) <= {"cheap-fast", "workhorse", "frontier"} and "cheap-fast" in s["by_tier"]
    assert 0 < s["cost_usd"] < s["all_frontier_cost_usd"]
