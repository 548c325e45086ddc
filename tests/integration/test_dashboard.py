"""The one-page dashboard on a metrics port, read by a real headless browser (Debian's
chromium): it shows the pools, health, spend by tier and the latest dead letter as numbers,
and the screenshot is a rendered page, not a blank one."""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import httpx
import pytest

from panelboard.clients import Client
from panelboard.schemas.job import Completed, Failed
from panelboard.stack import Stack
from tests.integration.test_metrics import free_port_base  # noqa: F401  (fixture)

CONFIG = Path(__file__).resolve().parents[1] / "data" / "metrics.yaml"


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB(A) PNG, as chromium writes them."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, rows, prev = zlib.decompress(idat), [], bytearray(w * bpp)
    stride = w * bpp
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line[j] for j in range(stride) if j % bpp < 3))  # RGB only
        prev = line
    return w, h, rows


async def test_the_dashboard_renders_pools_health_spend_and_failures_in_chromium(tmp_path, free_port_base):  # noqa: F811
    with Stack(tmp_path / "stack", config=CONFIG, mock_args=["--latency-ms", "5"], metrics_port=free_port_base) as stack:
        stack.start(workers=1)
        async with Client(stack.nats_url) as c:
            done = [await (await c.submit([{"role": "user", "content": f"x {i}"}], intent="chain")).result(timeout=90) for i in range(3)]
            failed = await (await c.submit([{"role": "user", "content": "bad"}], intent="refused")).result(timeout=90)
        assert all(isinstance(r, Completed) for r in done) and isinstance(failed, Failed)
        spent = round(sum(r.cost_usd for r in done), 6)
        url = f"http://127.0.0.1:{stack.metrics_ports['ledger']}/"
        deadline, page = time.monotonic() + 60, ""
        while time.monotonic() < deadline and f"{spent:.6f}" not in page:
            try:
                page = httpx.get(url, timeout=10).text
            except httpx.ConnectError:
                pass
            time.sleep(0.25)
        assert f"{spent:.6f}" in page  # spend by tier: what the three results cost, from the ledger's records
        assert html.escape(failed.error.message[:40]) in page and failed.job_id in page  # the dead letter, newest first
        assert re.search(r"<td>busy</td><td>0</td><td>0/4</td>", page)  # a pool row: queued, in flight / cap

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): the page was checked over HTTP only")
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,1200"]
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert f"{spent:.6f}" in dom.stdout and "Recent failures" in dom.stdout
        shot = tmp_path / "dashboard.png"
        subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)

    w, h, rows = png_pixels(shot)
    assert (w, h) == (1000, 1200)
    inked = [y for y, row in enumerate(rows) if any(v < 128 for v in row)]  # rows holding dark text or table borders
    assert len(inked) > 150, f"only {len(inked)} rows of {h} hold anything dark: a blank page?"
    assert inked[-1] - inked[0] > 400  # headings, four tables: the page runs down the screen
