"""The 3-node deployment: panelboard's streams as R3 on a real NATS JetStream cluster that
survives losing its stream leader, and compose.yaml, which runs the same node config."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import nats
import pytest
import yaml
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from panelboard.transport import streams
from panelboard.cluster import CONF, Cluster
from panelboard.config import load
from panelboard.schemas import wire

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = ROOT / "examples" / "cluster.yaml"
COMPOSE = ROOT / "compose.yaml"
FAILOVER_S = 30.0  # Raft elects a new leader within ~10 s of losing one; generous for a busy 2-core box

pytestmark = pytest.mark.cluster


# -- a live cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
async def nc(cluster):
    conn = await nats.connect(cluster.urls, name="test-cluster", connect_timeout=2, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def js(nc):
    js = nc.jetstream(timeout=3)
    await streams.ensure_streams(js, load(CLUSTER_CONFIG))
    return js


async def publish_until_acked(js, subject: str, data: bytes, msg_id: str, deadline_s: float):
    """Retry a publish through a leader election; return (ack, seconds it took)."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < deadline_s:
        try:
            ack = await js.publish(subject, data, timeout=2, headers={"Nats-Msg-Id": msg_id})
            return ack, time.monotonic() - start
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError, APIError) as e:
            last = e
            await asyncio.sleep(0.1)
    raise AssertionError(f"publish not acked within {deadline_s}s; last error {last!r}")


async def test_streams_are_r3(cluster, js):
    cfg = load(CLUSTER_CONFIG)
    assert cfg.nats.replicas == 3
    for sc in streams.stream_configs(cfg):
        si = await js.stream_info(sc.name)
        assert si.config.num_replicas == 3, sc.name
        assert si.cluster is not None and si.cluster.name == "panelboard"
        assert si.cluster.leader in cluster.names
        followers = {p.name for p in si.cluster.replicas or []}
        assert len(followers) == 2 and si.cluster.leader not in followers
        assert followers | {si.cluster.leader} == set(cluster.names)
        # The monitoring view the fault tests use agrees with the API's.
        assert await asyncio.to_thread(cluster.wait_stream_leader, sc.name, (), 10) == cluster.index(si.cluster.leader)
    # Creating them again (every process does at start) changes nothing.
    await streams.ensure_streams(js, cfg)


async def test_publish_and_read_back(js):
    job_id = uuid.uuid4().hex
    ack = await js.publish("pb.jobs.x", b'{"hello":"cluster"}', headers={"Nats-Msg-Id": job_id})
    assert ack.stream == wire.JOBS_STREAM and not ack.duplicate
    msg = await js.get_msg(wire.JOBS_STREAM, ack.seq)
    assert msg.subject == "pb.jobs.x" and msg.data == b'{"hello":"cluster"}'
    # Idempotent submit holds on the cluster too: the same job id is dropped as a duplicate.
    again = await js.publish("pb.jobs.x", b'{"hello":"cluster"}', headers={"Nats-Msg-Id": job_id})
    assert again.duplicate and again.seq == ack.seq


async def test_runtime_joins_with_the_comma_joined_url(cluster, js):
    """compose.yaml hands broker and worker `--nats-url nats://nats-1:4222,nats://nats-2:4222,...`."""
    from panelboard.transport import connection

    conn = await connection.connect(cluster.url, "test-cluster-url")
    try:
        assert {f"{s.hostname}:{s.port}" for s in conn.servers} >= {u.removeprefix("nats://") for u in cluster.urls}
        info = await conn.jetstream().account_info()
        assert info.streams >= len(streams.stream_configs(load(CLUSTER_CONFIG)))
    finally:
        await conn.close()


@pytest.mark.fault
async def test_stream_leader_killed_new_leader_takes_over(cluster, js):
    before, _ = await publish_until_acked(js, "pb.jobs.x", b"before", uuid.uuid4().hex, 10)
    old = await asyncio.to_thread(cluster.wait_stream_leader, wire.JOBS_STREAM, (), 10)

    cluster.kill(old)
    killed = time.monotonic()
    new = await asyncio.to_thread(cluster.wait_stream_leader, wire.JOBS_STREAM, (old,), FAILOVER_S)
    assert new != old
    elected = time.monotonic() - killed
    after, _ = await publish_until_acked(js, "pb.jobs.x", b"after", uuid.uuid4().hex, FAILOVER_S)
    acked = time.monotonic() - killed
    assert acked < FAILOVER_S
    assert after.stream == wire.JOBS_STREAM and after.seq > before.seq
    # What was acked before the kill is still there on the survivors.
    assert (await js.get_msg(wire.JOBS_STREAM, before.seq)).data == b"before"
    assert (await js.get_msg(wire.JOBS_STREAM, after.seq)).data == b"after"
    si = await js.stream_info(wire.JOBS_STREAM)
    assert si.cluster.leader == cluster.names[new]

    # The killed node comes back on its own store and catches up with what it missed.
    restarted = time.monotonic()
    await asyncio.to_thread(cluster.restart, old)
    deadline = time.monotonic() + FAILOVER_S
    while time.monotonic() < deadline:
        si = await js.stream_info(wire.JOBS_STREAM)
        peers = {p.name: p for p in si.cluster.replicas or []}
        if cluster.names[old] in peers and all(p.current and not p.offline for p in peers.values()):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"{cluster.names[old]} did not catch up: {si.cluster}")
    assert len(cluster.alive()) == 3
    print(f"failover: {cluster.names[new]} leads {elected:.1f}s after the kill, publish acked at {acked:.1f}s; "
          f"{cluster.names[old]} back and current {time.monotonic() - restarted:.1f}s after its restart")


