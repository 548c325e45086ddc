"""Governance end to end: real broker processes (several at once), a real nats-server, the real
mock provider over HTTP, and the database on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from panelboard.broker import budgets
from panelboard.broker.governance_store import SCHEMA_ENV, Store, admissions, teams, virtual_keys
from panelboard.clients import Client
from panelboard.transport import db
from panelboard.config import load
from panelboard.natsserver import NatsServer
from panelboard.stack import Stack
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost, decode_dead, decode_result, encode
from panelboard.schemas.errors import BadKey, InvalidJob, OverBudget, PromptTooLarge, RateLimited
from panelboard.schemas.job import Completed, Failed
from tests.conftest import ROOT, Mock, run_cli
from tests.support.ledger_dbs import PG_URL, drop_pg_schema, new_pg_schema

GOV_CONFIG = ROOT / "tests" / "data" / "governance.yaml"
CFG = load(GOV_CONFIG)
HELLO = [{"role": "user", "content": "Extract the total from: invoice 17, total $42."}]


@pytest.fixture(scope="module")
def gov(tmp_path_factory):
    """nats-server, the mock and a worker; each test starts the brokers it needs."""
    home = tmp_path_factory.mktemp("gov")
    server = NatsServer(home / "nats").start()
    stack = Stack(home / "stack", config=GOV_CONFIG, nats_url=server.url)
    stack.start(workers=1, broker=False, ledger=False)
    yield stack
    stack.stop()
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request, tmp_path):
    """(url, schema) of a fresh key database: a SQLite file, or a Postgres schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}", None
        return
    schema = await new_pg_schema("pb_gov")
    yield PG_URL, schema
    await drop_pg_schema(schema)


@pytest.fixture
async def brokers(gov):
    """Start broker (and ledger) processes on a given database; stopped, and the job queue
    emptied, when the test ends."""
    started: list[str] = []

    def start(url: str, schema: str | None, n: int = 1, ledger: bool = False) -> None:
        gov.env[db.URL_ENV] = url
        gov.env.pop(SCHEMA_ENV, None)
        if schema:
            gov.env[SCHEMA_ENV] = schema
        for i in range(n):
            name = f"broker-{uuid.uuid4().hex[:6]}-{i}"
            gov.start_broker(name)
            started.append(name)
        if ledger:
            name = f"ledger-{uuid.uuid4().hex[:6]}"
            gov.start_ledger(name)
            started.append(name)

    yield start
    for name in started:
        gov.stop_proc(name)
    async with Client(gov.nats_url) as c:
        await c.js.purge_stream(wire.JOBS_STREAM)


async def results(c: Client, handles, timeout: float = 60) -> list:
    return await asyncio.gather(*(h.result(timeout=timeout) for h in handles))


