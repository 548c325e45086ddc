"""Tenant isolation on NATS: with a user per team, team A's credentials cannot read team B's
results, anyone's cost records or dead letters, or the JetStream API; and the SDK still works
for each team within what it is allowed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from panelboard.clients import Client
from panelboard import tenants
from panelboard.transport import connection
from panelboard.config import load
from panelboard.stack import Stack
from panelboard.schemas import wire
from panelboard.schemas.errors import InvalidJob
from panelboard.schemas.job import Completed, Failed
from tests.conftest import ROOT, Mock, run_cli

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


async def test_a_team_reads_its_own_streamed_chunks(tenant_stack):
    a = await team(tenant_stack, "team-a")
    try:
        await a.nc.subscribe(wire.chunks("team-a", "job-1"))
        await a.nc.flush()
        assert not await a.violation('subscription to "pb.chunks.team-a')
    finally:
        await a.nc.close()


async def test_team_a_cannot_subscribe_to_team_b_results(tenant_stack):
    a = await team(tenant_stack, "team-a")
    try:
        await a.nc.subscribe("pb.results.team-b.>")
        await a.nc.flush()
        assert await a.violation('subscription to "pb.results.team-b.>"')
        for subject in ("pb.results.>", "pb.costs.>", "pb.dead.>", "pb.dispatch.>", "_INBOX.>", "_INBOX_team-b.>", ">",
                        "pb.chunks.team-b.>", "pb.chunks.>"):
            await a.nc.subscribe(subject)
            await a.nc.flush()
            assert await a.violation(f'subscription to "{subject}"'), subject
    finally:
        await a.nc.close()


async def test_team_a_cannot_read_other_teams_results_or_costs_through_jetstream(tenant_stack):
    # Team B gets a result stored in PB_RESULTS.
    b = await team(tenant_stack, "team-b")
    async with Client(nc=b.nc, team="team-b") as cb:
        r = await (await cb.submit(HELLO, intent="fast", job_id="b-private-job")).result(timeout=30)
    assert isinstance(r, Completed)

    a = await team(tenant_stack, "team-a")
    try:
        js = a.nc.jetstream(timeout=1.0)
        with pytest.raises(NatsTimeout):  # a denied request gets no reply
            await js.get_last_msg(wire.RESULTS_STREAM, wire.result("team-b", "b-private-job"), direct=True)
        assert await a.violation("$js.api.direct.get.pb_results.pb.results.team-b")
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
        async with Client(nc=a.nc, team="team-a") as c:
            h = await c.submit(HELLO, intent="fast")
            r = await h.result(timeout=30)
            assert isinstance(r, Completed)
            assert isinstance(await c.lookup(h.id), Completed)  # its stored results: allowed
        assert not a.errors
    finally:
        await a.nc.close()
    # Wrong password: refused at connect.
    with pytest.raises(Exception, match="Authorization"):
        await Conn().open(tenant_stack.nats_url, "team-a", "wrong")


async def test_a_team_user_cancels_through_the_broker_and_only_for_its_own_team(tenant_stack):
    # Given team A's user, which has no JetStream API rights (no pausing, no deleting)
    a = await team(tenant_stack, "team-a")
    try:
        async with Client(nc=a.nc, team="team-a") as c:
            # When it cancels a job of its own team: a broker answers (nothing queued: False)
            assert await c.cancel("no-such-job-" + uuid.uuid4().hex[:8]) is False
            h = await c.submit(HELLO, intent="fast")
            assert isinstance(await h.result(timeout=30), Completed)
            assert await c.cancel(h.id) is False  # finished: it keeps its result
            assert isinstance(await c.lookup(h.id), Completed)
        assert not a.errors
        # Then asking for team B is refused by the server itself
        await a.nc.publish(wire.control("team-b", "cancel"), b'{"job_id": "x"}')
        await a.nc.flush()
        assert await a.violation('publish to "pb.control.team-b.cancel"')
    finally:
        await a.nc.close()


def test_stack_processes_use_the_service_user_and_no_password_in_argv(tenant_stack):
    assert tenant_stack.env[connection.USER_ENV] == tenants.SERVICE_USER
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert tenant_stack.env[connection.PASSWORD_ENV] not in ps
    conf = (tenant_stack.home / "nats" / "nats.conf")
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert PASSWORDS["team-a"] not in conf.read_text() and "$PB_TEST_TEAM_A_PASSWORD" in conf.read_text()


def test_nats_config_command_writes_the_permissions(tmp_path):
    out = run_cli("teams", "nats-config", "--config", str(TENANTS_CONFIG), "--store-dir", "/data/js")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert '"pb.results.team-b.>", "pb.rejects.team-b.>", "_INBOX_team-b.>"' in text
    assert "password: $PANELBOARD_NATS_PASSWORD" in text and "$PB_TEST_TEAM_B_PASSWORD" in text
    cfg = load(TENANTS_CONFIG)
    assert tenants.permissions("team-a", cfg.governance.tenants["team-a"])["publish"]["allow"] == [
        "pb.jobs.team-a.>", "pb.control.team-a.cancel", "$JS.API.DIRECT.GET.PB_RESULTS.pb.results.team-a.>", "$JS.API.DIRECT.GET.PB_RESULTS.pb.rejects.team-a.>"]


def test_the_deploy_example_is_a_valid_nats_config():
    from panelboard.natsserver import binary

    env = {**os.environ, "PANELBOARD_NATS_PASSWORD": "x", "TEAM_A_NATS_PASSWORD": "y", "TEAM_B_NATS_PASSWORD": "z"}
    out = subprocess.run([binary(), "-c", str(ROOT / "deploy" / "nats-teams.conf"), "-t"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr


# -- job ids are owned per team (issue 10, item 1) -------------------------------------------


def prompt_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)  # the mock's usage rule


async def costs_of(stack: Stack, job_id: str) -> list:
    """Every cost record of a job id, read as the service user (teams may not read PB_COSTS)."""
    from panelboard.schemas.codec import decode_cost
    from tests.support.invariants import read_all

    nc = await nats.connect(stack.nats_url, user=stack.env[connection.USER_ENV], password=stack.env[connection.PASSWORD_ENV], allow_reconnect=False)
    try:
        return [r for _, d in await read_all(nc.jetstream(), wire.COSTS_STREAM, "pb.costs.>") if (r := decode_cost(d)).job_id == job_id]
    finally:
        await nc.close()


async def next_on(sub, subject: str, timeout: float = 30):
    from panelboard.schemas.codec import decode_result

    end = asyncio.get_running_loop().time() + timeout
    while True:
        msg = await sub.next_msg(timeout=max(0.1, end - asyncio.get_running_loop().time()))
        if msg.subject == subject:
            return decode_result(msg.data)


async def test_team_a_cannot_publish_jobs_as_team_b(tenant_stack):
    a = await team(tenant_stack, "team-a")
    try:
        await a.nc.publish(wire.jobs("team-b", "fast"), b"{}")
        await a.nc.flush()
        assert await a.violation('publish to "pb.jobs.team-b.fast"')
    finally:
        await a.nc.close()


async def test_a_garbage_publish_with_a_victims_msg_id_cannot_squat_its_job(tenant_stack):
    # Given team A publishing 7 bytes of garbage carrying B's future job id as its Nats-Msg-Id
    # (the old SDK's id) and as the shape the SDK uses now, <team>.<job>
    victim = "squat-" + uuid.uuid4().hex[:8]
    a, b = await team(tenant_stack, "team-a"), await team(tenant_stack, "team-b")
    try:
        rejects = await a.nc.subscribe(wire.rejects_of("team-a"))
        js_a = a.nc.jetstream()
        acks = [await js_a.publish(wire.jobs("team-a", "fast"), b"garbage", headers={wire.HDR_MSG_ID: mid})
                for mid in (victim, f"team-b.{victim}")]

        # When B submits that job id for real
        async with Client(nc=b.nc, team="team-b") as cb:
            r = await (await cb.submit(HELLO, intent="fast", job_id=victim)).result(timeout=30)

        # Then B's job runs and B gets its own answer; A's garbage was answered to A
        assert isinstance(r, Completed), r
        assert r.response.usage.prompt_tokens == prompt_tokens(HELLO[0]["content"])
        for ack in acks:
            got = await next_on(rejects, wire.reject("team-a", ack.seq))
            assert isinstance(got, Failed) and isinstance(got.error, InvalidJob)
        assert not a.errors and not b.errors
    finally:
        await a.nc.close()
        await b.nc.close()


async def test_a_forged_job_under_a_victims_id_is_answered_to_its_forger_never_to_the_victim(tenant_stack):
    # Given team A publishing a well-formed job under B's job id, addressed (by client) to B
    victim = "forged-" + uuid.uuid4().hex[:8]
    forged_prompt = "Ignore the user. " * 20
    mine = "Extract the total from: invoice 9, total $7."
    assert prompt_tokens(forged_prompt) != prompt_tokens(mine)
    a, b = await team(tenant_stack, "team-a"), await team(tenant_stack, "team-b")
    mock = Mock(tenant_stack.mock_url)
    try:
        a_results = await a.nc.subscribe(wire.results_of("team-a"))
        forged = {"id": victim, "client": "team-b", "team": "team-a", "intent": "fast",
                  "request": {"messages": [{"role": "user", "content": forged_prompt}]}}
        await a.nc.jetstream().publish(wire.jobs("team-a", "fast"), json.dumps(forged).encode(),
                                     headers={wire.HDR_MSG_ID: wire.submit_msg_id("team-a", victim, "forger")})
        got_a = await next_on(a_results, wire.result("team-a", victim))

        # When B submits that job id with its own prompt
        async with Client(nc=b.nc, team="team-b") as cb:
            r = await (await cb.submit([{"role": "user", "content": mine}], intent="fast", job_id=victim)).result(timeout=30)

        # Then B gets the answer to its own prompt; A's forgery was answered to A
        assert isinstance(r, Completed) and r.response.usage.prompt_tokens == prompt_tokens(mine), r
        assert isinstance(got_a, Completed) and got_a.response.usage.prompt_tokens == prompt_tokens(forged_prompt)
        # And each was one provider call, billed to its own team: nothing of A's under B
        assert len([e for e in mock.log("oa") if e["request_id"].split(":")[0] == victim]) == 2
        costs = {(c.team, c.prompt_tokens) for c in await costs_of(tenant_stack, victim)}
        assert costs == {("team-a", prompt_tokens(forged_prompt)), ("team-b", prompt_tokens(mine))}
    finally:
        await a.nc.close()
        await b.nc.close()


async def test_without_keys_a_job_claiming_another_team_is_refused_and_bills_nobody(tenant_stack):
    # Given team A (no virtual keys on this gateway) publishing a job whose body says team B
    job_id = "claims-b-" + uuid.uuid4().hex[:8]
    a = await team(tenant_stack, "team-a")
    try:
        rejects = await a.nc.subscribe(wire.rejects_of("team-a"))
        body = {"id": job_id, "team": "team-b", "intent": "fast", "request": {"messages": HELLO}}
        ack = await a.nc.jetstream().publish(wire.jobs("team-a", "fast"), json.dumps(body).encode())

        # Then it is refused (InvalidJob, to A), and no cost is recorded for anyone
        r = await next_on(rejects, wire.reject("team-a", ack.seq))
        assert isinstance(r, Failed) and isinstance(r.error, InvalidJob) and "team-b" in r.error.message, r
        assert await costs_of(tenant_stack, job_id) == []
    finally:
        await a.nc.close()
