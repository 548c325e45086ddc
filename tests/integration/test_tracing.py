"""One job through a 2-hop fallback is one trace: the client's submit span (in-memory exporter,
in the submitting process), the broker's admission, every dispatch hop and provider call in the
worker, and the result, linked parent to child across three processes by the traceparent
header the NATS messages carry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from panelboard.stack import Stack
from panelboard.transport.tracing import FILE_ENV

CONFIG = Path(__file__).resolve().parents[1] / "data" / "metrics.yaml"

SUBMITTER = textwrap.dedent("""
    import asyncio, json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from panelboard.clients import Client

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)

    async def main():
        async with Client(sys.argv[1]) as c:
            r = await (await c.submit([{"role": "user", "content": "extract it"}], intent="chain")).result(timeout=90)
        spans = [{"name": s.name, "trace_id": f"0x{s.context.trace_id:032x}", "span_id": f"0x{s.context.span_id:016x}",
                  "parent_id": f"0x{s.parent.span_id:016x}" if s.parent else None} for s in memory.get_finished_spans()]
        print(json.dumps({"type": r.__struct_config__.tag, "provider": getattr(r, "provider", None), "spans": spans}))

    asyncio.run(main())
""")


def test_a_job_through_a_two_hop_fallback_is_one_trace_across_processes(tmp_path):
    traces = tmp_path / "spans.jsonl"
    with Stack(tmp_path / "stack", config=CONFIG, mock_args=["--latency-ms", "5"], env={FILE_ENV: str(traces)}) as stack:
        stack.start(workers=1, ledger=False)
        out = subprocess.run([sys.executable, "-c", SUBMITTER, stack.nats_url or ""], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        client = json.loads(out.stdout)
    assert (client["type"], client["provider"]) == ("completed", "good")
    (submit,) = client["spans"]
    assert submit["name"] == "submit" and submit["parent_id"] is None

    spans = [json.loads(line) for line in traces.read_text().splitlines()]
    by_name: dict[str, list[dict]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    assert {s["context"]["trace_id"] for s in spans} == {submit["trace_id"]}  # one trace id, every process

    (admission,) = by_name["admission"]
    assert admission["parent_id"] == submit["span_id"] and admission["resource"]["attributes"]["service.name"] == "panelboard-broker"
    hops = {s["context"]["span_id"]: s for s in by_name["dispatch"]}
    flaky = [s for s in hops.values() if s["attributes"]["panelboard.provider"] == "flaky"]
    good = [s for s in hops.values() if s["attributes"]["panelboard.provider"] == "good"]
    assert len(flaky) == 2 and len(good) == 1  # hop 0 and its retry, then the fallback hop
    assert all(s["parent_id"] == admission["context"]["span_id"] for s in flaky)  # the retry is a redelivery of the same dispatch
    assert good[0]["parent_id"] in {s["context"]["span_id"] for s in flaky}  # published by the hop that fell back
    calls = by_name["provider.call"]
    assert sorted(c["attributes"]["panelboard.outcome"] for c in calls) == ["Ok", "ServerError", "ServerError"]
    assert all(c["parent_id"] in hops for c in calls)
    (result,) = by_name["result"]
    assert result["parent_id"] == good[0]["context"]["span_id"] and result["attributes"]["panelboard.type"] == "completed"
