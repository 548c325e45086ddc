"""Audit the pinned dependencies for known vulnerabilities with pip-audit, where a vulnerability
service answers; where none does, say so on one line and pass (an offline CI is not a failure,
but nobody should read silence as "no vulnerabilities").

    python .ci/audit.py requirements/lock.txt [more lock files]

pip-audit runs from .venv-tools (created on first use); the locks carry hashes, so it audits
the pinned versions themselves without installing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

TOOLS = Path(".venv-tools")
SERVICE = "https://pypi.org/pypi/pip/json"  # pip-audit's default service is PyPI's JSON API


def reachable() -> str | None:
    try:
        urllib.request.urlopen(SERVICE, timeout=10).close()
        return None
    except Exception as e:  # DNS, proxy, TLS: any of them means no audit here
        return f"{type(e).__name__}: {e}"


def pip_audit() -> Path:
    exe = TOOLS / "bin" / "pip-audit"
    if not exe.exists():
        if not (TOOLS / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(TOOLS / "bin" / "python"), "-m", "pip", "install", "-q", "pip-audit"], check=True)
    return exe


def main(locks: list[str]) -> int:
    why = reachable()
    if why:
        print(f"audit: SKIPPED, no vulnerability service reachable ({SERVICE}: {why})")
        return 0
    exe = pip_audit()
    bad = 0
    for lock in locks:
        out = subprocess.run([str(exe), "--disable-pip", "--require-hashes", "-r", lock, "-f", "json", "--progress-spinner", "off"],
                             capture_output=True, text=True)
        try:
            deps = json.loads(out.stdout)["dependencies"]
        except (json.JSONDecodeError, KeyError):
            print(f"audit: {lock}: pip-audit failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
            return 1
        vulns = [(d["name"], d["version"], v["id"], v.get("fix_versions")) for d in deps for v in d.get("vulns", [])]
        skipped = [d for d in deps if "skip_reason" in d]
        for name, version, vid, fixes in vulns:
            print(f"audit: {lock}: {name} {version}: {vid} (fixed in {', '.join(fixes) or 'no release yet'})")
        bad += len(vulns)
        if len(skipped) == len(deps):
            print(f"audit: {lock}: SKIPPED, the service answers but knows none of the {len(deps)} pinned versions "
                  f"(a mirror without PyPI's JSON API?): nothing was audited")
        else:
            print(f"audit: {lock}: {len(deps) - len(skipped)} audited, {len(vulns)} known vulnerabilities"
                  + (f", {len(skipped)} not known to the service: " + " ".join(d["name"] for d in skipped) if skipped else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
