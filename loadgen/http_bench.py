"""Closed-loop HTTP benchmark: N callers each send POST /v1/chat/completions, wait for the
answer, and send the next, for a fixed time; the same for the mock called directly.

    python -m panelboard.loadgen.http_bench --concurrency 1,16,64,2048 --seconds 10 --latency-ms 200
    python -m panelboard.loadgen.http_bench --url http://127.0.0.1:8787/v1 --model bench   # any OpenAI-compatible gateway

Without --url it starts the embedded stack (nats-server, broker, worker, mock with the given
latency, `loadgen/bench.yaml`) and `panelboard serve`, and measures: the mock directly
(the floor), then panelboard HTTP ingress -> PB_JOBS -> broker -> PB_DISPATCH -> worker -> mock.
Prints one JSON object per run: requests/s, p50/p99 latency, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time as _time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

BENCH_CONFIG = Path(__file__).with_name("bench.yaml")
BODY = {"messages": [{"role": "user", "content": "Extract the date: due 2026-12-01"}], "max_tokens": 16}


async def closed_loop(url: str, model: str, concurrency: int, seconds: float, extra: dict[str, str] | None = None) -> dict[str, Any]:
    lat: list[float] = []
    errors: dict[str, int] = {}
    body = json.dumps({**BODY, "model": model}).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer x", **(extra or {})}
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds

        async def caller() -> None:
            while loop.time() < end:
                t0 = loop.time()
                try:
                    async with http.post(url + "/chat/completions", data=body, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                lat.append(loop.time() - t0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = loop.time() - start
    lat.sort()

    def pct(p: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

    return {"concurrency": concurrency, "ok": len(lat), "errors": errors, "seconds": round(elapsed, 2),
            "req_per_s": round(len(lat) / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


async def run(targets: list[tuple[str, str, str]], levels: list[int], seconds: float, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out = []
    for name, url, model in targets:
        for c in levels:
            await closed_loop(url, model, min(c, 16), 1.0, extra)  # warm the connections and the path
            r = {"target": name, **await closed_loop(url, model, c, seconds, extra)}
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


@contextlib.contextmanager
def _gateway(cmd: list[str], port_args: Callable[[int], list[str]], procs: dict[str, int] | None = None) -> Iterator[str]:
    """Another gateway on a free port, until it answers HTTP (any status). Its pid goes into
    `procs` (as its command's name) for a CPU meter."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen([*cmd, *port_args(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if procs is not None:
        procs[Path(cmd[0]).name] = proc.pid
    url = f"http://127.0.0.1:{port}"
    try:
        end = _time.monotonic() + 120
        while _time.monotonic() < end:
            try:
                urllib.request.urlopen(url + "/", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
                _time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def portkey(install_dir: str, procs: dict[str, int] | None = None) -> contextlib.AbstractContextManager[str]:
    """Portkey's gateway (`npm install @portkey-ai/gateway` in install_dir), headless."""
    return _gateway(["node", f"{install_dir}/node_modules/@portkey-ai/gateway/build/start-server.js", "--headless"], lambda p: [f"--port={p}"], procs)


def portkey_headers(upstream: str) -> dict[str, str]:
    """Portkey routes each request by its headers: an OpenAI-compatible provider at `upstream`."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m panelboard.loadgen.http_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,16,64,2048", help="comma-separated callers in flight")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--latency-ms", type=float, default=200.0, help="the mock's latency (embedded stack only)")
    ap.add_argument("--ingress-workers", type=int, default=1, help="panelboard serve --workers (embedded stack only)")
    ap.add_argument("--url", help="an OpenAI-compatible base URL to measure instead of the embedded stack (ends in /v1)")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--no-direct", action="store_true", help="skip the mock-direct baseline")
    ap.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="send this header too (--url only; repeatable)")
    ap.add_argument("--name", default="url", help="the target's name in the output (--url only)")
    ap.add_argument("--portkey", metavar="DIR", help="also measure Portkey's gateway (npm install @portkey-ai/gateway in DIR) on the same mock")
    ap.add_argument("--litellm", metavar="BIN", help="also measure LiteLLM's proxy (the `litellm` of a venv with litellm[proxy]) on the same mock")
    a = ap.parse_args(argv)
    levels = [int(x) for x in a.concurrency.split(",")]
    if a.url:
        extra = dict(h.split(":", 1) for h in a.header)
        asyncio.run(run([(a.name, a.url.rstrip("/"), a.model)], levels, a.seconds, extra))
        return 0
    from panelboard.runtime import run as run_loop
    from panelboard.stack import Stack

    with tempfile.TemporaryDirectory(prefix="panelboard-http-bench-") as tmp:
        with Stack(Path(tmp), config=BENCH_CONFIG, mock_args=["--latency-ms", str(a.latency_ms)]) as stack:
            stack.start(workers=1, ledger=False)
            stack.start_ingress(workers=a.ingress_workers)
            targets = [] if a.no_direct else [("mock-direct", f"{stack.mock_url}/bench/v1", "bench-model")]
            targets.append(("panelboard-http", f"{stack.ingress_url}/v1", a.model))
            print(f"# mock {stack.mock_url} latency {a.latency_ms} ms; ingress {stack.ingress_url} x{a.ingress_workers}", file=sys.stderr)
            run_loop(run(targets, levels, a.seconds))
            upstream = f"{stack.mock_url}/bench/v1"
            if a.portkey:
                with portkey(a.portkey) as url:
                    run_loop(run([("portkey", url + "/v1", "bench-model")], levels, a.seconds, portkey_headers(upstream)))
            if a.litellm:
                cfg = Path(tmp) / "litellm.yaml"
                master = "sk-" + secrets.token_hex(32)  # the proxy refuses to start without one
                cfg.write_text("model_list:\n  - model_name: bench\n    litellm_params: {model: openai/bench-model, "
                               f"api_base: '{upstream}', api_key: x}}\ngeneral_settings: {{master_key: {master}}}\n")
                with _gateway([a.litellm, "--config", str(cfg)], lambda p: ["--port", str(p)]) as url:
                    run_loop(run([("litellm", url + "/v1", "bench")], levels, a.seconds, {"authorization": f"Bearer {master}"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
