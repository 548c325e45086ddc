"""The README's wire contract is enough to use panelboard without the SDK."""

from __future__ import annotations

import os
import subprocess
import sys

from panelboard.stack import Stack
from tests.conftest import ROOT


def test_a_raw_nats_py_script_submits_and_reads_a_result(tmp_path):
    # Given the default stack (shipped config, embedded nats-server, mock provider)
    with Stack(tmp_path) as s:
        s.start()
        # When a script that knows only the documented subjects and headers submits a job
        out = subprocess.run([sys.executable, str(ROOT / "examples" / "raw_nats_submit.py")], capture_output=True, text=True,
                             timeout=90, env={**os.environ, "PANELBOARD_NATS_URL": s.nats_url})
    # Then it reads a completed chat completion routed by intent to the cheap-fast tier
    assert out.returncode == 0, out.stderr
    kind, provider, _ = out.stdout.split(" ", 2)
    assert (kind, provider) == ("completed", "novita")
