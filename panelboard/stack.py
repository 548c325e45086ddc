"""The whole stack as real processes: nats-server (embedded unless a URL is given), the mock
provider, a broker and worker pools. Used by `panelboard up`, `demo`, and the tests."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from panelboard import runtime

from panelboard.transport import connection
from panelboard.config import load
from panelboard.natsserver import NatsServer

PY = sys.executable


class Stack:
    def __init__(
        self,
        home: str | os.PathLike[str],
        config: str | os.PathLike[str] | None = None,
        nats_url: str | None = None,
        mock: bool = True,
        mock_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
    ):
        self.home = Path(home)
        self.config = str(config) if config else None
        self.nats_url = nats_url
        self.mock = mock
        self.mock_args = mock_args or []
        self.env = {**os.environ, **(env or {})}
        # The stack's processes keep their files (the SQLite ledger) in the stack's home.
        self.env[connection.HOME_ENV] = str(self.home)
        self.nats: NatsServer | None = None
        self.mock_proc: subprocess.Popen[bytes] | None = None
        self.mock_url: str | None = None
        self.ingress_url: str | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []  # every process ever started, replacements too
        self.log_offsets: dict[str, int] = {}  # where each process's current run begins in its log
        self.stopped = False
        self.metrics_base = metrics_port  # broker, workers and ledger serve /metrics on ports from here up
        self.metrics_ports: dict[str, int] = {}
        self._setup_auth: tuple[str, str] | None = None
        (self.home / "logs").mkdir(parents=True, exist_ok=True)

    # -- parts --------------------------------------------------------------------------
    def start_nats(self) -> str:
        conf = self._tenants_conf()
        self.nats = NatsServer(self.home / "nats", config=conf, sync=None if conf else load(self.config).nats.sync).start()
        self.nats_url = self.nats.url
        (self.home / "nats.url").write_text(self.nats_url + "\n")
        return self.nats_url

    def _tenants_conf(self) -> str | None:
        """With `governance.tenants` in the config, the embedded server gets a user per team
        (panelboard/tenants.py); the stack's own processes connect as the service user, whose
        password is drawn here and handed to them in their environment, never on a command line."""
        import secrets

        from panelboard import tenants

        cfg = load(self.config)
        if not cfg.governance.tenants:
            return None
        password = secrets.token_urlsafe(24)
        self.env[connection.USER_ENV] = tenants.SERVICE_USER
        self.env[connection.PASSWORD_ENV] = password
        self._setup_auth = (tenants.SERVICE_USER, password)
        path = self.home / "nats" / "nats.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(tenants.server_config(cfg, service_password=password, store_dir=str(self.home / "nats" / "jetstream")))
        return str(path)

    def start_mock(self) -> str:
        args = [PY, "-m", "panelboard.loadgen.mock_provider", "--port", "0", "--log-path", str(self.home / "mock-requests.jsonl"), *self.mock_args]
        self.mock_proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.home / "logs" / "mock.log", "ab"), env=self.env)
        assert self.mock_proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.mock_proc.stdout], [], [], 0.2)
            if ready:
                line = self.mock_proc.stdout.readline()
                if b"listening on" in line:
                    self.mock_url = line.decode().strip().rsplit(" ", 1)[-1]
                    self.env["PANELBOARD_MOCK_URL"] = self.mock_url
                    (self.home / "mock.url").write_text(self.mock_url + "\n")
                    return self.mock_url
            if self.mock_proc.poll() is not None:
                break
        raise RuntimeError(f"mock provider did not start (last output {line!r}); see {self.home / 'logs' / 'mock.log'}")

    def _cli(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        assert self.nats_url
        if self.stopped:  # e.g. a test's background task still running after the test failed
            raise RuntimeError(f"stack {self.home} is stopped: not starting {name}")
        cmd = [PY, "-m", "panelboard.cli", *args, "--nats-url", self.nats_url]
        if self.config:
            cmd += ["--config", self.config]
        if self.metrics_base is not None and args[0] in ("broker", "worker", "ledger"):
            port = self.metrics_ports.setdefault(name, self.metrics_base + len(self.metrics_ports))
            cmd += ["--metrics-port", str(port)]
        path = self.home / "logs" / f"{name}.log"
        log = open(path, "ab")
        self.log_offsets[name] = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True)
        self.procs[name] = proc
        self.started.append(proc)
        return proc

    def logged(self, name: str, needle: str) -> bool:
        """Whether the current run of `name` has logged `needle` yet."""
        with open(self.home / "logs" / f"{name}.log", "rb") as f:
            f.seek(self.log_offsets.get(name, 0))
            return needle.encode() in f.read()

    def start_broker(self, name: str = "broker") -> subprocess.Popen[bytes]:
        return self._cli(name, "broker")

    def start_worker(self, name: str = "worker", providers: list[str] | None = None) -> subprocess.Popen[bytes]:
        args = ["worker"]
        for p in providers or []:
            args += ["--provider", p]
        return self._cli(name, *args)

    def start_ledger(self, name: str = "ledger") -> subprocess.Popen[bytes]:
        return self._cli(name, "ledger")

    def start_ingress(self, name: str = "ingress", workers: int = 1, *args: str) -> str:
        """`panelboard serve` on a free port; its URL, once it listens, is in <home>/ingress.url."""
        url_file = self.home / "ingress.url"
        url_file.unlink(missing_ok=True)
        proc = self._cli(name, "serve", "--workers", str(workers), *args)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if url_file.exists() and self.logged(name, "listening on"):
                self.ingress_url = url_file.read_text().strip()
                return self.ingress_url
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the ingress did not start; see {self.home / 'logs' / (name + '.log')}")

    def prepare(self) -> None:
        """Streams and consumers exist before anyone publishes: no job can land nowhere."""

        async def go() -> None:
            cfg = load(self.config)
            url = self.nats_url
            assert url is not None, "start_nats() first, or pass nats_url"
            if self._setup_auth is not None:  # the embedded server has per-team users
                user, password = self._setup_auth
                url = url.replace("nats://", f"nats://{user}:{password}@", 1)
            nc = await connection.connect(url, "panelboard-setup")
            try:
                await runtime.prepare(nc, cfg)
            finally:
                await nc.drain()

        os.environ.setdefault("PANELBOARD_MOCK_URL", self.env.get("PANELBOARD_MOCK_URL", ""))
        # Its own thread and loop: callers may be inside a running event loop (async tests).
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, go()).result()

    # -- whole ----------------------------------------------------------------------------
    def start(self, workers: int = 1, broker: bool = True, ledger: bool = True, ingress: bool = False) -> "Stack":
        if not self.nats_url:
            self.start_nats()
        if self.mock:
            self.start_mock()
            os.environ["PANELBOARD_MOCK_URL"] = self.mock_url or ""
        self.prepare()
        if broker:
            self.start_broker()
        for i in range(workers):
            self.start_worker(f"worker-{i}")
        if ledger:
            self.start_ledger()
        if ingress:
            self.start_ingress()
        return self

    def kill_proc(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye; what it held is redelivered after ack_wait."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop_proc(self, name: str, timeout: float = 25) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop(self) -> None:
        self.stopped = True
        for name in list(self.procs):
            self.stop_proc(name)
        for proc in self.started:  # whatever the outcome, nothing we started outlives us
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.mock_proc and self.mock_proc.poll() is None:
            self.mock_proc.terminate()
            try:
                self.mock_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.mock_proc.kill()
        if self.nats:
            self.nats.stop()
            (self.home / "nats.url").unlink(missing_ok=True)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