async def eventually(check, timeout: float = 20.0, every: float = 0.1):
    """Poll an async condition until it holds: settlement runs behind the results."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await check()
        if got or loop.time() > end:
            return got
        await asyncio.sleep(every)


async def team_state(store: Store, team: str):
    async with store.engine.connect() as conn:
        return (await conn.execute(select(teams).where(teams.c.name == team))).one()


async def test_budget_race_four_brokers(gov, brokers, database):
    """Given a team budget of $1.00 and four brokers, when 200 jobs of up to $0.05 each are
    submitted at once, then settled spend is at most $1.00 and the jobs refused are exactly
    those that did not fit (the answers cost exactly their estimate here, so nothing is freed
    by settlement and whether a job fits depends only on what was admitted before it)."""
    url, schema = database
    store = Store.open(url, schema=schema)
    try:
        team = "race-" + uuid.uuid4().hex[:6]
        await store.set_team(team, budget_nano=budgets.NANO, period="monthly")
        key, prefix = await store.create_key(team)
        brokers(url, schema, n=4)
        sizes = [4 + i % 5 for i in range(200)]  # max_tokens 4..8: $0.025 .. $0.05 at $6250/M output
        price = {mt: mt * 6250 * 1000 for mt in set(sizes)}  # nano-dollars
        async with Client(gov.nats_url, key=key, team=team) as c:
            t0 = time.perf_counter()
            handles = await asyncio.gather(*(c.submit(HELLO, intent="priced", max_tokens=mt) for mt in sizes))
            rs = await results(c, handles)
            elapsed = time.perf_counter() - t0
        done = [(r, mt) for r, mt in zip(rs, sizes) if isinstance(r, Completed)]
        refused = [(r, mt) for r, mt in zip(rs, sizes) if isinstance(r, Failed)]
        # A figure, not a bound (timed tests prove nothing on a shared box): BENCHMARKS.md quotes it.
        print(f"\nbudget race ({store.dialect}, 4 brokers): 200 jobs ended in {elapsed:.2f} s, {200 / elapsed:.0f} jobs/s "
              f"({len(done)} completed, {len(refused)} refused)")
        assert all(isinstance(r.error, OverBudget) for r, _ in refused), [r.error for r, _ in refused if not isinstance(r.error, OverBudget)][:3]
        assert done and refused and len(done) + len(refused) == 200
        assert all(round(r.cost_usd * 1e9) == price[mt] for r, mt in done)  # the estimate was the real cost

        spent = sum(price[mt] for _, mt in done)
        row = await eventually(lambda: _settled(store, team, spent))
        assert row, await team_state(store, team)
        assert row.spent_nano == spent <= budgets.NANO and row.reserved_nano == 0
        left = budgets.NANO - spent
        for r, mt in refused:  # it did not fit when it came, and would not fit even now
            assert r.error.remaining_usd * 1e9 < price[mt] and price[mt] > left
            assert f"remaining budget ${r.error.remaining_usd:.6f}" in r.error.hint
        # The key decides the team: the jobs claimed another one.
        costs = await _cost_records(c_url=gov.nats_url, team=team)
        assert sum(round(rec.cost_usd * 1e9) for rec in costs) == spent and {rec.key_prefix for rec in costs} == {prefix}
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(admissions))).scalar_one() == len(done)
    finally:
        await store.close()


async def test_shadow_calls_stay_inside_the_budget_four_brokers(gov, brokers, database):
    """Given a team budget of $1.00, shadow sampling on (every `mirrored` job mirrored at the
    live price, half the `mirrored_failing` ones to a tier that fails) and four brokers, when 160 jobs of up to $0.05 each are
    submitted at once, then everything charged to the team, live and shadow, is at most
    $1.00, and every reservation is released once the jobs and their mirrors have ended."""
    url, schema = database
    store = Store.open(url, schema=schema)
    try:
        team = "shadow-" + uuid.uuid4().hex[:6]
        await store.set_team(team, budget_nano=budgets.NANO, period="monthly")
        key, _ = await store.create_key(team)
        brokers(url, schema, n=4)
        jobs = [("mirrored" if i % 2 else "mirrored_failing", 4 + i % 5) for i in range(160)]
        async with Client(gov.nats_url, key=key, team=team) as c:
            handles = await asyncio.gather(*(c.submit(HELLO, intent=intent, max_tokens=mt) for intent, mt in jobs))
            rs = await results(c, handles)
        done = [r for r in rs if isinstance(r, Completed)]
        assert done and all(isinstance(r, Completed) or isinstance(r.error, OverBudget) for r in rs)

        def costs_of(recs, shadow: bool) -> int:
            return sum(round(r.cost_usd * 1e9) for r in recs if r.shadow == shadow)

        async def all_settled():
            row = await team_state(store, team)
            recs = await _cost_records(c_url=gov.nats_url, team=team)
            live, shadow = costs_of(recs, False), costs_of(recs, True)
            return (row, live, shadow) if row.reserved_nano == 0 and row.spent_nano == live + shadow else None

        got = await eventually(all_settled, timeout=60)
        assert got, (await team_state(store, team), len(done))
        row, live, shadow = got
        print(f"\nshadow budget race ({store.dialect}): {len(done)} of 160 completed, live ${live / 1e9:.4f} + shadow ${shadow / 1e9:.4f}"
              f" = ${row.spent_nano / 1e9:.4f} of $1.00, reserved {row.reserved_nano}")
        assert shadow > 0 and live + shadow == row.spent_nano <= budgets.NANO and row.shadow_spent_nano == shadow
        listed = next(t for t in await store.list_teams() if t["name"] == team)
        assert (listed["live_spent_nano"], listed["shadow_spent_nano"]) == (live, shadow)
        async with store.engine.connect() as conn:  # every mirror ended: the failed ones too
            open_mirrors = (await conn.execute(select(func.count()).select_from(admissions).where(admissions.c.shadow_done.is_(False)))).scalar_one()
        assert open_mirrors == 0
    finally:
        await store.close()


async def test_dead_replay_of_a_governed_job_runs_under_a_supplied_key(gov, brokers, tmp_path):
    """Given a governed job refused OverBudget (its dead letter keeps only the key's prefix),
    when the operator raises the budget and replays it with the key in an environment
    variable, then the job runs and completes as a new run; replayed without one (all that was
    possible before) it fails again with BadKey."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'replay.db'}"
    store = Store.open(url)
    try:
        team = "replay-" + uuid.uuid4().hex[:6]
        await store.set_team(team, budget_nano=0)
        key, prefix = await store.create_key(team)
        brokers(url, None)
        async with Client(gov.nats_url, key=key, team=team) as c:
            h = await c.submit(HELLO, intent="priced", max_tokens=8, job_id="replay-" + uuid.uuid4().hex[:8])
            first = await h.result(timeout=30)
            assert isinstance(first, Failed) and isinstance(first.error, OverBudget)
            await store.set_team(team, budget_nano=budgets.NANO)
            env = {"PB_REPLAY_KEY": key}
            # A key file that does not hold a key, and no key at all: clear errors, nothing replayed.
            (tmp_path / "bad.key").write_text("not-a-key\n")
            bad = run_cli("dead", "replay", "--job", h.id, "--nats-url", gov.nats_url, "--key-file", str(tmp_path / "bad.key"))
            assert bad.returncode == 2 and "does not hold a panelboard virtual key" in bad.stderr
            unset = run_cli("dead", "replay", "--job", h.id, "--nats-url", gov.nats_url, "--key-env", "PB_NO_SUCH_VAR")
            assert unset.returncode == 2 and "$PB_NO_SUCH_VAR is not set" in unset.stderr
            # Replayed without a key (as before), it fails again, BadKey: the letter held only the prefix.
            assert "replayed 1" in run_cli("dead", "replay", "--job", h.id, "--nats-url", gov.nats_url).stdout

            async def results_of() -> list:  # refusals are answered by seq (rejects), runs by job id
                rejected = [decode_result(d) for d in await stream_payloads(c.js, wire.RESULTS_STREAM, wire.rejects_of(team))]
                return [r for r in rejected if r.job_id == h.id] + [
                    decode_result(d) for d in await stream_payloads(c.js, wire.RESULTS_STREAM, wire.result(team, h.id))]

            async def bad_key():
                return next((r for r in await results_of() if isinstance(r, Failed) and isinstance(r.error, BadKey)), None)

            assert await eventually(bad_key, timeout=30) is not None
            out = run_cli("dead", "replay", "--job", h.id, "--nats-url", gov.nats_url, "--key-env", "PB_REPLAY_KEY", env=env)
            assert out.returncode == 0 and f"replayed 1 job(s) under key {prefix}" in out.stdout, out.stderr
            assert key not in out.stdout + out.stderr

            async def replayed():
                return next((r for r in await results_of() if isinstance(r, Completed)), None)

            done = await eventually(replayed, timeout=30)
        assert done is not None and round(done.cost_usd * 1e9) == 8 * 6250 * 1000
    finally:
        await store.close()


async def _settled(store: Store, team: str, spent: int):
    row = await team_state(store, team)
    return row if row.reserved_nano == 0 and row.spent_nano == spent else None


async def _cost_records(c_url: str, team: str) -> list:
    async with Client(c_url) as c:
        return [decode_cost(d) for d in await stream_payloads(c.js, wire.COSTS_STREAM, wire.cost(team))]


async def stream_payloads(js, stream: str, subject: str | None = None) -> list[bytes]:
    """Every message a stream holds (of one subject, if given), read back through the API."""
    return [m.data or b"" for m in await stream_messages(js, stream, subject)]


async def stream_messages(js, stream: str, subject: str | None = None) -> list:
    info = await js.stream_info(stream)
    out = []
    seq = info.state.first_seq
    while info.state.messages and seq <= info.state.last_seq:
        try:
            m = await js.get_msg(stream, seq=seq, subject=subject or ">", next=True)  # ">": past deleted messages too
        except NotFoundError:
            break
        out.append(m)
        seq = m.seq + 1
    return out


async def test_rpm_60_across_two_brokers(gov, brokers, database):
    """Given keys limited to 60 requests a minute and two brokers, when 100 jobs per key are
    submitted at once, then exactly 60 are admitted in that minute: with on_limit=fail the
    other 40 fail with RateLimited, with on_limit=wait they wait in the queue."""
    url, schema = database
    store = Store.open(url, schema=schema)
    try:
        fail_key, _ = await store.create_key("rpm", rpm=60, on_limit="fail")
        wait_key, wait_prefix = await store.create_key("rpm", rpm=60, on_limit="wait")
    finally:
        await store.close()
    brokers(url, schema, n=2)
    async with Client(gov.nats_url, key=fail_key, team="rpm") as c, Client(gov.nats_url, key=wait_key, team="rpm") as w:
        fh = await asyncio.gather(*(c.submit(HELLO, intent="fast") for _ in range(100)))
        wh = await asyncio.gather(*(w.submit(HELLO, intent="fast") for _ in range(100)))
        rs = await results(c, fh)
        assert sum(isinstance(r, Completed) for r in rs) == 60
        limited = [r.error for r in rs if isinstance(r, Failed)]
        assert len(limited) == 40 and all(isinstance(e, RateLimited) and 0 < e.retry_after_s <= 61 for e in limited)
        assert "60 requests per minute" in limited[0].message

        # The waiting key: 60 answered; the other 40 stay queued (they would run next minute).
        pending = {h.id: asyncio.ensure_future(h.result(timeout=90)) for h in wh}
        finished: list = []
        while len(finished) < 60:
            done, _ = await asyncio.wait([f for f in pending.values() if not f.done()], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            assert done, f"only {len(finished)} of the waiting key's jobs finished"
            finished = [f for f in pending.values() if f.done()]
        await asyncio.sleep(1.0)  # a grace period in which nothing more may be admitted
        finished = [f.result() for f in pending.values() if f.done()]
        assert len(finished) == 60 and all(isinstance(r, Completed) for r in finished)
        info = await w.js.stream_info(wire.JOBS_STREAM)
        assert info.state.messages == 40  # waiting in the stream, not lost, not failed
        for f in pending.values():
            f.cancel()


async def raw_submit(c: Client, payload: bytes, job_id: str) -> Failed | Completed:
    """Publish raw bytes as c's team and wait for their one answer: the job's result, or the
    reject for the publish's sequence."""
    key = (c.team, job_id)
    fut = c._future(key)
    ack = await c.js.publish(wire.jobs(c.team, "fast"), payload)
    early = c._early.pop((c.team, ack.seq), None)
    if early is not None:
        return early
    c._seqs[(c.team, ack.seq)] = key
    return await asyncio.wait_for(asyncio.shield(fut), 30)


async def test_bad_input_gets_clear_failures_and_nothing_crashes(gov, brokers, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}"
    store = Store.open(url)
    key, _ = await store.create_key("bad-input")
    brokers(url, None)
    async with Client(gov.nats_url, key=key, team="bad-input") as c:
        async def raw(payload: bytes, job_id: str) -> Failed | Completed:
            return await raw_submit(c, payload, job_id)

        def body(job_id: str, **over) -> dict:
            base = {"id": job_id, "team": c.team, "intent": "fast", "key": key, "request": {"messages": HELLO}}
            for k, v in over.items():
                if k == "request":
                    base["request"] = {**base["request"], **v}
                else:
                    base[k] = v
            return base

        cases = {
            "sql-team": (body("sql-team", team="x'; DROP TABLE teams;--"), InvalidJob),
            "sql-key": (body("sql-key", key="pb_x'; DROP TABLE virtual_keys;--"), BadKey),
            "sql-feature": (body("sql-feature", feature="'; DELETE FROM admissions; --" * 10), InvalidJob),
            "api-base": (body("api-base", request={"api_base": "http://169.254.169.254/latest"}), InvalidJob),
            "base-url": (body("base-url", base_url="http://attacker.example"), InvalidJob),
            "huge": (body("huge", request={"messages": [{"role": "user", "content": "x" * 70_000}]}), PromptTooLarge),
            "nested": (body("nested", metadata={"a": json.loads("[" * 100 + "]" * 100)}), InvalidJob),
        }
        outs = {}
        for job_id, (payload, _) in cases.items():
            outs[job_id] = await raw(json.dumps(payload).encode(), job_id)
        # Nested past what a decoder can recurse into, and bytes that are not UTF-8.
        outs["very-nested"] = await raw(b'{"id":"very-nested","team":"bad-input","metadata":' + b"[" * 5000 + b"]" * 5000 + b"}", "very-nested")
        bad_utf8 = json.dumps(body("bad-utf8")).encode().replace(b"invoice 17", b"invoice \xff\xfe")
        outs["bad-utf8"] = await raw(bad_utf8, "bad-utf8")
        # SQL in the model name and the metadata is data, carried and never executed.
        fine = await (await c.submit(HELLO, intent="fast", metadata={"q": "'; DROP TABLE admissions;--"})).result(timeout=30)
        odd_model = await raw(json.dumps(body("odd-model", request={"model": "'; DROP TABLE cost_records;--"})).encode(), "odd-model")

    expected = {**{k: v[1] for k, v in cases.items()}, "very-nested": InvalidJob, "bad-utf8": InvalidJob}
    for job_id, kind in expected.items():
        r = outs[job_id]
        assert isinstance(r, Failed) and isinstance(r.error, kind), (job_id, r)
        assert r.error.hint and key not in r.error.message + r.error.hint
    assert "api_base" in outs["api-base"].error.message and "70" in outs["huge"].error.message
    assert isinstance(fine, Completed) and isinstance(odd_model, Completed)
    # Nothing was dropped or broken: the tables are all there and the broker still answers.
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(virtual_keys))).scalar_one() == 1
        assert (await conn.execute(select(func.count()).select_from(admissions))).scalar_one() == 2
    await store.close()
    assert all(p.poll() is None for n, p in gov.procs.items() if n.startswith("broker"))


