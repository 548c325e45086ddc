"""`panelboard up` starts the embedded stack; later commands in the same directory find it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import run_cli


def test_up_then_submit_from_the_same_directory_without_flags(tmp_path):
    exe = str(Path(sys.executable).parent / "panelboard")
    env = {k: v for k, v in os.environ.items() if k not in ("PANELBOARD_NATS_URL", "PANELBOARD_HOME")}
    up = subprocess.Popen([exe, "up", "--mock-latency-ms", "5"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while b"panelboard is up" not in line and time.monotonic() < deadline:
            if select.select([up.stdout], [], [], 1.0)[0]:
                line = up.stdout.readline()
        assert b"panelboard is up" in line, "up did not report ready"
        url = (tmp_path / ".panelboard" / "nats.url").read_text().strip()
        assert url.startswith("nats://127.0.0.1:") and not url.endswith(":4222")  # never assumes 4222 is free

        out = run_cli("submit", "--intent", "classification", "Is this positive? 'Great product'", cwd=str(tmp_path), env=env)
        assert out.returncode == 0, out.stderr
        assert "novita" in out.stderr and "tier=cheap-fast" in out.stderr
        # No intent: the broker classifies the request (layer 1) and routes it by that
        plan = run_cli("submit", "Design a multi-region job queue architecture step by step and list the trade-offs.", cwd=str(tmp_path), env=env)
        assert plan.returncode == 0, plan.stderr
        assert "tier=frontier" in plan.stderr
        # And the HTTP ingress it started, whose URL is beside the NATS URL, serves an OpenAI app
        import openai

        http_url = (tmp_path / ".panelboard" / "ingress.url").read_text().strip()
        with openai.OpenAI(base_url=http_url + "/v1", api_key="x", max_retries=0) as oai:
            r = oai.chat.completions.create(model="extraction", messages=[{"role": "user", "content": "Extract the date: due 2026-12-01"}], max_tokens=8)
        assert r.choices[0].message.content.startswith("mock reply from novita")
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert not (tmp_path / ".panelboard" / "nats.url").exists()  # a stopped stack is not advertised
    assert not (tmp_path / ".panelboard" / "ingress.url").exists()