# -- compose.yaml -------------------------------------------------------------------------------


def _conf_vars() -> set[str]:
    text = "\n".join(ln.split("#", 1)[0] for ln in CONF.read_text().splitlines())
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def _depends(svc: dict) -> list[str]:
    d = svc.get("depends_on") or []
    return list(d) if isinstance(d, (list, dict)) else []


def test_compose_structure(tmp_path):
    doc = yaml.safe_load(COMPOSE.read_text())
    services: dict = doc["services"]
    nats_nodes = ["nats-1", "nats-2", "nats-3"]
    for name in [*nats_nodes, "postgres", "mock", "broker", "worker"]:
        assert name in services, f"compose.yaml has no service {name}"
    named_volumes = set(doc.get("volumes") or {})

    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "build" in svc:
            ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
            assert (COMPOSE.parent / ctx / "Dockerfile").exists(), f"{name}: no Dockerfile in {ctx}"
        for dep in _depends(svc):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source")
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in named_volumes, f"{name}: volume {source} not declared"

    # Every node runs the one conf, with every variable it references set, and routes to the
    # three nodes' cluster ports.
    conf_vars = _conf_vars()
    assert {"NATS_NAME", "NATS_ROUTE_1", "NATS_STORE_DIR"} <= conf_vars
    names = set()
    for node in nats_nodes:
        svc = services[node]
        assert any(v.startswith("./deploy/nats-cluster.conf:") for v in svc["volumes"])
        conf_in_container = next(v.split(":")[1] for v in svc["volumes"] if v.startswith("./deploy/nats-cluster.conf:"))
        assert conf_in_container in svc["command"]
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert conf_vars <= set(env), f"{node}: conf needs {sorted(conf_vars - set(env))}"
        names.add(env["NATS_NAME"])
        for i in (1, 2, 3):
            m = re.fullmatch(r"nats://([\w-]+):(\d+)", env[f"NATS_ROUTE_{i}"])
            assert m and m.group(1) in nats_nodes
            assert m.group(2) == str(services[m.group(1)]["environment"]["NATS_CLUSTER_PORT"])
    assert len(names) == 3, "server names must be unique"

    # The local cluster the tests start sets the same variables (constructing starts nothing).
    assert all(set(n.env) == conf_vars for n in Cluster(root=tmp_path).nodes)

    # Broker and worker join the cluster with the R3 config, reach the mock by service name,
    # and the worker can be scaled (no fixed container name).
    for name in ("broker", "worker"):
        svc = services[name]
        cmd = svc["command"] if isinstance(svc["command"], list) else svc["command"].split()
        assert cmd[:2] == ["panelboard", name]
        config = cmd[cmd.index("--config") + 1]
        assert config.startswith("/app/") and (ROOT / config.removeprefix("/app/")).exists()
        urls = cmd[cmd.index("--nats-url") + 1].split(",")
        assert sorted(u.split("//")[1].split(":")[0] for u in urls) == nats_nodes
        assert svc["environment"]["PANELBOARD_MOCK_URL"] == "http://mock:8900"
        assert set(nats_nodes) <= set(_depends(svc))
    assert "container_name" not in services["worker"]
    assert services["mock"]["command"][:2] == ["panelboard", "mock"] and "8900" in services["mock"]["command"]

    # examples/cluster.yaml is examples/mock.yaml plus R3.
    mock_text = (ROOT / "examples" / "mock.yaml").read_text()
    assert CLUSTER_CONFIG.read_text().startswith(mock_text)
    assert load(CLUSTER_CONFIG).nats.replicas == 3


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):  # the standalone one (Debian's `docker-compose`)
        return ["docker-compose"]
    return None


def test_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    r = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr or r.stdout
