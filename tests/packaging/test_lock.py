"""The hashed locks cover what pyproject.toml asks for: a dependency added without `make lock`
would be missing from every install that uses them (make install, the image, CI)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            pins[m[1].lower().replace("_", "-")] = m[2]
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{lock.name}: an unpinned line {line!r}")
    return pins


def test_every_dependency_is_pinned_with_hashes_in_the_locks():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    test = runtime | {_name(r) for r in project["optional-dependencies"]["test"]}
    for lock, wanted in (("lock.txt", runtime), ("test.txt", test)):
        path = ROOT / "requirements" / lock
        missing = wanted - set(_pins(path))
        assert not missing, f"requirements/{lock} lacks {sorted(missing)}: run `make lock`"
        text = path.read_text()
        assert text.count("==") == len(re.findall(r"==\S+(?: ;[^\\\n]*)? \\\n    --hash=sha256:", text))  # every pin carries hashes
    lock, test_lock = _pins(ROOT / "requirements" / "lock.txt"), _pins(ROOT / "requirements" / "test.txt")
    assert {k: v for k, v in test_lock.items() if k in lock} == lock  # the image runs what the tests ran