async def test_each_bad_input_gets_one_failed_result_and_never_reaches_the_provider(gov, brokers, tmp_path):
    """Given a governed stack, when jobs arrive with a forbidden field spelled with JSON escapes
    or numbers no provider accepts, then each gets exactly one Failed result (InvalidJob, its
    message naming the field, with a hint), none is sent to the provider, and the broker
    serves the next job."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gov.db'}"
    store = Store.open(url)
    key, _ = await store.create_key("bad-numbers")
    await store.close()
    brokers(url, None)
    run = uuid.uuid4().hex[:6]
    good = {"role": "user", "content": "hi"}

    def body(job_id: str, team: str, request: bytes = b"", top: bytes = b"") -> bytes:
        return (b'{"id":"%s","team":"%s","intent":"fast","key":"%s",%s"request":{"messages":[%s]%s}}'
                % (job_id.encode(), team.encode(), key.encode(), top, json.dumps(good).encode(), request))

    cases = {  # job id -> (what follows the messages in the request, top-level fields, the message names)
        "esc-api-base": (b',"api\\u005fbase":"http://169.254.169.254/latest"', b"", "request.api_base"),
        "esc-extra-body": (b',"extra\\u005Fbody":{"x":1}', b"", "request.extra_body"),
        "esc-base-url": (b"", b'"\\u0062ase_url":"http://attacker.example",', "base_url"),
        "esc-headers": (b"", b'"he\\u0061ders":{"Authorization":"x"},', "headers"),
        "max-tokens-negative": (b',"max_tokens":-5', b"", "max_tokens is -5"),
        "max-tokens-zero": (b',"max_tokens":0', b"", "max_tokens is 0"),
        "max-tokens-absurd": (b',"max_tokens":1000000000000000', b"", "max_tokens is 1000000000000000"),
        "max-tokens-escaped": (b',"max\\u005ftokens":-5', b"", "max_tokens is -5"),
        "temperature": (b',"temperature":9', b"", "temperature is 9"),
        "top-p": (b',"top_p":-1', b"", "top_p is -1"),
    }
    async with Client(gov.nats_url, key=key, team="bad-numbers") as c:
        await c._listen(c.team)
        ids = {name: f"{name}-{run}" for name in cases}
        outs = {name: await raw_submit(c, body(ids[name], c.team, request, top), ids[name]) for name, (request, top, _) in cases.items()}
        after = await (await c.submit(HELLO, intent="fast", max_tokens=8)).result(timeout=30)

        async def settled() -> bool:
            info = await c.js.consumer_info(wire.JOBS_STREAM, "broker")
            return info.num_ack_pending == 0 and info.num_pending == 0

        assert await eventually(settled)  # nothing left to redeliver: the counts below are final
        counts = {name: len(await stream_messages(c.js, wire.RESULTS_STREAM, wire.result(c.team, ids[name]))) for name in cases}
        # Refused before a claim: each answer is on pb.rejects.<team>.<seq>, one per publish
        rejects = (await c.js.stream_info(wire.RESULTS_STREAM, subjects_filter=wire.rejects_of(c.team))).state.subjects or {}

    for name, (_, _, fragment) in cases.items():
        r = outs[name]
        assert isinstance(r, Failed) and isinstance(r.error, InvalidJob) and fragment in r.error.message and r.error.hint, (name, r)
    assert counts == {name: 0 for name in cases}
    assert len(rejects) == len(cases) and set(rejects.values()) == {1}
    called = {e["request_id"].split(":")[0] for e in Mock(gov.mock_url).log()}
    assert not called & set(ids.values()), called & set(ids.values())
    assert isinstance(after, Completed)
    assert all(p.poll() is None for n, p in gov.procs.items() if n.startswith("broker"))


async def test_no_full_key_in_logs_streams_or_database(gov, brokers, tmp_path):
    """Key hygiene: after a run that uses, revokes, rotates and misuses keys, neither the
    processes' logs, nor any stream, nor the database holds a whole key."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'hygiene.db'}"
    env = {db.URL_ENV: url, "PANELBOARD_CONFIG": str(GOV_CONFIG)}
    made = [json.loads(run_cli("keys", "create", "--team", "hyg", "--json", env=env).stdout) for _ in range(3)]
    live, revoked, rotated = (m["key"] for m in made)
    assert run_cli("keys", "revoke", made[1]["prefix"], env=env).returncode == 0
    out = run_cli("keys", "rotate", made[2]["prefix"], "--json", env=env)
    assert out.returncode == 0, out.stderr
    new = json.loads(out.stdout)["key"]
    assert run_cli("teams", "set", "hyg", "--budget-usd", "0.01", env=env).returncode == 0
    listed = run_cli("keys", "list", "--json", env=env).stdout
    secrets = [live, revoked, rotated, new]
    assert not any(k in listed for k in secrets) and made[0]["prefix"] in listed

    brokers(url, None, ledger=True)
    async with Client(gov.nats_url, key=live, team="hyg") as c:
        ok = await (await c.submit(HELLO, intent="fast", max_tokens=8)).result(timeout=30)
        over = await (await c.submit(HELLO, intent="priced", max_tokens=8)).result(timeout=30)
        for k, kind in ((revoked, BadKey), (rotated, BadKey), (new, Completed)):
            async with Client(gov.nats_url, key=k, team="hyg") as other:
                r = await (await other.submit(HELLO, intent="fast", max_tokens=8)).result(timeout=30)
                assert isinstance(r, Completed) if kind is Completed else isinstance(r.error, kind)
        # Misuse: the key inside an undecodable body, a refused field, an oversized job.
        def job(i: int, **over) -> bytes:
            body = {"id": f"misuse-{i}-{c.client_id}", "team": "hyg", "intent": "fast", "key": live, "request": {"messages": HELLO, "max_tokens": 8}}
            return json.dumps({**body, **over}).encode()

        escaped = live.replace("_", "\\u005f").encode()
        misuse = [
            (b'{"id": "x", "key": "' + live.encode() + b'", "request": 12', Failed),
            (job(1, request={"messages": HELLO, "api_key": live}), Failed),
            (job(2, request={"messages": [{"role": "user", "content": live * 3000}]}), Failed),
            # ...and wherever else a client can write a string: each used to be echoed or stored.
            (job(3, metadata={"note": f"my key is {live}", live: 1}), Completed),  # echoed into the result
            (job(4, priority=live), Failed),  # msgspec's decode error quotes the value back
            (job(5, request={"messages": [{"role": live, "content": "hi"}]}), Failed),
            (job(6, team=live + "!"), Failed),  # the invalid-team message quotes the team
            (job(7, feature=live), Completed),  # a cost record column
            (job(8, request={"messages": [{"role": "user", "content": f"use {live} for the call"}], "max_tokens": 8}), Completed),
            (job(9, request={"messages": [{"role": "user", "content": "x" * 70_000}]})[:65_536 - 20] + live.encode() + b'"}]}}', Failed),
            (b'{"id": "y", "key": "' + escaped + b'", "request": 12', Failed),
            (job(11, metadata={"k": "KEY"}).replace(b'"KEY"', b'"' + escaped + b'"'), Completed),  # decodes to the key
        ]
        for i, (payload, kind) in enumerate(misuse):
            job_id = f"misuse-{i}-{c.client_id}"
            r = await raw_submit(c, payload, job_id)
            assert isinstance(r, kind) and live not in encode(r).decode() and live[9:] not in encode(r).decode(), (i, r)
    assert isinstance(ok, Completed) and isinstance(over, Failed) and isinstance(over.error, OverBudget)

    store = Store.open(url)
    try:  # the ledger has the cost records (with the key's prefix), settlement has run
        await eventually(lambda: _ledger_has(store, 2))
    finally:
        await store.close()
    for name in list(gov.procs):
        if name.startswith(("broker", "ledger")):
            gov.stop_proc(name)  # flush logs

    # Any 11 characters of a secret in a row count (a key cut in the middle kept that many).
    pieces = {k[:8]: {k[9:][i:i + 11].encode() for i in range(len(k) - 9 - 10)} for k in secrets}

    def exposed(where: str, data: bytes) -> list[str]:
        return [f"{where}: {p}" for p, bits in pieces.items() if any(b in data for b in bits)]

    found = []
    # The stack's files (logs, the mock's request log), the database, and nats-server's own store.
    for path in [*Path(gov.home).rglob("*"), *tmp_path.glob("hygiene.db*"), *(Path(gov.home).parent / "nats").rglob("*")]:
        if path.is_file():
            found += exposed(f"{path.parent.name}/{path.name}", path.read_bytes())
    # Every message of every stream the server holds (KV buckets too), read with plain nats-py:
    # subject, headers and body, and a dead letter's raw payload (base64 in its body).
    nc = await nats.connect(gov.nats_url)
    scanned = 0
    try:
        js = nc.jetstream()
        streams = [s.config.name for s in await js.streams_info()]
        assert {wire.RESULTS_STREAM, wire.DEAD_STREAM, wire.COSTS_STREAM} <= set(streams)
        dead = []
        for stream in streams:
            for m in await stream_messages(js, stream):
                scanned += 1
                found += exposed(f"{stream} #{m.seq}", m.subject.encode() + json.dumps(m.headers or {}).encode() + (m.data or b""))
                if stream == wire.DEAD_STREAM:
                    letter = decode_dead(m.data)
                    dead.append(letter)
                    found += exposed(f"{stream} #{m.seq} raw", letter.raw or b"")
    finally:
        await nc.close()
    print(f"\nhygiene: {len(misuse)} misuse jobs; {scanned} messages in {len(streams)} streams and every file under the stack and nats-server's store: {len(found)} exposures")
    assert not found, found
    assert any(made[0]["prefix"] in encode(d).decode() + (d.raw or b"").decode("utf-8", "replace") for d in dead)  # the prefix is kept, for whoever inspects


