"""What one provider call costs the worker, layer by layer: the same POST to the mock through
raw aiohttp, and through httpx-aiohttp's AiohttpTransport driven as the adapters drive it (an
httpx.Request handed straight to the transport), and what httpx's own objects cost alone.

    python -m panelboard.loadgen.transport_bench [--requests 4000] [--inflight 32]

CPU is this process's (getrusage) per request over the measured loop; the mock runs in its own
process and is not counted. Rounds alternate between the transports so drift hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
from typing import Any, Awaitable, Callable

import httpx
import msgspec

BODY = msgspec.json.encode({"model": "bench-model", "max_tokens": 64, "messages": [{"role": "user", "content": "benchmark job: extract the total."}]})


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def loop(n: int, c: int, one: Callable[[], Awaitable[None]]) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    t0 = cpu()
    await asyncio.gather(*(worker() for _ in range(c)))
    return (cpu() - t0) * 1e6 / n  # us per request


async def main_async(url: str, n: int, c: int, rounds: int) -> dict[str, list[float]]:
    import aiohttp
    from httpx_aiohttp import AiohttpTransport as Shim

    headers = {"content-type": "application/json"}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * c))

    async def raw() -> None:
        async with session.post(url, data=BODY, headers=headers) as r:
            await r.read()

    def via(transport: httpx.AsyncBaseTransport) -> Callable[[], Awaitable[None]]:
        u = httpx.URL(url)
        ext: dict[str, Any] = {"timeout": {"connect": 30.0, "read": 30.0, "write": 30.0, "pool": 30.0}}

        async def one() -> None:
            req = httpx.Request("POST", u, headers=headers, content=BODY, extensions=ext)
            r = await transport.handle_async_request(req)
            await r.aread()

        return one

    limit = 2 * c
    ways = {"aiohttp (raw)": raw, "httpx-aiohttp shim": via(Shim(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)))}
    out: dict[str, list[float]] = {k: [] for k in ways}
    for name, one in ways.items():  # warm every pool first
        await loop(200, c, one)
    for _ in range(rounds):
        for name, one in ways.items():
            out[name].append(await loop(n, c, one))
    await session.close()
    u = httpx.URL(url)
    raw_headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"300"), (b"Date", b"x"), (b"Server", b"y")]

    async def objects() -> None:  # no I/O: an httpx.Request built, an httpx.Response made and read
        req = httpx.Request("POST", u, headers=headers, content=BODY, extensions={"timeout": {"read": 30.0}})
        await httpx.Response(200, headers=raw_headers, stream=httpx.ByteStream(BODY), request=req).aread()

    out["httpx objects alone"] = [await loop(n, 1, objects) for _ in range(rounds)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.transport_bench")
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    mock = subprocess.Popen([sys.executable, "-m", "panelboard.loadgen.mock_provider", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert mock.stdout is not None
        line = mock.stdout.readline()
        base = line.strip().split()[-1]
        url = f"{base}/bench/v1/chat/completions"
        import uvloop

        res = uvloop.run(main_async(url, args.requests, args.inflight, args.rounds))
    finally:
        mock.terminate()
        mock.wait(10)
    print(f"client CPU per request, {args.requests} requests x {args.rounds} rounds at {args.inflight} in flight (median, all rounds in us):")
    for name, xs in res.items():
        print(f"  {name:<22} {sorted(xs)[len(xs) // 2]:7.1f} us   {[round(x, 1) for x in xs]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
