"""The SQLite hot paths' connection (transport/db.SqliteInline), on real files: a held lock is
waited out without stalling the event loop, a commit outlives a killed process, and how often
it fsyncs follows the stream's own `nats.sync`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from panelboard.config import parse
from panelboard.transport import db

BASE = """
providers: {oa: {api: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  oa/small: {provider: oa, model: s, input_per_m: 1.0, output_per_m: 2.0, max_output_tokens: 1000}
tiers: {fast: {fallbacks: [{model: oa/small}]}}
intents: {fast: fast}
"""


def fresh(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    con.commit()
    con.close()


def test_only_a_stream_that_fsyncs_more_often_than_the_default_makes_commits_fsync() -> None:
    assert db.durable_for(parse(BASE)) is False
    assert db.durable_for(parse(BASE + "nats: {sync: always}\n")) is True
    assert db.durable_for(parse(BASE + "nats: {sync: 1s}\n")) is True


@pytest.mark.parametrize("durable, level", [(True, 2), (False, 1)])  # FULL, NORMAL
async def test_the_connection_syncs_as_told(tmp_path: Path, durable: bool, level: int) -> None:
    fresh(tmp_path / "g.db")
    conn = db.SqliteInline(tmp_path / "g.db", timeout_s=5.0, thread_name="t", durable=durable)
    try:
        await conn.transaction(lambda c: c.execute("INSERT INTO t (v) VALUES ('x')"))
        assert conn.conn is not None and conn.conn.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        conn.close()


@pytest.mark.parametrize("durable", [True, False])
async def test_a_lock_held_elsewhere_is_waited_out_while_the_loop_runs_on(tmp_path: Path, durable: bool) -> None:
    fresh(tmp_path / "g.db")
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer (a second broker) holds the write lock
    conn = db.SqliteInline(tmp_path / "g.db", timeout_s=60.0, thread_name="t", durable=durable)
    try:
        write = asyncio.create_task(conn.transaction(lambda c: c.execute("INSERT INTO t (v) VALUES ('mine')").lastrowid))
        ticks = 0
        while ticks < 20:  # the loop is not blocked on the lock: other work goes on meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        other.execute("INSERT INTO t (v) VALUES ('theirs')")
        other.execute("COMMIT")
        await asyncio.wait_for(write, 30)
        assert [v for (v,) in other.execute("SELECT v FROM t ORDER BY k")] == ["theirs", "mine"]
    finally:
        other.close()
        conn.close()


async def test_a_lock_held_past_the_timeout_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    fresh(tmp_path / "g.db")
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    conn = db.SqliteInline(tmp_path / "g.db", timeout_s=0.3, thread_name="t", durable=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await conn.transaction(lambda c: c.execute("INSERT INTO t (v) VALUES ('mine')"))
        assert 0.3 <= time.monotonic() - t0 < 30
        other.execute("ROLLBACK")
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    finally:
        other.close()
        conn.close()


async def test_a_failed_body_rolls_back_and_the_next_transaction_runs(tmp_path: Path) -> None:
    fresh(tmp_path / "g.db")
    conn = db.SqliteInline(tmp_path / "g.db", timeout_s=5.0, thread_name="t", durable=True)

    def half(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t (k, v) VALUES (1, 'half')")
        c.execute("INSERT INTO t (k, v) VALUES (1, 'clash')")  # IntegrityError

    try:
        with pytest.raises(sqlite3.IntegrityError):
            await conn.transaction(half)
        await conn.transaction(lambda c: c.execute("INSERT INTO t (k, v) VALUES (2, 'next')"))
        assert [v for (v,) in sqlite3.connect(tmp_path / "g.db").execute("SELECT v FROM t")] == ["next"]
    finally:
        conn.close()


@pytest.mark.parametrize("durable", [True, False])
def test_a_commit_outlives_the_process_killed_right_after_it(tmp_path: Path, durable: bool) -> None:
    """synchronous=NORMAL still survives kill -9 (only a host crash can take a commit back)."""
    fresh(tmp_path / "g.db")
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from panelboard.transport import db

        async def main():
            conn = db.SqliteInline(Path({str(tmp_path / "g.db")!r}), 5.0, "t", durable={durable})
            for i in range(200):
                await conn.transaction(lambda c, i=i: c.execute("INSERT INTO t (k, v) VALUES (?, 'r')", (i,)))
                print(i, flush=True)  # committed
            sys.stdin.read()  # killed here, never closed

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        last = -1
        deadline = time.monotonic() + 120
        while last < 199 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
        assert last == 199, f"the writer stopped after commit {last}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert sqlite3.connect(tmp_path / "g.db").execute("SELECT count(*) FROM t").fetchone()[0] == 200
