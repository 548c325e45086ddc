"""A real 3-node NATS JetStream cluster on loopback, for tests and local experiments.

Every node runs `deploy/nats-cluster.conf`, the file compose.yaml mounts into its nats
containers; only the environment differs per node (see the variables listed in that file).
Ports are picked free on 127.0.0.1 (never 4222: another NATS may hold it), stores live
under one temporary folder.

    with Cluster().start() as c:
        nc = await nats.connect(c.urls)        # nats-py wants a list, not c.url
        ...
        c.kill(c.stream_leader("PB_JOBS"))     # SIGKILL, no clean shutdown
        c.wait_stream_leader("PB_JOBS")        # a survivor takes over
        c.restart(i)                           # same ports, same store: it rejoins

`url` is the comma-joined form (`nats://127.0.0.1:p1,nats://127.0.0.1:p2,...`) for places
that take one string, such as `--nats-url` and PANELBOARD_NATS_URL; whoever connects with it
must split it on commas before handing it to nats-py, which reads a single string as one URL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from panelboard.natsserver import NatsServer, NatsServerError

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nats-cluster.conf"
HOST = "127.0.0.1"
_RESERVED = {4222, 5432, 6222, 8222}


def free_ports(n: int, host: str = HOST) -> list[int]:
    """n distinct free ports: all held open at once, so the kernel cannot hand one out twice."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in _RESERVED:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class Node(NatsServer):
    """One cluster member: the shared config file plus its own environment."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str], http_port: int, conf: Path = CONF):
        super().__init__(data_dir, port=int(env["NATS_PORT"]), config=str(conf), env=env, name=name)
        self.http_port = http_port

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """GET a monitoring endpoint as JSON; None when the node does not answer or says unhealthy."""
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None


class Cluster:
    """Three (by default) nats-server processes forming one JetStream cluster named `panelboard`."""

    def __init__(self, root: str | os.PathLike[str] | None = None, size: int = 3, conf: str | os.PathLike[str] = CONF):
        if size != 3:
            raise ValueError("deploy/nats-cluster.conf names exactly three routes")
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="pb-cluster-"))
        self.conf = Path(conf)
        ports = free_ports(3 * size)
        client, route, http = ports[0:size], ports[size : 2 * size], ports[2 * size :]
        routes = {f"NATS_ROUTE_{j + 1}": f"nats://{HOST}:{route[j]}" for j in range(size)}
        self.nodes: list[Node] = []
        for i in range(size):
            name = f"nats-{i + 1}"
            data = self.root / name
            env = {
                "NATS_NAME": name,
                "NATS_HOST": HOST,
                "NATS_PORT": str(client[i]),
                "NATS_HTTP_PORT": str(http[i]),
                "NATS_CLUSTER_PORT": str(route[i]),
                "NATS_STORE_DIR": str(data / "store"),
                **routes,
            }
            self.nodes.append(Node(name, data, env, http[i], self.conf))

    # -- addresses --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        """One client URL per node: pass this list to `nats.connect(servers=...)`."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The same URLs comma-joined, for --nats-url / PANELBOARD_NATS_URL (split before nats-py)."""
        return ",".join(self.urls)

    def index(self, server_name: str) -> int:
        return self.names.index(server_name)

    # -- life -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Cluster":
        try:
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node i: no lame duck, no flush, its connections just drop."""
        self.nodes[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node i again on the same ports and store (stopping it first if it runs) and
        wait until it is back in the cluster with the meta leader known."""
        node = self.nodes[i]
        if node.alive:
            node.stop()
        node.start()
        self.wait_ready(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # one stuck node must not leave the others running
                node.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------------
    def logs_tail(self, lines: int = 5) -> str:
        """The last [ERR]/[FTL]/[WRN] lines of every node, for error messages (the root may be
        removed by stop())."""
        out = []
        for n in self.nodes:
            try:
                text = n.log_path.read_text("utf-8", "replace").splitlines()
            except OSError:
                continue
            bad = [ln for ln in text if "[ERR]" in ln or "[FTL]" in ln or "[WRN]" in ln][-lines:]
            if bad:
                out.append(f"{n.name}: " + " | ".join(bad))
        return "\n".join(out)

    def alive(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.alive]

    def jsz(self, i: int, streams: bool = False) -> dict[str, Any] | None:
        return self.nodes[i].monitor("/jsz?streams=true" if streams else "/jsz")

    def meta_leader(self) -> int | None:
        """The JetStream meta leader, when every live node agrees on one that is alive."""
        seen = set()
        for i in self.alive():
            info = self.jsz(i)
            leader = ((info or {}).get("meta_cluster") or {}).get("leader")
            if not leader:
                return None
            seen.add(leader)
        if len(seen) != 1:
            return None
        leader = seen.pop()
        found = self.index(leader) if leader in self.names else None
        return found if found is not None and self.nodes[found].alive else None

    def ready(self) -> bool:
        """Every live node answers /healthz ok (JetStream current) and a meta leader is agreed."""
        live = self.alive()
        if not live:
            return False
        for i in live:
            health = self.nodes[i].monitor("/healthz")
            if not health or health.get("status") != "ok":
                return False
        return self.meta_leader() is not None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is not None and n.proc.returncode not in (-9, 0)]
            if dead:
                raise NatsServerError(f"{dead} exited; see the logs under {self.root}\n{self.logs_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise NatsServerError(f"cluster not ready after {timeout}s (no JetStream meta leader?); see the logs under {self.root}\n{self.logs_tail()}")

    def stream_leader(self, stream: str) -> int | None:
        """Index of the node leading `stream`'s Raft group, as that node itself reports it
        (a follower may still name a leader that was just killed); None while there is none."""
        for i in self.alive():
            info = self.jsz(i, streams=True) or {}
            for account in info.get("account_details") or []:
                for sd in account.get("stream_detail") or []:
                    if sd.get("name") == stream and (sd.get("cluster") or {}).get("leader") == self.nodes[i].name:
                        return i
        return None

    def wait_stream_leader(self, stream: str, exclude: tuple[int, ...] | list[int] = (), timeout: float = 30.0) -> int:
        """Poll until some live node other than `exclude` leads `stream`; return its index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = self.stream_leader(stream)
            if i is not None and i not in exclude:
                return i
            time.sleep(0.1)
        raise NatsServerError(f"no leader for stream {stream} after {timeout}s")
