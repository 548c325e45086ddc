"""The one rule of direction (README, Layout): schemas <- transport <- {broker, workers,
clients} <- the app (panelboard/*.py and loadgen). Every import counts, those inside
functions too; broker, workers and clients never import each other, and no import circles."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import panelboard

ROOT = Path(panelboard.__file__).parent
LAYER = {"schemas": 0, "transport": 1, "broker": 2, "workers": 2, "clients": 2, "app": 3, "loadgen": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for d, _, files in os.walk(ROOT, followlinks=True):  # panelboard/<layer> are symlinks
        for f in files:
            if f.endswith(".py"):
                parts = ["panelboard", *(Path(d) / f).relative_to(ROOT).with_suffix("").parts]
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = Path(d) / f
    return out


def _group(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYER else "app"


def _imports(mods: dict[str, Path], type_only: bool = True) -> dict[str, set[str]]:
    """Each module's imports of ours. `type_only=False` leaves out imports under `if
    TYPE_CHECKING:`, which never run (a circle through one is no circle at import time)."""
    edges: dict[str, set[str]] = {}
    for mod, path in mods.items():
        found: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        skip: set[int] = set()
        if not type_only:
            for n in ast.walk(tree):
                if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
                    skip |= {id(c) for b in n.body for c in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from panelboard.transport import db` imports the module panelboard.transport.db
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names}
        edges[mod] = {t for t in found if t in mods and t not in (mod, "panelboard")}
    return edges


def test_the_walk_sees_every_layer():
    groups = {_group(m) for m in _modules()}
    assert groups == set(LAYER), groups


def test_imports_point_down_the_layers():
    edges = _imports(_modules())
    wrong = sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts
                   if LAYER[_group(t)] > LAYER[_group(m)]
                   or (LAYER[_group(t)] == LAYER[_group(m)] < 3 and _group(t) != _group(m)))
    assert not wrong, "imports against schemas <- transport <- broker/workers/clients <- app:\n" + "\n".join(wrong)


def test_no_import_circles():
    edges = _imports(_modules(), type_only=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan: a strongly connected set of 2+ modules is a circle
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                circles.append(sorted([v, *comp]))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_sdk_loads_neither_the_broker_nor_the_workers_nor_the_app():
    code = ("import sys; import panelboard.clients; print(len(sys.modules));"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'yaml', 'httpx')"
            " or m.split('.')[:2] in (['panelboard', 'broker'], ['panelboard', 'workers'], ['panelboard', 'cli']))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    print(f"import panelboard.clients: {out[0]} modules")
    assert out[1] == "", f"the SDK pulled in: {out[1]}"
