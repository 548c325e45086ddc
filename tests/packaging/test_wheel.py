"""The wheel stands alone: built from this checkout, installed from the hashed lock into a fresh
venv outside the repository, `panelboard demo` runs with the default config it ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_the_wheel_installed_from_the_lock_outside_the_repository_runs_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT, cwd=tmp_path)
    (wheel,) = wheels.glob("panelboard-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    run(*pip, "--require-hashes", "-r", ROOT / "requirements" / "lock.txt", cwd=tmp_path)
    run(*pip, "--no-deps", wheel, cwd=tmp_path)

    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANELBOARD_") and k != "PYTHONPATH"}
    where = run(venv / "bin" / "python", "-c", "import panelboard.config as c; print(c.DEFAULT_CONFIG)", cwd=away, env=env)
    default = Path(where.stdout.strip())
    assert default.is_file() and ROOT not in default.parents  # the installed copy, not this checkout's

    demo = run(venv / "bin" / "panelboard", "demo", "--jobs", "50", "--json", cwd=away, env=env, timeout=300)
    report = json.loads(demo.stdout)
    assert (report["submitted"], report["completed"], report["failed"]) == (50, 50, 0)
    assert report["cost_usd"] > 0
