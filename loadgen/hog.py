"""Run a command with CPU hogs beside it, the way a busy CI machine runs our tests.

    python -m panelboard.loadgen.hog --hogs 2 -- python -m pytest -q -m fault

Each hog is a process spinning on one core until the command ends (whatever its outcome);
the exit code is the command's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys


def _spin() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.hog", description=__doc__.split("\n\n")[0])
    p.add_argument("--hogs", type=int, default=2, help="busy processes to run beside the command (default 2)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the command to run after --")
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(a.hogs)]
    for h in hogs:
        h.start()
    print(f"hog: {a.hogs} busy process(es) beside: {' '.join(cmd)}", file=sys.stderr, flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
    finally:
        for h in hogs:
            h.kill()
            h.join()


if __name__ == "__main__":
    sys.exit(main())