async def _ledger_has(store: Store, n: int) -> bool:
    async with store.engine.connect() as conn:
        try:
            return (await conn.execute(text("SELECT count(*) FROM cost_records WHERE key_prefix IS NOT NULL"))).scalar_one() >= n
        except SQLAlchemyError:
            return False


def test_cli_teams_and_keys(tmp_path):
    env = {db.URL_ENV: f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", "PANELBOARD_CONFIG": str(GOV_CONFIG)}
    out = run_cli("teams", "set", "cli-team", "--budget-usd", "2.5", "--period", "daily", "--soft-usd", "2", "--rpm", "100", env=env)
    assert out.returncode == 0 and "budget 2.5000 USD (daily)" in out.stdout, out.stderr
    assert run_cli("teams", "set", "cli-team", "--rpm", "none", env=env).returncode == 0
    row = json.loads(run_cli("teams", "list", "--json", env=env).stdout)[0]
    assert (row["name"], row["budget_nano"], row["soft_nano"], row["rpm"], row["remaining_nano"]) == ("cli-team", 2_500_000_000, 2_000_000_000, None, 2_500_000_000)
    assert (row["live_spent_nano"], row["shadow_spent_nano"]) == (0, 0)
    table = run_cli("teams", "list", env=env).stdout
    assert "cli-team" in table and all(w in table.splitlines()[0].split() for w in ("spent", "live", "shadow", "reserved"))
    bad = run_cli("keys", "create", "--team", "x'; DROP TABLE teams;--", env=env)
    assert bad.returncode == 2 and "not a valid name" in bad.stderr
    unknown = run_cli("keys", "create", "--team", "cli-team", "--tiers", "gold", env=env)
    assert unknown.returncode == 2 and "gold" in unknown.stderr
    made = run_cli("keys", "create", "--team", "cli-team", "--tiers", "fast", "--expires", "1d", "--max-parallel", "2", env=env)
    assert made.returncode == 0 and made.stdout.startswith("pb_") and "shown once" in made.stderr
    listed = run_cli("keys", "list", "--team", "cli-team", env=env).stdout
    assert made.stdout.strip()[:8] in listed and made.stdout.strip() not in listed and "active" in listed
    assert run_cli("keys", "revoke", "pb_nope0", env=env).returncode == 1


async def test_auto_mode_turns_on_with_the_first_key(gov, brokers, tmp_path):
    """Without `require_keys`, jobs need no key until the first key is created; then they do."""
    auto = tmp_path / "auto.yaml"
    auto.write_text(GOV_CONFIG.read_text().replace("require_keys: true", "refresh_s: 0.3"))
    url = f"sqlite+aiosqlite:///{tmp_path / 'auto.db'}"
    gov.config, config = str(auto), gov.config
    try:
        brokers(url, None)
    finally:
        gov.config = config
    async with Client(gov.nats_url) as c:
        assert isinstance(await (await c.submit(HELLO, intent="fast")).result(timeout=30), Completed)
        assert not (tmp_path / "auto.db").exists()  # off: the broker did not even create the database
        store = Store.open(url)
        key, _ = await store.create_key("auto")
        await store.close()

        async def refused() -> bool:
            r = await (await c.submit(HELLO, intent="fast")).result(timeout=30)
            return isinstance(r, Failed) and isinstance(r.error, BadKey) and "requires a virtual key" in r.error.message

        assert await eventually(refused, timeout=10, every=0.2)
    async with Client(gov.nats_url, key=key, team="auto") as k:
        assert isinstance(await (await k.submit(HELLO, intent="fast")).result(timeout=30), Completed)
