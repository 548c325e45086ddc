"""`panelboard status`'s pool figures: depth, lag, slots in use against the cap, drain rate,
time to empty, and a scale hint that says what would help (more worker processes, or a higher
cap / another deployment). Read from the pools' subjects in PB_DISPATCH and their team
consumers (summed); the decisions are pure."""

from __future__ import annotations

import time

import msgspec
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from panelboard.schemas import wire
from panelboard.schemas.config import Config
from panelboard.schemas.pacing import PoolPace
from panelboard.transport.streams import lane_caps, pool_depths, pool_filter


class PoolSample(msgspec.Struct):
    """One read of a pool's consumers (every lane summed)."""

    provider: str
    queued: int  # not yet delivered to any worker
    running: int  # delivered, not yet acked: calls in flight (or held for a retry)
    delivered: int  # deliveries ever made (consumer sequence): the counter drain rate comes from
    oldest_ts: float | None  # publish time of the oldest message not yet delivered
    at: float


class PoolRow(msgspec.Struct):
    provider: str
    queued: int
    running: int
    cap: int
    oldest_age_s: float | None
    drain_per_s: float | None  # deliveries finished per second over the sample; None: one sample only
    empty_in_s: float | None  # queued + running at that rate; None: not draining
    hint: str
    limit: int | None = None  # the adaptive concurrency limit, every live worker process summed (at most cap); None: none reported
    pacing: str | None = None  # what the provider's rate-limit headers hold the pool to now; None: nothing


async def sample(js: JetStreamContext, cfg: Config) -> dict[str, PoolSample]:
    out: dict[str, PoolSample] = {}
    now = time.time()
    depths = await pool_depths(js, cfg)
    for provider in cfg.providers:
        queued = running = delivered = 0
        oldest: float | None = None
        for lane in lane_caps(cfg, provider):
            d = depths.get((provider, lane))
            if d is None:
                continue
            queued += d.queued
            running += d.running
            delivered += sum((c.delivered.consumer_seq or 0) if c.delivered else 0 for c in d.consumers)
            if not d.queued:
                continue
            # The oldest not yet delivered: past each team consumer's position, or from the
            # start of the lane's subjects when no consumer has delivered any of them yet.
            starts = [((c.delivered.stream_seq or 0) + 1, c.config.filter_subject) for c in d.consumers if c.num_pending and c.delivered is not None]
            if not starts or d.queued > sum(c.num_pending or 0 for c in d.consumers):
                starts.append((1, pool_filter(cfg, provider, lane, "") + ".*"))
            for seq, subject in starts:
                try:
                    m = await js.get_msg(wire.DISPATCH_STREAM, seq=seq, subject=subject, next=True)
                except NotFoundError:  # taken meanwhile
                    continue
                ts = _published(m)
                if ts is not None and (oldest is None or ts < oldest):
                    oldest = ts
        out[provider] = PoolSample(provider=provider, queued=queued, running=running, delivered=delivered, oldest_ts=oldest, at=now)
    return out


def _published(m: RawStreamMsg) -> float | None:
    return m.time.timestamp() if m.time is not None else None  # nats-py parses it as UTC


def rows(cfg: Config, now: dict[str, PoolSample], before: dict[str, PoolSample] | None = None,
         paces: list[PoolPace] | None = None) -> list[PoolRow]:
    """Pure: the figures and hints from one sample, or from two (for the drain rate), with
    what each pool process reported of its pacing (PB_PACE)."""
    out = []
    for provider, s in now.items():
        cap = cfg.providers[provider].max_concurrency
        rate: float | None = None
        b = (before or {}).get(provider)
        if b is not None and s.at > b.at:
            finished = (s.delivered - b.delivered) - (s.running - b.running)  # deliveries started, less those still out
            rate = max(0.0, finished / (s.at - b.at))
        left = s.queued + s.running
        empty_in = left / rate if rate else (0.0 if left == 0 else None)
        limit, pacing = pace_figures([p for p in paces or () if p.provider == provider], cap, s.at) or (None, None)
        out.append(PoolRow(provider=provider, queued=s.queued, running=s.running, cap=cap,
                           oldest_age_s=round(s.at - s.oldest_ts, 3) if s.oldest_ts is not None else None,
                           drain_per_s=round(rate, 2) if rate is not None else None,
                           empty_in_s=round(empty_in, 1) if empty_in is not None else None, hint=hint(s.queued, s.running, cap, limit),
                           limit=limit, pacing=pacing))
    return out


def pace_figures(paces: list[PoolPace], cap: int, now: float) -> tuple[int, str | None] | None:
    """A pool's limit (its processes' summed, the cap the ceiling) and its pacing, in words;
    None when no process of it reported."""
    if not paces:
        return None
    words = []
    sig = max((p.signal for p in paces if p.signal is not None), key=lambda g: g.at, default=None)
    if sig is not None and sig.requests_remaining is not None:
        reset = f", resets in {max(0.0, sig.requests_reset_at - now):.1f}s" if sig.requests_reset_at else ""
        of = f"/{sig.requests_limit}" if sig.requests_limit else ""
        words.append(f"{sig.requests_remaining}{of} requests left{reset}")
    if sig is not None and sig.tokens_remaining is not None:
        words.append(f"{sig.tokens_remaining:,}{f'/{sig.tokens_limit:,}' if sig.tokens_limit else ''} tokens left")
    until = max((p.paced_until or 0.0 for p in paces), default=0.0)
    if until > now:
        words.append(f"next call in {until - now:.1f}s")
    return min(cap, sum(p.limit for p in paces)), "; ".join(words) or None


def hint(queued: int, running: int, cap: int, limit: int | None = None) -> str:
    """What would drain the pool faster. Pure."""
    if queued == 0:
        return "keeping up" if running else "idle"
    if limit is not None and limit < cap and running >= limit:
        return (f"held to {limit} of {cap} slots by the adaptive limit after 429s, 5xx or timeouts: "
                f"it grows back by one per {limit} successes")
    if running >= cap:
        return (f"capped by max_concurrency {cap}: more worker processes would not help; "
                f"raise the cap (if the provider allows) or add a deployment of the model")
    return (f"{cap - running} of {cap} slots free with jobs queued: add worker processes "
            f"(or the pool is paused by a 429: see the worker logs)")


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def render(pools: list[PoolRow]) -> list[str]:
    out = ["pools (PB_DISPATCH consumers, every lane)"]
    head = ("provider", "queued", "in flight/cap", "limit", "oldest", "drain/s", "empty in")
    table = [(p.provider, f"{p.queued:,}", f"{p.running}/{p.cap}", f"{p.limit}" if p.limit is not None else "-", _dur(p.oldest_age_s),
              f"{p.drain_per_s:,.1f}" if p.drain_per_s is not None else "-", _dur(p.empty_in_s)) for p in pools]
    widths = [max(len(r[i]) for r in (head, *table)) for i in range(len(head))]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (head, *table)]
    out += [f"  {p.provider}: {p.hint}" for p in pools if p.queued]
    out += [f"  {p.provider}: paced by its rate-limit headers: {p.pacing}" for p in pools if p.pacing]
    return out
