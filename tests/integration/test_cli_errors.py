"""What the CLI and the SDK do when something is wrong: a clear message naming the problem and
the fix, a non-zero exit, within a bound; never a hang or a traceback. Each test runs the real
`panelboard` command against a real nats-server (or a port nothing listens on)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from panelboard.clients import Client
from panelboard.clients.errors import PromptTooLargeError, ServerUnreachable
from panelboard.schemas.errors import PromptTooLarge
from tests.conftest import TEST_CONFIG, run_cli
from tests.integration.test_batch import openai_line_of

# A first connect gives up after connection.CONNECT_PATIENCE_S (5 s); the rest is the CLI's own
# start-up, which takes several seconds on a busy 2-core machine.
FAIL_FAST_S = 25


def dead_url() -> str:
    """A port on this machine that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


def no_stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PANELBOARD_NATS_URL", "PANELBOARD_HOME", "PANELBOARD_KEY")}
    env["PANELBOARD_HOME"] = str(tmp_path / "no-stack")
    return env


def assert_clean_failure(out: subprocess.CompletedProcess[str], *says: str, rc: int = 2) -> None:
    assert out.returncode == rc, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    for word in says:
        assert word in out.stderr, (word, out.stderr)


def timed_cli(*args: str, **kw) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    out = run_cli(*args, **kw)
    return out, time.monotonic() - t0


# -- an unreachable server ----------------------------------------------------------------


@pytest.mark.parametrize("cmd", [
    ["submit", "hi"],
    ["dead", "list"],
    ["batch", "status", "b1", "--config", str(TEST_CONFIG)],
])
def test_an_unreachable_nats_url_fails_within_seconds_naming_the_url_and_the_fix(cmd, tmp_path):
    url = dead_url()
    out, took = timed_cli(*cmd, "--nats-url", url, timeout=120, env=no_stack_env(tmp_path))
    assert_clean_failure(out, f"cannot connect to NATS at {url}", "ConnectionRefusedError", "panelboard up", "--nats-url")
    assert took < FAIL_FAST_S, f"took {took:.1f}s"
    # Reported once, not once per retry (it was 1,189 `nats.error` lines in 5 minutes)
    assert "nats.error" not in out.stderr and len(out.stderr.splitlines()) <= 3, out.stderr


async def test_the_sdk_connect_is_bounded_and_raises_server_unreachable():
    url = dead_url()
    t0 = time.monotonic()
    with pytest.raises(ServerUnreachable, match=f"cannot connect to NATS at {url}") as e:
        async with Client(url):
            pass
    assert isinstance(e.value, ConnectionError)
    assert time.monotonic() - t0 < 10  # the patience is 5 s


def test_submit_with_no_stack_says_where_a_url_comes_from(tmp_path):
    out = run_cli("submit", "hi", env=no_stack_env(tmp_path), cwd=str(tmp_path))
    assert_clean_failure(out, "no NATS server", "--nats-url", "PANELBOARD_NATS_URL", "panelboard up")


# -- input the user must fix ----------------------------------------------------------------


def test_batch_submit_of_a_missing_path_or_a_directory_says_so_before_connecting(tmp_path):
    env = no_stack_env(tmp_path)  # no server at all: the file is checked first
    missing = run_cli("batch", "submit", str(tmp_path / "nope.jsonl"), env=env)
    assert_clean_failure(missing, f"no such file: {tmp_path / 'nope.jsonl'}", "JSONL batch file")
    folder = run_cli("batch", "submit", str(tmp_path), env=env)
    assert_clean_failure(folder, f"{tmp_path} is a directory", "not a folder")


@pytest.mark.parametrize("args, usage", [
    (["batch", "submit", "f.jsonl", "--windw", "8"], "usage: panelboard batch submit"),
    (["keys", "create", "--team", "a", "--rmp", "5"], "usage: panelboard keys create"),
    (["report", "usage", "--dayz", "1"], "usage: panelboard report usage"),
])
def test_a_flag_typo_shows_the_subcommands_usage(args, usage, tmp_path):
    out = run_cli(*args, env=no_stack_env(tmp_path))
    assert_clean_failure(out, usage, f"unrecognized arguments: {args[-2]}")
    assert "{up,broker" not in out.stderr  # not the top-level usage


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("providers:\n  a: [1\n  b: 2\n")
    out = run_cli("status", "--config", str(bad), "--nats-url", dead_url(), env=no_stack_env(tmp_path))
    assert_clean_failure(out, f'"{bad}", line 2', "not valid YAML")
    assert "<unicode string>" not in out.stderr


def test_key_on_the_command_line_warns_and_key_file_does_not(tmp_path):
    env, url = no_stack_env(tmp_path), dead_url()
    loud = run_cli("submit", "hi", "--key", "pb_secret", "--nats-url", url, env=env)
    assert_clean_failure(loud, "--key puts the key in the process list", "PANELBOARD_KEY", "--key-file")
    assert "pb_secret" not in loud.stderr
    kf = tmp_path / "key"
    kf.write_text("pb_secret\n")
    quiet = run_cli("submit", "hi", "--key-file", str(kf), "--nats-url", url, env=env)
    assert_clean_failure(quiet, "cannot connect to NATS")
    assert "process list" not in quiet.stderr
    missing = run_cli("submit", "hi", "--key-file", str(tmp_path / "none"), "--nats-url", url, env=env)
    assert_clean_failure(missing, f"cannot read the key file {tmp_path / 'none'}")


