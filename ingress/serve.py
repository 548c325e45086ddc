"""`panelboard serve`: the HTTP ingress as one or more processes on one port.

With --workers N the first process binds the port (a free one for --port 0), writes its URL
beside the NATS URL (<home>/ingress.url) and starts N-1 more processes that bind the same
port with SO_REUSEPORT: the kernel spreads connections across them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from panelboard.ingress.accesslog import AccessLogger
from panelboard.ingress.app import Settings, build
from panelboard.transport import logs

log = logs.get("ingress")

URL_FILE = "ingress.url"


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, sock: socket.socket, ready: "asyncio.Future[None] | None" = None) -> None:
    app = build(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log_class=AccessLogger)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set_result(None)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(settings: Settings, host: str, port: int, workers: int, home: Path, child: bool, argv: list[str]) -> int:
    from panelboard.runtime import run as run_loop

    sock = bind(host, port)
    port = sock.getsockname()[1]
    procs: list[subprocess.Popen[bytes]] = []
    if not child:
        url = f"http://{host}:{port}"
        home.mkdir(parents=True, exist_ok=True)
        (home / URL_FILE).write_text(url + "\n")
        for _ in range(workers - 1):
            procs.append(subprocess.Popen([sys.executable, "-m", "panelboard.cli", "serve", *_child_args(argv, port)],
                                          start_new_session=True))
        print(f"panelboard ingress listening on {url} (OpenAI base_url {url}/v1, Anthropic base_url {url}); "
              f"{workers} process(es); NATS {settings.nats_url}", flush=True)
    try:
        run_loop(serve(settings, sock))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not child:
            (home / URL_FILE).unlink(missing_ok=True)
    return 0


def _child_args(argv: list[str], port: int) -> list[str]:
    """The parent's own arguments, on its port, as one process."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--port", "--workers"):
            skip = True
            continue
        if a.startswith(("--port=", "--workers=")):
            continue
        out.append(a)
    return [*out, "--port", str(port), "--workers", "1", "--child"]
