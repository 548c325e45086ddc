"""Tenant isolation on NATS: with a user per team, team A's credentials cannot read team B's
results, anyone's cost records or dead letters, or the JetStream API; and the SDK still works
for each team within what it is allowed."""

from __future__ import annotations

import asyncio
import os
import subprocess

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from clients import Client
from panelboard import runtime, tenants
from panelboard.config import load
from panelboard.stack import Stack
from schemas import wire
from schemas.job import Completed
from tests.conftest import ROOT, run_cli

TENANTS_CONFIG = ROOT / "tests" / "data" / "tenants.yaml"
PASSWORDS = {"team-a": "a-secret-for-tests-1", "team-b": "b-secret-for-tests-2"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tenant_stack(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PB_TEST_TEAM_A_PASSWORD", PASSWORDS["team-a"])  # nats-server reads them at start
    mp.setenv("PB_TEST_TEAM_B_PASSWORD", PASSWORDS["team-b"])
    s = Stack(tmp_path_factory.mktemp("tenants"), config=TENANTS_CONFIG)
    s.start(workers=1, ledger=False)  # the embedded server, with a user per team
    yield s
    s.stop()
    mp.undo()


class Conn:
    """A team's connection, collecting the permission errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    async def open(self, url: str, user: str, password: str, inbox: str | None = None) -> "Conn":
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e))

        kw = {"inbox_prefix": inbox} if inbox else {}
        self.nc = await nats.connect(url, user=user, password=password, error_cb=on_error, allow_reconnect=False, **kw)
        return self

    async def violation(self, needle: str, timeout: float = 3.0) -> bool:
        for _ in range(int(timeout / 0.05)):
            if any("permissions violation" in e.lower() and needle.lower() in e.lower() for e in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False


async def team(stack: Stack, name: str) -> Conn:
    return await Conn().open(stack.nats_url, name, PASSWORDS[name], tenants.inbox_prefix(name))


async def test_team_a_cannot_subscribe_to_team_b_results(tenant_stack):
    a = await team(tenant_stack, "team-a")
    try:
        await a.nc.subscribe("pb.results.team-b.>")
        await a.nc.flush()
        assert await a.violation('subscription to "pb.results.team-b.>"')
        for subject in ("pb.results.>", "pb.costs.>", "pb.dead.>", "pb.dispatch.>", "_INBOX.>", "_INBOX_team-b.>", ">"):
            await a.nc.subscribe(subject)
            await a.nc.flush()
            assert await a.violation(f'subscription to "{subject}"'), subject
    finally:
        await a.nc.close()


async def test_team_a_cannot_read_other_teams_results_or_costs_through_jetstream(tenant_stack):
    # Team B gets a result stored in PB_RESULTS.
    b = await team(tenant_stack, "team-b")
    async with Client(nc=b.nc, client_id="team-b-batch") as cb:
        r = await (await cb.submit(HELLO, intent="fast", team="team-b", job_id="b-private-job")).result(timeout=30)
    assert isinstance(r, Completed)

    a = await team(tenant_stack, "team-a")
    try:
        js = a.nc.jetstream(timeout=1.0)
        with pytest.raises(NatsTimeout):  # a denied request gets no reply
            await js.get_last_msg(wire.RESULTS_STREAM, wire.result("team-b-batch", "b-private-job"), direct=True)
        assert await a.violation("$js.api.direct.get.pb_results.pb.results.team-b-batch")
        with pytest.raises(NatsTimeout):
            await js.stream_info(wire.COSTS_STREAM)
        assert await a.violation("$js.api.stream.info.pb_costs")
        with pytest.raises(NatsTimeout):
            await js.pull_subscribe("pb.costs.>", durable="peek", stream=wire.COSTS_STREAM)
        assert await a.violation("$js.api.consumer")
    finally:
        await a.nc.close()
        await b.nc.close()


async def test_each_team_submits_and_reads_its_own_results(tenant_stack):
    a = await team(tenant_stack, "team-a")
    try:
        async with Client(nc=a.nc, client_id="team-a") as c:
            h = await c.submit(HELLO, intent="fast", team="team-a")
            r = await h.result(timeout=30)
            assert isinstance(r, Completed)
            assert isinstance(await c.lookup(h.id), Completed)  # its stored results: allowed
        assert not a.errors
    finally:
        await a.nc.close()
    # Wrong password: refused at connect.
    with pytest.raises(Exception, match="Authorization"):
        await Conn().open(tenant_stack.nats_url, "team-a", "wrong")


def test_stack_processes_use_the_service_user_and_no_password_in_argv(tenant_stack):
    assert tenant_stack.env[runtime.USER_ENV] == tenants.SERVICE_USER
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert tenant_stack.env[runtime.PASSWORD_ENV] not in ps
    conf = (tenant_stack.home / "nats" / "nats.conf")
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert PASSWORDS["team-a"] not in conf.read_text() and "$PB_TEST_TEAM_A_PASSWORD" in conf.read_text()


def test_nats_config_command_writes_the_permissions(tmp_path):
    out = run_cli("teams", "nats-config", "--config", str(TENANTS_CONFIG), "--store-dir", "/data/js")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert '"pb.results.team-b.>", "pb.results.team-b-batch.>", "_INBOX_team-b.>"' in text
    assert "password: $PANELBOARD_NATS_PASSWORD" in text and "$PB_TEST_TEAM_B_PASSWORD" in text
    cfg = load(TENANTS_CONFIG)
    assert tenants.permissions("team-a", cfg.governance.tenants["team-a"])["publish"]["allow"] == [
        "pb.jobs.>", "$JS.API.DIRECT.GET.PB_RESULTS.pb.results.team-a.>"]


def test_the_deploy_example_is_a_valid_nats_config():
    from panelboard.natsserver import binary

    env = {**os.environ, "PANELBOARD_NATS_PASSWORD": "x", "TEAM_A_NATS_PASSWORD": "y", "TEAM_B_NATS_PASSWORD": "z"}
    out = subprocess.run([binary(), "-c", str(ROOT / "deploy" / "nats-teams.conf"), "-t"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr
