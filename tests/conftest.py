"""A real nats-server per test session (free port, temp data dir), the real mock provider over
HTTP, and real broker and worker processes. Tests that kill or restart things start their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from panelboard.clients import Client
from panelboard.natsserver import NatsServer
from panelboard.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = ROOT / "tests" / "data" / "config.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, nats_server):
    s = Stack(tmp_path_factory.mktemp("stack"), config=TEST_CONFIG, nats_url=nats_server.url)
    s.start(workers=1)
    yield s
    s.stop()


class Mock:
    """The mock provider's introspection endpoints, as the tests read them."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def log(self, provider: str | None = None) -> list[dict]:
        return self.http.get("/_mock/log", params={"provider": provider} if provider else None).json()

    def settled_log(self, bound_s: float = 30.0) -> list[dict]:
        """The request log once the mock has answered every request it holds: a call our
        worker gave up on (a timeout) is still running there, and is logged when it ends."""
        deadline = time.monotonic() + bound_s
        while any(self.stats()["in_flight"].values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log()

    def stats(self) -> dict:
        return self.http.get("/_mock/stats").json()

    def control(self, **settings) -> dict:
        r = self.http.post("/_mock/control", json=settings)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="session")
def mock(stack) -> Mock:
    return Mock(stack.mock_url)


@pytest.fixture
async def client(stack):
    async with Client(stack.nats_url) as c:
        yield c


def run_cli(*args: str, env: dict | None = None, timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("panelboard", path=str(Path(sys.executable).parent)) or "panelboard"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
