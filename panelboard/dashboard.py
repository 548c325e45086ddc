"""A one-page dashboard on every metrics port (`GET /`): pools (depth, in flight vs cap, oldest
job, hint), provider health, spend by tier (in the ledger, which sees every cost record) and the
latest dead letters. Plain HTML rendered on the server from JetStream and this process's meters,
refreshed by the browser every 5 s: no script, nothing to build."""

from __future__ import annotations

import html
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from panelboard import capacity
from panelboard.schemas import wire
from panelboard.schemas.config import Config
from panelboard.schemas.job import DeadLetter

RECENT = 10


async def recent_dead(js: JetStreamContext, n: int = RECENT) -> list[DeadLetter]:
    """The last `n` dead letters, newest first (reading back from the stream's last sequence)."""
    try:
        info = await js.stream_info(wire.DEAD_STREAM)
    except NotFoundError:
        return []
    out: list[DeadLetter] = []
    seq = info.state.last_seq or 0
    first = info.state.first_seq or 1
    while seq >= first and len(out) < n and seq > (info.state.last_seq or 0) - 5 * n:
        try:
            raw = await js.get_msg(wire.DEAD_STREAM, seq)
            if raw.data:
                out.append(msgspec.json.decode(raw.data, type=DeadLetter))
        except (NotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        seq -= 1
    return out


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{html.escape(empty)}</p>"
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render(pools: list[capacity.PoolRow], health: list[Any], spend_by_tier: dict[str, float] | None,
           dead: list[DeadLetter], now: float) -> str:
    """Pure: the page."""
    pool_rows = [(p.provider, f"{p.queued:,}", f"{p.running}/{p.cap}", capacity._dur(p.oldest_age_s), p.hint) for p in pools]
    health_rows = [(h.provider, h.model, h.state + (" (recovering)" if h.recovering_since else ""),
                    f"{h.p95_ms:.0f}" if h.p95_ms is not None else "-", f"{h.error_rate:.1%}", h.calls) for h in health]
    if spend_by_tier is None:
        spend = "<p class=empty>spend is shown on the ledger's metrics port (it sees every cost record)</p>"
    else:
        spend = _table(("tier", "USD"), [(t, f"{v:.6f}") for t, v in sorted(spend_by_tier.items())] +
                       [("total", f"{sum(spend_by_tier.values()):.6f}")], "no cost records yet")
    dead_rows = [(time.strftime("%H:%M:%S", time.gmtime(d.ts)), d.reason, d.job.id if d.job else "-",
                  d.error.message[:120]) for d in dead]
    return f"""<!doctype html>
<html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>panelboard</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#111}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #bbb;padding:4px 10px;text-align:left}} th{{background:#eee}} .empty{{color:#666}}</style></head>
<body><h1>panelboard</h1><p>{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))} (refreshes every 5 s;
<a href=/metrics>/metrics</a>)</p>
<h2>Pools</h2>{_table(("provider", "queued", "in flight/cap", "oldest", "hint"), pool_rows, "no pools")}
<h2>Health</h2>{_table(("provider", "model", "state", "p95 ms", "errors", "calls"), health_rows, "no health figures yet")}
<h2>Spend by tier</h2>{spend}
<h2>Recent failures</h2>{_table(("at (UTC)", "reason", "job", "error"), dead_rows, "no dead letters")}
</body></html>
"""


async def page(js: JetStreamContext, cfg: Config, spend_by_tier: dict[str, float] | None) -> str:
    from panelboard.broker.health_status import status

    st = await status(js, cfg)
    pools = capacity.rows(cfg, await capacity.sample(js, cfg))
    return render(pools, st.health, spend_by_tier, await recent_dead(js), time.time())
