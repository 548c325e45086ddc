"""What the streams may hold and how safely: caps on the streams bad input fills, and the
embedded nats-server's durability profile (nats.sync). Each test starts its own nats-server."""

from __future__ import annotations

import asyncio
import json

import httpx
import nats

from panelboard.clients import Client
from panelboard.config import load, parse
from panelboard.natsserver import NatsServer
from panelboard.stack import Stack
from panelboard.transport.streams import ensure_streams
from panelboard.tenants import server_config
from panelboard.schemas import wire
from panelboard.schemas.job import Completed
from tests.conftest import ROOT, TEST_CONFIG
from tests.integration.test_governance_stack import eventually

HELLO = [{"role": "user", "content": "hello"}]


def config_with(tmp_path, nats_yaml: str):
    path = tmp_path / "config.yaml"
    path.write_text(TEST_CONFIG.read_text() + f"\nnats: {nats_yaml}\n")
    return path


async def test_a_flood_of_bad_input_keeps_dead_letters_within_their_cap(tmp_path):
    """Given PB_DEAD capped at 300 letters and 1 MB, when 1,500 undecodable jobs of ~3 KB
    arrive at once, then each gets exactly one Failed result, PB_DEAD holds at most 300
    letters and 1 MB (the newest: the oldest were dropped), and the broker still serves."""
    n, cap_msgs, cap_bytes = 1_500, 300, 1_000_000
    with Stack(tmp_path / "stack", config=config_with(tmp_path, f"{{dead_max_msgs: {cap_msgs}, dead_max_bytes: {cap_bytes}}}")) as stack:
        stack.start(workers=1, ledger=False)
        async with Client(stack.nats_url) as c:
            team = c.team
            junk = json.dumps("x" * 3_000)
            seqs: list[int] = []

            async def send(i: int) -> None:
                payload = f'{{"id":"flood-{i}","team":"{team}","request":{junk}'.encode()  # truncated: undecodable
                seqs.append((await c.js.publish(wire.jobs(team, "fast"), payload)).seq)

            for start in range(0, n, 100):
                await asyncio.gather(*(send(i) for i in range(start, min(n, start + 100))))

            async def answered() -> bool:
                info = await c.js.stream_info(wire.RESULTS_STREAM, subjects_filter=wire.rejects_of(team))
                return len(info.state.subjects or {}) >= n

            assert await eventually(answered, timeout=120), "not every bad input got its result"
            results = (await c.js.stream_info(wire.RESULTS_STREAM, subjects_filter=wire.rejects_of(team))).state.subjects
            dead = (await c.js.stream_info(wire.DEAD_STREAM)).state
            newest = await c.js.get_msg(wire.DEAD_STREAM, seq=dead.last_seq)
            last = await c.js.get_last_msg(wire.RESULTS_STREAM, wire.reject(team, max(seqs)))
            after = await (await c.submit(HELLO, intent="fast")).result(timeout=30)

    print(f"\n{n} bad inputs: {len(results)} results, PB_DEAD {dead.messages} letters / {dead.bytes:,} bytes (seq {dead.first_seq}..{dead.last_seq})")
    assert len(results) == n and set(results.values()) == {1}
    assert dead.messages <= cap_msgs and dead.bytes <= cap_bytes, dead
    assert dead.first_seq > 1  # the oldest letters made room
    assert json.loads(newest.data)["raw"] and isinstance(after, Completed)
    assert json.loads(last.data)["error"]["kind"] == "invalid_job"


def test_the_dead_letter_caps_come_from_the_config():
    from panelboard.transport.streams import stream_configs

    cfg = parse(TEST_CONFIG.read_text() + "\nnats: {dead_max_bytes: 5000000, dead_max_msgs: 10, results_max_msgs: 99}\n")
    by_name = {sc.name: sc for sc in stream_configs(cfg)}
    assert (by_name[wire.DEAD_STREAM].max_bytes, by_name[wire.DEAD_STREAM].max_msgs) == (5_000_000, 10)
    assert by_name[wire.RESULTS_STREAM].max_msgs == 99 and by_name[wire.RESULTS_STREAM].max_bytes == -1
    default = {sc.name: sc for sc in stream_configs(load(TEST_CONFIG))}[wire.DEAD_STREAM]
    assert default.max_bytes == 1 << 30 and default.max_msgs == 1_000_000


def _varz(server: NatsServer) -> dict:
    assert server.monitor_port, "started without -m"
    return httpx.get(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=10).json()


def test_the_embedded_server_runs_with_sync_always(tmp_path):
    """`nats: {sync: always}`: the server the stack starts fsyncs every write (its /varz says
    so), with or without per-team users; without it, the server keeps its 2-minute default."""
    cfg = parse(TEST_CONFIG.read_text() + "\nnats: {sync: always}\n")
    plain = NatsServer(tmp_path / "plain", sync=cfg.nats.sync, extra=["-m", "-1"]).start()
    try:
        js_cfg = _varz(plain)["jetstream"]["config"]
        assert js_cfg["sync_always"] is True and js_cfg["store_dir"].startswith(str(tmp_path / "plain"))
    finally:
        plain.stop()
    tenants = parse((ROOT / "tests" / "data" / "tenants.yaml").read_text() + "\nnats: {sync: always}\n")
    conf = tmp_path / "teams.conf"
    conf.write_text(server_config(tenants, service_password="pw", store_dir=str(tmp_path / "teams")))
    teams = NatsServer(tmp_path / "teams", config=str(conf), extra=["-m", "-1"], env={"PB_TEST_TEAM_A_PASSWORD": "a", "PB_TEST_TEAM_B_PASSWORD": "b"}).start()
    try:
        assert _varz(teams)["jetstream"]["config"]["sync_always"] is True
    finally:
        teams.stop()
    default = NatsServer(tmp_path / "default", extra=["-m", "-1"]).start()
    try:
        assert not _varz(default)["jetstream"]["config"].get("sync_always")
    finally:
        default.stop()
    with Stack(tmp_path / "stack", config=config_with(tmp_path, "{sync: always}"), mock=False) as stack:
        stack.start_nats()
        assert stack.nats is not None and stack.nats.sync == "always"


async def test_acked_jobs_survive_kill_9_of_a_server_with_sync_always(tmp_path):
    """Given the embedded server with sync always, when 300 jobs have been acked into PB_JOBS
    and the server is killed with SIGKILL and restarted on the same store, then all 300 are
    there, and the server takes new jobs."""
    cfg = parse(TEST_CONFIG.read_text() + "\nnats: {sync: always}\n")
    server = NatsServer(tmp_path / "nats", sync=cfg.nats.sync).start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js, cfg)
        for i in range(300):
            job = {"id": f"keep-{i}", "intent": "fast", "request": {"messages": HELLO}}
            await js.publish(wire.jobs("default", "fast"), json.dumps(job).encode())
        await nc.close()
        server.kill()
        server.start()
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        state = (await js.stream_info(wire.JOBS_STREAM)).state
        ack = await js.publish(wire.jobs("default", "fast"), b"{}")
        await nc.close()
    finally:
        server.stop()
    assert state.messages == 300 and state.last_seq == 300 and ack.seq == 301
