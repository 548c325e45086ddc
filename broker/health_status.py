"""What `panelboard status` shows: each provider/model's health, the queue depths, the keys
waiting on a rate limit; gathered (status) and rendered as text (render_status)."""

from __future__ import annotations

import time
from typing import Sequence

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from panelboard.broker.health import HealthState, tracked
from panelboard.broker.health_view import read_states
from panelboard.broker.waiting import Waiting
from panelboard.broker.waiting import read as read_waiting
from panelboard.transport import streams
from panelboard.schemas import wire
from panelboard.schemas.config import Config


class QueueDepth(msgspec.Struct):
    stream: str
    consumer: str
    pending: int  # not yet delivered
    unacked: int  # delivered, not yet acknowledged (running)


class Status(msgspec.Struct):
    now: float
    health: list[HealthState]
    queues: list[QueueDepth]
    health_bucket: bool  # False: no aggregator has run against this server yet
    waiting: list[Waiting] = []  # keys/teams over a limit with on_limit=wait, and how many jobs sit behind each


async def status(js: JetStreamContext, cfg: Config) -> Status:
    try:
        kv = await js.key_value(streams.HEALTH_BUCKET)
        states = await read_states(kv)
        have = True
    except NotFoundError:
        states, have = {}, False
    known = tracked(cfg)
    rows = [states.get(k) or HealthState(provider=k[0], model=k[1], state="healthy") for k in known]
    rows += [st for k, st in states.items() if k not in set(known)]  # models since removed from the config
    queues = []
    for stream in (wire.JOBS_STREAM, wire.COSTS_STREAM):
        try:
            infos = await js.consumers_info(stream)
        except NotFoundError:
            continue
        for c in infos:
            if c.config.durable_name:
                queues.append(QueueDepth(stream, c.config.durable_name, c.num_pending or 0, c.num_ack_pending or 0))
    # One row per pool lane, its team consumers summed (workers/fair.py).
    depths = await streams.pool_depths(js, cfg)
    for key in {**{(p, lane): None for p in cfg.providers for lane in streams.lane_caps(cfg, p)}, **depths}:
        d = depths.get(key) or streams.PoolDepth()
        queues.append(QueueDepth(wire.DISPATCH_STREAM, streams.pool_consumer(*key), d.queued, d.running))
    return Status(now=time.time(), health=sorted(rows, key=lambda s: (s.provider, s.model)),
                  queues=sorted(queues, key=lambda q: (q.stream, q.consumer)), health_bucket=have, waiting=await read_waiting(js))


def _ago(now: float, t: float) -> str:
    if not t:
        return "-"
    s = max(0, int(now - t))
    return f"{s // 3600}h{s % 3600 // 60:02d}m ago" if s >= 3600 else f"{s // 60}m{s % 60:02d}s ago" if s >= 60 else f"{s}s ago"


def render_status(st: Status) -> str:
    out = ["provider/model health (rolling window)"]
    if not st.health_bucket:
        out.append("  no PB_HEALTH bucket yet: start the aggregator (`panelboard health`) to track P95 and errors")
    head = ("provider", "model", "state", "since", "p95 ms", "errors", "calls", "updated")
    rows = [(h.provider, h.model, h.state.upper() if h.degraded else h.state, _ago(st.now, h.since),
             f"{h.p95_ms:.0f}" if h.p95_ms is not None else "-", f"{h.error_rate:.1%}" if h.calls else "-", str(h.calls),
             _ago(st.now, h.updated)) for h in st.health]
    out += _table(head, rows)
    for h in st.health:
        if h.degraded and h.reason:
            out.append(f"  {h.model} ({h.provider}): {h.reason}" + (f" (recovering for {st.now - h.recovering_since:.0f} s)" if h.recovering_since else ""))
    out.append("")
    out.append("queues (durable consumers)")
    out += _table(("stream", "consumer", "pending", "running"), [(q.stream, q.consumer, str(q.pending), str(q.unacked)) for q in st.queues])
    out.append("")
    out.append("waiting on a rate limit (on_limit: wait; jobs stay in PB_JOBS until the window frees room)")
    out += _table(("owner", "limit", "jobs", "since"), [(w.owner, w.limit, str(w.jobs), _ago(st.now, w.since)) for w in st.waiting])
    return "\n".join(out)


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    fmt = lambda r: "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(head), *(fmt(r) for r in rows)]


