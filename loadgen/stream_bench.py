"""Streaming benchmark: time to first token added by panelboard, against the same stream read
straight from the mock, in one run.

    python -m panelboard.loadgen.stream_bench [--jobs 640] [--concurrency 64] [--chunks 50] [--chunk-ms 10]

One embedded stack (nats-server, broker, one worker, the mock; bench.yaml), then four closed
loops at the same concurrency:

  direct plain      httpx + AiohttpTransport to the mock, non-streaming: the call's latency
  panelboard plain  Client.submit + result: the job's latency
  direct stream     the same transport, `stream: true`, SSE read as the workers read it
  panelboard stream Client.stream: submit -> broker -> worker -> pb.chunks -> this process

TTFT is from the call (submit) to the first chunk in hand; "added" is panelboard minus
direct. chunks/s counts chunks received by the client over the loop; CPU per chunk adds up
nats-server, broker, worker, mock and this process over the loop (/proc, getrusage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import msgspec

from panelboard.loadgen.bench import INTENT, MAX_TOKENS, PROVIDER, CpuMeter, closed_loop, event_loop_runner, log, ms, open_stack, percentile, prompt

SETTLE_S = 1.0


def _stats(xs: list[float]) -> dict[str, float | None]:
    xs = sorted(xs)
    return {"p50_ms": ms(percentile(xs, 0.5)), "p99_ms": ms(percentile(xs, 0.99)), "n": len(xs)}


async def _loop(label: str, n: int, c: int, one: Any, meter: CpuMeter, ttfts: list[float], chunks: Counter[str], timeout_s: float) -> dict[str, Any]:
    await closed_loop(max(c, n // 10), c, one, timeout_s, offset=10_000_000)  # warm-up
    ttfts.clear()
    chunks.clear()
    await asyncio.sleep(SETTLE_S)
    before = meter.snapshot()
    r = await closed_loop(n, c, one, timeout_s)
    after = meter.snapshot()
    cpu = CpuMeter.per_job_ms(before, after, max(chunks["n"], 1))
    r["ttft"] = _stats(ttfts)
    r["chunks"] = chunks["n"]
    r["chunks_per_s"] = round(chunks["n"] / r["elapsed_s"], 1) if r["elapsed_s"] else None
    r["cpu_ms_per_chunk"] = round(sum(v for v in cpu.values() if v is not None), 4) if chunks["n"] else None
    r["cpu_ms_per_job_total"] = round(sum(v for v in CpuMeter.per_job_ms(before, after, r["completed"]).values() if v is not None), 4)
    log(f"  {label}: {r['completed']}/{n} in {r['elapsed_s']}s, p50 {r['p50_ms']} ms, ttft p50 {r['ttft']['p50_ms']} ms, "
        f"{r['chunks_per_s']} chunks/s" + (f", errors {r['errors']}" if r["errors"] else ""))
    return r


async def run(stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    from panelboard.clients import Client
    from panelboard.schemas.job import Failed
    from panelboard.workers.providers.sse import events

    httpx.post(f"{stack.mock_url}/_mock/control", json={"provider": PROVIDER, "stream_chunks": args.chunks, "chunk_delay_ms": args.chunk_ms}).raise_for_status()
    pids = {"nats-server": stack.nats.proc.pid, **{name: p.pid for name, p in stack.procs.items()}, "mock": stack.mock_proc.pid}
    meter = CpuMeter(pids)
    url = f"{stack.mock_url}/{PROVIDER}/v1/chat/completions"
    from httpx_aiohttp import AiohttpTransport

    http = httpx.AsyncClient(transport=AiohttpTransport(limits=httpx.Limits(max_connections=4 * args.concurrency)), timeout=60)
    ttfts: list[float] = []
    chunks: Counter[str] = Counter()
    out: dict[str, Any] = {}

    def body(i: int, stream: bool) -> bytes:
        req: dict[str, Any] = {"model": "bench-model", "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": MAX_TOKENS}
        if stream:
            req |= {"stream": True, "stream_options": {"include_usage": True}}
        return msgspec.json.encode(req)

    async def direct_plain(i: int) -> str | None:
        r = await http.post(url, content=body(i, False), headers={"content-type": "application/json"})
        return None if r.status_code == 200 and r.json()["choices"] else f"http {r.status_code}"

    async def direct_stream(i: int) -> str | None:
        t0 = time.perf_counter()
        async with http.stream("POST", url, content=body(i, True), headers={"content-type": "application/json"}) as r:
            if r.status_code != 200:
                return f"http {r.status_code}"
            got = 0
            async for _, data in events(r.aiter_raw()):
                if data == b"[DONE]":
                    break
                if got == 0:
                    ttfts.append(time.perf_counter() - t0)
                got += 1
        chunks["n"] += got
        return None

    async with Client(stack.nats_url) as client:

        async def pb_plain(i: int) -> str | None:
            r = await (await client.submit(prompt(i), intent=INTENT, max_tokens=MAX_TOKENS)).result(timeout=60)
            return "failed" if isinstance(r, Failed) else None

        async def pb_stream(i: int) -> str | None:
            t0 = time.perf_counter()
            s = client.stream(prompt(i), intent=INTENT, max_tokens=MAX_TOKENS, stream_options={"include_usage": True})
            got = 0
            async for _ in s:
                if got == 0:
                    ttfts.append(time.perf_counter() - t0)
                got += 1
            chunks["n"] += got
            return "failed" if isinstance(s.result, Failed) else None

        n, c = args.jobs, args.concurrency
        log(f"c={c}, {n} jobs per loop, streams of {args.chunks} chunks {args.chunk_ms:g} ms apart")
        for label, one in (("direct plain", direct_plain), ("panelboard plain", pb_plain), ("direct stream", direct_stream), ("panelboard stream", pb_stream)):
            out[label] = await _loop(label, n, c, one, meter, ttfts, chunks, args.timeout)
    await http.aclose()
    d, p = out["direct plain"], out["panelboard plain"]
    ds, ps = out["direct stream"], out["panelboard stream"]

    def sub(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 3)

    out["added"] = {
        "plain_p50_ms": sub(p["p50_ms"], d["p50_ms"]), "plain_p99_ms": sub(p["p99_ms"], d["p99_ms"]),
        "ttft_p50_ms": sub(ps["ttft"]["p50_ms"], ds["ttft"]["p50_ms"]), "ttft_p99_ms": sub(ps["ttft"]["p99_ms"], ds["ttft"]["p99_ms"]),
        "cpu_ms_per_chunk": sub(ps["cpu_ms_per_chunk"], ds["cpu_ms_per_chunk"]),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m panelboard.loadgen.stream_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=640)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--chunk-ms", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", help="also write the figures here as JSON")
    args = ap.parse_args(argv)
    runner, loop_name = event_loop_runner()
    with open_stack(0.0, governance=False) as (stack, _, _):
        data = runner(run(stack, args))
    data["loop"] = loop_name
    text = json.dumps(data, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
