"""A batch of a million jobs through the embedded stack, with flat client and broker memory.

    python -m panelboard.loadgen.batch_bench --lines 1000000 [--latency-ms 20] [--out loadgen/out/batch_bench.json]

1. Writes a JSONL batch file (OpenAI Batch API lines, every tenth an Anthropic Message Batches
   line, one malformed line per 100,000) unless one with that many lines is already there.
2. Starts the default stack (examples/mock.yaml: the article's tiers; embedded nats-server,
   mock provider with --latency-ms, one broker, one worker process, the ledger).
3. Runs, each as its own process, exactly what a user runs:
       panelboard batch submit FILE --intent extraction --batch-id ID --json
       panelboard batch wait ID --json          (until every job has a result)
       panelboard batch status ID --json        (twice: counting every result, then from its cache)
       panelboard batch results ID -o out.jsonl
   and takes each one's peak RSS from wait4() (ru_maxrss).
4. Samples VmRSS of nats-server, the broker, the worker, the ledger and the mock every second,
   and reports their peak (VmHWM) and the RSS at 10%, 50% and 90% of the run: flat memory
   shows as RSS that does not grow with the jobs done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PB = str(Path(sys.executable).parent / "panelboard")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_batch(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    words = "invoice total due date vendor amount order customer address payment reference".split()
    with open(path, "w") as f:
        for i in range(lines):
            if i % 100_000 == 99_999:
                f.write('{"custom_id": "broken-%d", "body": {"messages": [}\n' % i)
                continue
            text = f"Extract the {rng.choice(words)} from: " + " ".join(rng.choices(words, k=rng.randint(8, 40)))
            if i % 10 == 9:
                line = {"custom_id": f"req-{i}", "params": {"model": "claude-x", "max_tokens": 32,
                                                             "messages": [{"role": "user", "content": text}]}}
            else:
                line = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "llama-3.3-70b", "messages": [{"role": "user", "content": text}], "max_tokens": 32}}
            f.write(json.dumps(line) + "\n")


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def proc_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_measured(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a CLI command; its wall time, peak RSS (wait4's ru_maxrss) and parsed JSON output."""
    t0 = time.monotonic()
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    proc = subprocess.Popen([PB, *args], stdout=out_f, stderr=err_f, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - t0
    out_f.seek(0)
    text = out_f.read().decode()
    err_f.seek(0)
    err = err_f.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {proc.returncode}: {err[-2000:]}")
    try:
        parsed = json.loads(text) if text.strip().startswith("{") else None
    except json.JSONDecodeError:
        parsed = None
    return {"elapsed_s": round(elapsed, 2), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
            "json": parsed, "stdout_tail": text[-500:] if parsed is None else None}


def forget_tally(url: str, batch_id: str) -> None:
    import asyncio

    from nats.aio.client import Client as NATS

    from panelboard.schemas import batch as B

    async def go() -> None:
        nc = NATS()
        await nc.connect(url)
        await nc.jetstream().purge_stream(B.BATCHES_STREAM, subject=B.tally_subject(batch_id))
        await nc.close()

    asyncio.run(go())


class Sampler(threading.Thread):
    def __init__(self, pids: dict[str, int], every: float = 1.0):
        super().__init__(daemon=True)
        self.pids = pids
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            row: dict[str, float | None] = {"t": round(time.monotonic() - self.t0, 1)}
            row.update({name: proc_kb(pid, "VmRSS") for name, pid in self.pids.items()})
            self.samples.append(row)

    def at(self, frac: float) -> dict[str, float | None]:
        if not self.samples:
            return {}
        row = self.samples[min(len(self.samples) - 1, int(frac * len(self.samples)))]
        return {k: (round(v / 1024, 1) if isinstance(v, int) else None) for k, v in row.items() if k != "t"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m panelboard.loadgen.batch_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="the mock provider's latency per call")
    ap.add_argument("--config", default=str(ROOT / "examples" / "mock.yaml"))
    ap.add_argument("--intent", default="extraction")
    ap.add_argument("--workdir", help="keep the batch file and the stack here (default: a temp dir, removed after)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "loadgen" / "out" / "batch_bench.json"))
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    a = ap.parse_args(argv)

    from panelboard.stack import Stack

    tmp = None
    work = Path(a.workdir) if a.workdir else Path(tmp := tempfile.mkdtemp(prefix="panelboard-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"batch-{a.lines}.jsonl"
    if not src.exists() or count_lines(src) != a.lines:
        t0 = time.monotonic()
        write_batch(src, a.lines)
        log(f"wrote {a.lines:,} lines ({src.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - t0:.0f}s: {src}")
    stack_home = work / "stack"
    shutil.rmtree(stack_home, ignore_errors=True)
    batch_id = f"bench-{a.lines}-{int(time.time())}"
    result: dict[str, Any] = {"lines": a.lines, "batch_id": batch_id, "config": os.path.relpath(a.config, ROOT), "intent": a.intent,
                              "mock_latency_ms": a.latency_ms, "window": a.window, "file_mib": round(src.stat().st_size / 2**20, 1),
                              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                                          "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}}
    try:
        with Stack(stack_home, config=a.config, mock_args=["--latency-ms", str(a.latency_ms)]) as stack:
            stack.start(workers=1)
            assert stack.nats and stack.nats.proc and stack.mock_proc
            pids = {"nats-server": stack.nats.proc.pid, "broker": stack.procs["broker"].pid, "worker": stack.procs["worker-0"].pid,
                    "ledger": stack.procs["ledger"].pid, "mock": stack.mock_proc.pid}
            env = {**stack.env, "PANELBOARD_NATS_URL": stack.nats_url or ""}
            common = ["--nats-url", stack.nats_url or "", "--config", a.config]
            sampler = Sampler(pids)
            sampler.start()
            log(f"stack up (nats {stack.nats_url}); submitting {a.lines:,} lines as batch {batch_id}")
            t0 = time.monotonic()
            sub = run_measured(["batch", "submit", str(src), "--intent", a.intent, "--batch-id", batch_id, "--window", str(a.window),
                                "--json", *common], env, a.timeout)
            log(f"submitted in {sub['elapsed_s']}s, client peak RSS {sub['peak_rss_mb']} MiB: {sub['json']['submit'] if sub['json'] else ''}")
            wait = run_measured(["batch", "wait", batch_id, "--json", "--timeout", str(a.timeout), *common], env, a.timeout)
            total_s = time.monotonic() - t0
            sampler.stop.set()
            sampler.join()
            st = wait["json"] or {}
            log(f"all results after {total_s:.0f}s: {st.get('request_counts')}")
            peaks = {name: round((proc_kb(pid, "VmHWM") or 0) / 1024, 1) for name, pid in pids.items()}
            forget_tally(stack.nats_url or "", batch_id)  # `wait` counted them: make this status count all again
            status = run_measured(["batch", "status", batch_id, "--json", *common], env, a.timeout)
            status_again = run_measured(["batch", "status", batch_id, "--json", *common], env, a.timeout)
            res = run_measured(["batch", "results", batch_id, "-o", str(work / "out.jsonl"), "--json", *common], env, a.timeout)
            out_lines = count_lines(work / "out.jsonl")
            log(f"results: {res['json']} in {res['elapsed_s']}s, peak RSS {res['peak_rss_mb']} MiB")
            disk = sum(p.stat().st_size for p in (stack_home / "nats").rglob("*") if p.is_file())
            result.update({
                "submit": {k: sub[k] for k in ("elapsed_s", "peak_rss_mb", "cpu_s")} | {"report": (sub["json"] or {}).get("submit")},
                "lines_per_s_submitted": round(a.lines / sub["elapsed_s"], 1),
                "wait": {k: wait[k] for k in ("elapsed_s", "peak_rss_mb", "cpu_s")},
                "all_results_s": round(total_s, 1),
                "jobs_per_s": round((st.get("request_counts") or {}).get("total", 0) / total_s, 1),
                "request_counts": st.get("request_counts"),
                "status_uncached": {k: status[k] for k in ("elapsed_s", "peak_rss_mb", "cpu_s")},
                "status_cached": {k: status_again[k] for k in ("elapsed_s", "peak_rss_mb", "cpu_s")},
                "results": {k: res[k] for k in ("elapsed_s", "peak_rss_mb", "cpu_s")} | {"report": res["json"], "output_lines": out_lines},
                "server_peak_rss_mb": peaks,
                "server_rss_mb_at": {"10%": sampler.at(0.1), "50%": sampler.at(0.5), "90%": sampler.at(0.9)},
                "nats_data_mib": round(disk / 2**20, 1),
                "samples": sampler.samples[:: max(1, len(sampler.samples) // 200)],
            })
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
