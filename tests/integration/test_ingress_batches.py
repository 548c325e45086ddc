"""Files and Batches through the official SDKs: openai files.create / batches.create / retrieve /
list / cancel / files.content, anthropic messages.batches; the objects validate with the SDKs'
own types; a 50 MB upload keeps the server's RSS flat."""

from __future__ import annotations

import io
import json
import time
import uuid

import anthropic
import openai
import pytest
from openai.types import Batch, FileObject

MSG = [{"role": "user", "content": "Extract the date from: due 2026-12-01"}]


@pytest.fixture(scope="module")
def ingress(stack) -> str:
    return stack.ingress_url or stack.start_ingress()


@pytest.fixture
def oai(ingress):
    with openai.OpenAI(base_url=ingress + "/v1", api_key="x", max_retries=0) as c:
        yield c


def lines(n: int, tag: str) -> bytes:
    return b"".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "fast", "messages": [{"role": "user", "content": f"Extract {i}"}], "max_tokens": 8}}).encode() + b"\n"
                    for i in range(n))


def wait_for(fn, bound_s: float = 60.0):
    end = time.monotonic() + bound_s
    while True:
        got = fn()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.2)


def test_a_batch_runs_from_upload_to_output_file(oai):
    tag = uuid.uuid4().hex[:6]
    f = oai.files.create(file=("requests.jsonl", io.BytesIO(lines(12, tag))), purpose="batch")
    assert isinstance(f, FileObject) and f.bytes > 0 and f.purpose == "batch"
    assert oai.files.retrieve(f.id).id == f.id
    b = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                           extra_headers={"x-pb-intent": "fast"}, metadata={"run": tag})
    assert isinstance(b, Batch) and b.input_file_id == f.id and b.metadata == {"run": tag}
    done = wait_for(lambda: (r := oai.batches.retrieve(b.id)).status == "completed" and r)
    assert done, f"batch still {oai.batches.retrieve(b.id).status}"
    Batch.model_validate(done.model_dump())
    assert done.request_counts.total == 12 and done.request_counts.completed == 12 and done.output_file_id
    assert done.error_file_id is None
    out = [json.loads(ln) for ln in oai.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"{tag}-{i}" for i in range(12))
    from openai.types.chat import ChatCompletion

    for o in out:
        assert o["response"]["status_code"] == 200
        ChatCompletion.model_validate(o["response"]["body"])
    assert b.id in [x.id for x in oai.batches.list(limit=100)]
    assert oai.files.delete(f.id).deleted and pytest.raises(openai.NotFoundError, oai.files.retrieve, f.id)


def test_batches_list_pages_newest_first(oai):
    f = oai.files.create(file=("r.jsonl", io.BytesIO(lines(1, uuid.uuid4().hex[:6]))), purpose="batch")
    ids = [oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_headers={"x-pb-intent": "fast"}).id for _ in range(3)]
    page = oai.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    nxt = oai.batches.list(limit=2, after=page.data[-1].id)
    assert nxt.data[0].id == ids[0]


def test_cancel_stops_a_batch_whose_jobs_wait(oai):
    # 40 requests on the 4-slot, 200 ms pool: most are still queued when cancel lands
    body = b"".join(json.dumps({"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"messages": MSG, "max_tokens": 8}}).encode() + b"\n" for i in range(40))
    f = oai.files.create(file=("slow.jsonl", io.BytesIO(body)), purpose="batch")
    b = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                           extra_headers={"x-pb-intent": "capped"})
    wait_for(lambda: oai.batches.retrieve(b.id).request_counts.total == 40)
    c = oai.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled")
    end = wait_for(lambda: (r := oai.batches.retrieve(b.id)).status == "cancelled" and r)
    assert end and end.request_counts.failed > 0 and end.request_counts.completed + end.request_counts.failed == 40
    errors = [json.loads(ln) for ln in oai.files.content(end.error_file_id).text.splitlines()]
    assert any(e["error"] and e["error"]["code"] == "batch_cancelled" for e in errors)


def test_anthropic_message_batch_create_retrieve_results(ingress):
    with anthropic.Anthropic(base_url=ingress, api_key="x", max_retries=0) as c:
        mb = c.messages.batches.create(requests=[{"custom_id": f"a-{i}", "params": {"model": "claude", "max_tokens": 8, "messages": MSG}}
                                                 for i in range(3)], extra_headers={"x-pb-intent": "fast"})
        assert mb.type == "message_batch"
        ended = wait_for(lambda: (r := c.messages.batches.retrieve(mb.id)).processing_status == "ended" and r)
        assert ended and ended.request_counts.succeeded == 3
        results = list(c.messages.batches.results(mb.id))
    assert sorted(r.custom_id for r in results) == ["a-0", "a-1", "a-2"]
    assert all(r.result.type == "succeeded" and r.result.message.content[0].text.startswith("mock reply") for r in results)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def test_a_50_mb_upload_keeps_the_servers_rss_flat(oai, stack, tmp_path):
    pid = stack.procs["ingress"].pid
    src = tmp_path / "big.jsonl"
    with open(src, "wb") as f:
        chunk = lines(1000, "big")
        while f.tell() < 50 << 20:
            f.write(chunk)
    before = rss_kb(pid)
    with open(src, "rb") as fh:
        up = oai.files.create(file=("big.jsonl", fh), purpose="batch")
    grown_mb = (rss_kb(pid) - before) / 1024
    assert up.bytes == src.stat().st_size
    assert grown_mb < 16, f"the ingress grew by {grown_mb:.1f} MB while taking a 50 MB upload"
    oai.files.delete(up.id)