# -- against the running stack --------------------------------------------------------------


def bcli(stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run_cli("batch", *args, "--nats-url", stack.nats_url, "--config", str(TEST_CONFIG), timeout=timeout)


def test_oversized_lines_go_to_the_errors_file_with_their_custom_id_while_the_rest_run(stack, tmp_path):
    # 600 KB: over governance.max_job_bytes (the broker would answer it unread, custom_id
    # lost); 10 MB: over the server's 1 MiB max_payload (the publish raised MaxPayloadError,
    # killed the submit and left the batch in_progress for ever).
    src = tmp_path / "big.jsonl"
    lines = [openai_line_of("ok-1", "hi"), openai_line_of("big-600k", "x" * 600_000), openai_line_of("big-10m", "y" * 10_000_000),
             openai_line_of("ok-2", "hello")]
    src.write_text("\n".join(lines) + "\n")
    bid = "big-" + uuid.uuid4().hex[:8]
    for attempt in ("first", "resubmit"):
        out = bcli(stack, "submit", str(src), "--intent", "fast", "--batch-id", bid, "--wait", "--json")
        assert out.returncode == 0 and "Traceback" not in out.stderr, (attempt, out.stderr)
        rep = json.loads(out.stdout)
        assert (rep["submit"]["requests"], rep["submit"]["malformed"]) == (2, 2), rep
        assert rep["batch"]["status"] == "completed" and rep["batch"]["request_counts"]["completed"] == 2, rep
        errs = [json.loads(ln) for ln in (tmp_path / "big.errors.jsonl").read_text().splitlines()]
        assert [(e["line"], e["custom_id"]) for e in errs] == [(2, "big-600k"), (3, "big-10m")]
        assert all("over the limit" in e["error"] and "not sent" in e["error"] for e in errs)


async def test_the_sdk_raises_prompt_too_large_for_a_job_over_max_payload(stack):
    async with Client(stack.nats_url) as c:
        with pytest.raises(PromptTooLargeError, match="max_payload") as e:
            await c.submit("z" * 2_000_000, intent="fast", job_id="too-big-" + uuid.uuid4().hex[:8])
        assert isinstance(e.value.error, PromptTooLarge) and "was not sent" in e.value.error.message
        r = await (await c.submit("still fine", intent="fast")).result(timeout=60)  # the client keeps working
        assert r.__struct_config__.tag == "completed"


def test_cancel_results_and_wait_of_an_unknown_batch_fail_and_do_not_block_the_id(stack, tmp_path):
    bid = "ghost-" + uuid.uuid4().hex[:8]
    cancel = bcli(stack, "cancel", bid)
    assert_clean_failure(cancel, f"no batch {bid}", "check the id", rc=1)
    out = tmp_path / "r.jsonl"
    res = run_cli("batch", "results", bid, "-o", str(out), "--nats-url", stack.nats_url, "--config", str(TEST_CONFIG))
    assert_clean_failure(res, f"no batch {bid}", rc=1)
    assert not out.exists()
    wait = bcli(stack, "wait", bid)
    assert_clean_failure(wait, f"no batch {bid}", rc=1)
    # The id is still free: the failed cancel left no record behind
    src = tmp_path / "one.jsonl"
    src.write_text(openai_line_of("only", "hi") + "\n")
    sub = bcli(stack, "submit", str(src), "--intent", "fast", "--batch-id", bid, "--wait")
    assert sub.returncode == 0, sub.stderr


def test_results_to_stdout_and_into_a_closed_pipe(stack, tmp_path):
    src = tmp_path / "many.jsonl"
    n = 300  # ~100 KB of results: more than a pipe holds, so `| head -1` breaks the pipe mid-write
    src.write_text("".join(openai_line_of(f"r{i}", f"line {i} " + "p" * 200) + "\n" for i in range(n)))
    bid = "pipe-" + uuid.uuid4().hex[:8]
    sub = bcli(stack, "submit", str(src), "--intent", "fast", "--batch-id", bid, "--wait")
    assert sub.returncode == 0, sub.stderr

    res = run_cli("batch", "results", bid, "-o", "-", "--nats-url", stack.nats_url, "--config", str(TEST_CONFIG), cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(f"r{i}" for i in range(n))
    assert "300 completed -> <stdout>" in res.stderr
    assert not (tmp_path / "-").exists()

    exe = str(Path(sys.executable).parent / "panelboard")
    p = subprocess.Popen(f"{exe} batch results {bid} -o - --nats-url {stack.nats_url} --config {TEST_CONFIG} | head -1",
                         shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    stdout, stderr = p.communicate(timeout=120)
    assert json.loads(stdout)["custom_id"].startswith("r")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
