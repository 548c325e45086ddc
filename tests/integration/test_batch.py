"""Batch files: both formats run, malformed lines are reported by line number, a submitter
killed halfway resumes without duplicates, results come out in OpenAI's batch output format,
and cancel takes queued jobs out before any provider sees them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from panelboard.clients import batch
from panelboard.clients.batch import openai_line
from panelboard.schemas import batch as B
from panelboard.schemas.embeddings import EmbeddingsRequest
from panelboard.schemas import wire
from panelboard.schemas.errors import Cancelled, DeadlineExceeded, UnknownIntent
from panelboard.schemas.job import ID_RE, Failed, Result
from tests.conftest import TEST_CONFIG, run_cli

OPENAI_KEYS = {"id", "custom_id", "response", "error"}


def openai_line_of(cid: str, text: str, **body) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 16, **body}})


def anthropic_line_of(cid: str, text: str) -> str:
    return json.dumps({"custom_id": cid, "params": {"model": "claude-x", "max_tokens": 16, "system": [{"type": "text", "text": "Be terse."}],
                                                    "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}})


def bcli(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli("batch", *args, "--nats-url", stack.nats_url, "--config", str(TEST_CONFIG), timeout=timeout)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


async def result_counts(js, batch_id: str, team: str = "default") -> tuple[int, int]:
    """(messages, distinct job subjects) in the batch's results: equal when nothing ran twice."""
    subjects = [subject for subject, _ in await read_results(js, batch_id, team)]
    return len(subjects), len(set(subjects))


# -- the line formats, without a stack ----------------------------------------------------


def test_an_embeddings_line_becomes_an_embeddings_request():
    cid, req, _ = B.parse_line(b'{"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": ["a", "b"], "dimensions": 4}}')
    assert cid == "e1" and isinstance(req, EmbeddingsRequest) and (req.input, req.dimensions) == (["a", "b"], 4)


def test_both_line_formats_become_the_same_chat_request():
    cid, req, intent = B.parse_line(openai_line_of("o1", "hi", max_tokens=None, max_completion_tokens=7, temperature=0.2).encode())
    assert (cid, intent, req.max_tokens, req.temperature, req.messages[0].content) == ("o1", None, 7, 0.2, "hi")
    raw = json.dumps({"custom_id": "a1", "intent": "claude", "params": {
        "max_tokens": 9, "system": "Be terse.", "stop_sequences": ["\n\n"], "metadata": {"user_id": "u7"},
        "messages": [{"role": "user", "content": "Plan"}, {"role": "assistant", "content": [{"type": "text", "text": "Ok"}]}]}})
    cid, req, intent = B.parse_line(raw.encode())
    assert (cid, intent, req.max_tokens, req.stop, req.user) == ("a1", "claude", 9, ["\n\n"], "u7")
    assert [(m.role, m.text()) for m in req.messages] == [("system", "Be terse."), ("user", "Plan"), ("assistant", "Ok")]


@pytest.mark.parametrize("line, says", [
    ('{"custom_id": "x", "body": {"messages": [{"role": "user", "content": "hi"}]', "not JSON"),
    ('{"body": {"messages": [{"role": "user", "content": "hi"}]}}', "custom_id"),
    ('{"custom_id": "x", "url": "/v1/completions", "body": {"messages": [{"role": "user", "content": "hi"}]}}', "/v1/completions"),
    ('{"custom_id": "x", "url": "/v1/embeddings", "body": {"messages": [{"role": "user", "content": "hi"}]}}', "input"),
    ('{"custom_id": "x", "method": "GET", "body": {"messages": [{"role": "user", "content": "hi"}]}}', "POST"),
    ('{"custom_id": "x", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}}', "image"),
    ('{"custom_id": "x"}', "either `body`"),
    ('{"custom_id": "x", "body": {"messages": []}}', "no messages"),
    ('{"custom_id": "x", "body": {"messages": [{"role": "wizard", "content": "hi"}]}}', "role"),
])
def test_malformed_lines_say_what_is_wrong(line, says):
    with pytest.raises(B.LineError, match=says):
        B.parse_line(line.encode())


def test_job_ids_derive_from_batch_and_custom_id():
    a = B.job_id("b1", "req-1")
    assert a == B.job_id("b1", "req-1") and ID_RE.match(a)
    assert a != B.job_id("b2", "req-1") and a != B.job_id("b1", "req-2")
    assert ID_RE.match(B.client_id("x" * B.MAX_BATCH_ID))


