"""The broker's checks of a control request, before it touches any queue."""

from __future__ import annotations

import sys
import subprocess

import pytest

from panelboard.broker.control import check_cancel
from panelboard.schemas.control import CancelRequest


@pytest.mark.parametrize("team, req, says", [
    ("team-a", CancelRequest(), "exactly one of job_id"),
    ("team-a", CancelRequest(job_id="j1", client="c1"), "exactly one of job_id"),
    ("team-a", CancelRequest(job_id="a.b"), "not a valid id"),
    ("*", CancelRequest(job_id="j1"), "team token is not a valid team"),
])
def test_a_malformed_cancel_is_refused_with_what_to_send(team, req, says):
    assert says in check_cancel(team, req)


def test_a_well_formed_cancel_passes():
    assert check_cancel("team-a", CancelRequest(job_id="order-42")) == ""
    assert check_cancel("team-a", CancelRequest(client="batch-7")) == ""


def test_the_sdk_asks_for_a_cancel_without_loading_faststream_or_the_broker():
    code = "import sys, panelboard.clients.client; print(sorted(m for m in sys.modules if m.split('.')[0] == 'faststream' or m.startswith('panelboard.broker')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_hot_path_modules_load_no_faststream():
    # The broker's job loop and the worker pools stay raw nats-py (transport/consumer.py);
    # faststream loads only when a broker starts its control plane.
    code = ("import sys, panelboard.broker.service, panelboard.workers.pool, panelboard.broker.ledger; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'faststream', 'fast_depends', 'pydantic'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