def test_failures_are_written_as_openai_batch_error_lines():
    meta = {"batch_id": "b", "custom_id": "c"}
    ok, line = openai_line(Failed(job_id="j", error=UnknownIntent(message="m", hint="h"), metadata=meta), "b")
    rec = json.loads(line)
    assert not ok and rec["response"]["status_code"] == 400 and rec["response"]["body"]["error"]["code"] == "unknown_intent"
    for err, code in ((Cancelled(message="m", hint="h"), "batch_cancelled"), (DeadlineExceeded(message="m", hint="h"), "batch_expired")):
        rec = json.loads(openai_line(Failed(job_id="j", error=err, metadata=meta), "b")[1])
        assert rec["response"] is None and rec["error"]["code"] == code and rec["custom_id"] == "c"


# -- against the stack --------------------------------------------------------------------


async def test_openai_and_anthropic_files_run_and_bad_lines_are_reported_by_number(stack, mock, client, tmp_path):
    # Given a file mixing both formats and an embeddings line, a line with an unknown intent, and malformed lines
    lines = [openai_line_of(f"oa-{i}", f"Extract the total from invoice {i}") for i in range(6)]
    lines += [anthropic_line_of(f"an-{i}", f"Summarise note {i}") for i in range(4)]
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x", "messages": []}}))
    lines.append("")  # a blank line is skipped, not an error
    lines.append(json.dumps({"custom_id": "lost", "intent": "astrology", "body": {"messages": [{"role": "user", "content": "?"}]}}))
    lines.append(json.dumps({"custom_id": "img", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}}))
    src = tmp_path / "requests.jsonl"
    src.write_text("\n".join(lines) + "\n")
    batch_id = "mix-" + uuid.uuid4().hex[:8]

    # When it is submitted and waited for
    out = bcli(stack, "submit", str(src), "--intent", "fast", "--batch-id", batch_id, "--wait", "--json")

    # Then the bad lines are reported by line number, and the good ones ran
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["submit"]["requests"] == 12 and report["submit"]["malformed"] == 2
    bad = jsonl(tmp_path / "requests.errors.jsonl")
    assert [(b["line"], b["custom_id"]) for b in bad] == [(4, None), (15, "img")]
    assert "image" in bad[1]["error"]
    st = report["batch"]
    assert st["status"] == "completed" and st["request_counts"] == {"total": 12, "completed": 11, "failed": 1}
    from openai.types import Batch

    Batch.model_validate(st)  # `batch status --json` is OpenAI's Batch object

    # And the results file is OpenAI's batch output, keyed by custom_id; the failure has its own file
    res = bcli(stack, "results", batch_id, "-o", str(tmp_path / "out.jsonl"))
    assert res.returncode == 0, res.stderr
    done, failed = jsonl(tmp_path / "out.jsonl"), jsonl(tmp_path / "out.errors.jsonl")
    assert sorted(r["custom_id"] for r in done) == sorted([f"oa-{i}" for i in range(6)] + [f"an-{i}" for i in range(4)] + ["emb"])
    for r in done:
        assert set(r) == OPENAI_KEYS and r["error"] is None and r["id"] == f"batch_req_{r['response']['request_id']}"
        assert r["response"]["status_code"] == 200 and r["response"]["request_id"] == B.job_id(batch_id, r["custom_id"])
        body = r["response"]["body"]
        if r["custom_id"] == "emb":  # an embeddings line runs as an embeddings job
            assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 8 and body["usage"]["prompt_tokens"] > 0
            continue
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] and body["usage"]["total_tokens"] > 0
    assert len(failed) == 1 and set(failed[0]) == OPENAI_KEYS and failed[0]["custom_id"] == "lost"
    assert failed[0]["response"]["body"]["error"]["code"] == "unknown_intent"
    # One provider call per request; the Anthropic lines kept their system prompt (the mock counts it)
    calls = Counter(e["request_id"].split(":")[0] for e in mock.log("oa"))
    assert all(calls[B.job_id(batch_id, r["custom_id"])] == 1 for r in done)
    an0 = next(r for r in done if r["custom_id"] == "an-0")
    assert an0["response"]["body"]["usage"]["prompt_tokens"] == -(-(len("Be terse.") + len("Summarise note 0")) // 4)


async def test_a_submitter_killed_halfway_resumes_with_one_result_per_custom_id(stack, mock, client, tmp_path):
    # Given a 1,000-line file being sent slowly (2 publishes in flight)
    n = 1000
    src = tmp_path / "big.jsonl"
    src.write_text("".join(openai_line_of(f"req-{i}", f"Classify ticket {i}") + "\n" for i in range(n)))
    batch_id = "kill-" + uuid.uuid4().hex[:8]
    args = ["batch", "submit", str(src), "--intent", "fast", "--batch-id", batch_id,
            "--nats-url", stack.nats_url, "--config", str(TEST_CONFIG)]
    exe = shutil.which("panelboard", path=str(Path(sys.executable).parent)) or "panelboard"
    proc = subprocess.Popen([exe, *args, "--window", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # When it is SIGKILLed once it has checkpointed a quarter of the file
        deadline = time.monotonic() + 60
        while ((info := await batch.read_info(client.js, batch_id)) is None or info.through_line < n // 4):
            assert proc.poll() is None, f"the submitter ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        proc.kill()
    finally:
        proc.wait()
    sent_before = await batch.count_jobs(client.js, batch_id)
    assert sent_before < n

    # And the same file is submitted again
    out = run_cli(*args, "--wait", "--json", timeout=180)

    # Then it resumes, and every custom_id ends with exactly one result and one provider call
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["submit"]["resumed"] and rep["batch"]["status"] == "completed"
    assert rep["batch"]["request_counts"] == {"total": n, "completed": n, "failed": 0}
    assert await result_counts(client.js, batch_id) == (n, n)
    res = bcli(stack, "results", batch_id, "-o", str(tmp_path / "out.jsonl"))
    assert res.returncode == 0, res.stderr
    per_id = Counter(r["custom_id"] for r in jsonl(tmp_path / "out.jsonl"))
    assert per_id == Counter({f"req-{i}": 1 for i in range(n)})
    calls = Counter(e["request_id"] for e in mock.log("oa") if e["request_id"].split(":")[0] in {B.job_id(batch_id, c) for c in per_id})
    assert len(calls) == n and set(calls.values()) == {1} and all(r.endswith(":0:0") for r in calls)
    print(f"\nkilled after {sent_before}/{n} jobs; resume: {rep['submit']['skipped']} lines skipped, {rep['submit']['sent']} sent "
          f"({rep['submit']['duplicates']} dropped as duplicates), {rep['submit']['already_done']} already done")


async def test_cancel_takes_queued_jobs_out_and_they_are_never_called(stack, mock, client, tmp_path):
    # Given a 40-job batch on a provider with 4 slots and 1.7 s calls (about 17 s of work,
    # so the queue outlasts a CLI start-up on a busy machine)
    n = 40
    src = tmp_path / "slow.jsonl"
    src.write_text("".join(anthropic_line_of(f"s-{i}", f"Plan step {i}") + "\n" for i in range(n)))
    batch_id = "cancel-" + uuid.uuid4().hex[:8]
    mock.control(provider="capped", latency_ms=1500)
    try:
        out = bcli(stack, "submit", str(src), "--intent", "capped", "--batch-id", batch_id)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 30
        while await batch.count_results(client.js, batch_id) < 1:  # the first calls are done
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

        # When it is cancelled
        out = bcli(stack, "cancel", batch_id, "--json")
    finally:
        mock.control(provider="capped", latency_ms=None)

    # Then the queued jobs get a `cancelled` result at once, and the started ones finish
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)["cancel"]
    assert rep["cancelled"] >= n // 2
    waited = bcli(stack, "wait", batch_id, "--json", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    st = json.loads(waited.stdout)
    assert st["status"] == "cancelled" and st["request_counts"]["total"] == n
    assert st["request_counts"]["completed"] + st["request_counts"]["failed"] == n
    assert st["panelboard"]["cancelled"] == rep["cancelled"] == st["request_counts"]["failed"]
    assert await result_counts(client.js, batch_id) == (n, n)  # exactly one result per job
    # And no cancelled job ever reached the provider; every completed one, once
    results = {}
    for subject, data in await read_results(client.js, batch_id):
        r = msgspec.json.decode(data, type=Result)
        results[r.metadata["custom_id"]] = r
    calls = Counter(e["request_id"].split(":")[0] for e in mock.log("capped"))
    for cid, r in results.items():
        if isinstance(r, Failed):
            assert isinstance(r.error, Cancelled) and calls[r.job_id] == 0, cid
        else:
            assert calls[r.job_id] == 1, cid
    # And a cancelled batch is not sent again
    again = bcli(stack, "submit", str(src), "--intent", "capped", "--batch-id", batch_id)
    assert again.returncode == 2 and "cancelled" in again.stderr
    print(f"\ncancel: {rep['cancelled']} cancelled before any call, {st['request_counts']['completed']} ran (already handed to a worker)")


async def read_results(js, batch_id: str, team: str = "default") -> list[tuple[str, bytes]]:
    """Every result message of the batch's jobs, read from the team's results (not the index)."""
    from tests.support.invariants import read_all

    out = []
    for subject, data in await read_all(js, wire.RESULTS_STREAM, wire.results_of(team)):
        r = msgspec.json.decode(data, type=Result)
        if B.batch_of(r.job_id, r.metadata) == batch_id:
            out.append((subject, data))
    return out
