"""The health aggregator: cost records in, HealthState per provider/model out, into the
PB_HEALTH KV bucket that every broker process reads. The I/O shell around broker/health.py.

It reads PB_COSTS with its own ordered consumer, separate from the ledger's durable one, so
both see every record. The consumer starts `window_s` back in the stream: a restarted
aggregator rebuilds its windows from the records themselves, and picks up each state (and
its hysteresis: degraded since, recovering since) from PB_HEALTH, which is file-backed. No
consumer state is left on the server, and two aggregators (one per broker process, say)
compute the same windows from the same records: the states they write agree.

    serve(url, cfg): the aggregator process (`panelboard health`).
    HealthView: a broker's live copy of PB_HEALTH (a KV watch), `view.states` for order_chain.
    status(js, cfg): what `panelboard status` prints.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from typing import Callable, Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from panelboard.broker.health import HealthState, Key, Window, assess, kv_key, thresholds, tracked
from panelboard.broker.waiting import Waiting
from panelboard.broker.waiting import read as read_waiting
from panelboard.transport import connection, logs, streams
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost
from panelboard.schemas.config import Config

log = logs.get("health")

_decode_state = msgspec.json.Decoder(HealthState).decode
_encode = msgspec.json.Encoder().encode
HEARTBEAT_S = 15.0  # a state is rewritten at least this often while its window has calls
REPLAY_WAIT_S = 30.0  # at most this long before the first verdict while the window is replayed


class Aggregator:
    def __init__(self, js: JetStreamContext, cfg: Config, kv: KeyValue, clock: Callable[[], float] = time.time):
        self.js = js
        self.cfg = cfg
        self.kv = kv
        self.clock = clock
        self.h = cfg.health
        self.windows: dict[Key, Window] = {}
        self.states: dict[Key, HealthState] = {}
        self.written: dict[Key, HealthState] = {}
        self.stopping = asyncio.Event()
        self.caught_up = asyncio.Event()  # the replay of the last window_s of PB_COSTS is in
        self.records = 0
        self.undecodable = 0
        for key in tracked(cfg):
            self._window(key)

    def _window(self, key: Key) -> Window:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window(key[0], key[1], self.h.window_s, self.h.bucket_s)
        return w

    # -- pure steps ---------------------------------------------------------------------
    def observe(self, data: bytes, now: float) -> None:
        try:
            rec = decode_cost(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.undecodable += 1
            return
        if self._window((rec.provider, rec.model)).add_record(rec, now):
            self.records += 1

    def tick(self, now: float) -> list[HealthState]:
        """Assess every window; returns the states worth writing (changed, or stale)."""
        out = []
        for key, w in self.windows.items():
            prev = self.states.get(key)
            st = assess(w.stats(now), thresholds(self.h, *key), prev, now)
            self.states[key] = st
            if prev is not None and st.state != prev.state:
                log.warning("health.changed", provider=key[0], model=key[1], state=st.state, reason=st.reason)
            last = self.written.get(key)
            if last is None or _differs(last, st) or (st.calls and now - last.updated >= HEARTBEAT_S):
                out.append(st)
        return out

    # -- I/O ------------------------------------------------------------------------------
    async def load(self) -> None:
        """The states a previous aggregator left: hysteresis survives a restart."""
        for key, st in (await read_states(self.kv)).items():
            self.states[key] = st
            self.written[key] = st
            self._window(key)

    async def publish(self, states: list[HealthState]) -> None:
        for st in states:
            await self.kv.put(kv_key(st.provider, st.model), _encode(st))
            self.written[(st.provider, st.model)] = st

    async def _on_msg(self, msg: Msg) -> None:
        self.observe(msg.data, self.clock())
        if not self.caught_up.is_set() and msg.metadata.num_pending == 0:
            self.caught_up.set()

    async def run(self) -> None:
        await self.load()
        start = dt.datetime.fromtimestamp(self.clock() - self.h.window_s, tz=dt.timezone.utc)
        sub = await self.js.subscribe(
            "pb.costs.>", stream=wire.COSTS_STREAM, cb=self._on_msg, ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_TIME, config=ConsumerConfig(opt_start_time=start),
            pending_msgs_limit=-1, pending_bytes_limit=-1,
        )
        try:
            info = await sub.consumer_info()
            if not info.num_pending:
                self.caught_up.set()
        except Exception:
            pass
        try:  # no verdict on a half-replayed window: it could start a recovery clock too early
            await asyncio.wait_for(self.caught_up.wait(), REPLAY_WAIT_S)
        except (asyncio.TimeoutError, TimeoutError):
            log.warning("health.replay_slow", records=self.records)
        log.info("health.started", window_s=self.h.window_s, keys=len(self.windows), replayed=self.records)
        try:
            while not self.stopping.is_set():
                try:
                    await self.publish(self.tick(self.clock()))
                except Exception as e:  # NATS away: the next tick writes again
                    log.warning("health.publish_failed", error=f"{type(e).__name__}: {e}")
                try:
                    await asyncio.wait_for(self.stopping.wait(), self.h.publish_s)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
            log.info("health.stopped", records=self.records)


def _differs(a: HealthState, b: HealthState) -> bool:
    return (a.state, a.since, a.recovering_since, a.calls, a.p95_ms, a.error_rate, a.tokens) != (
        b.state, b.since, b.recovering_since, b.calls, b.p95_ms, b.error_rate, b.tokens)


async def read_states(kv: KeyValue) -> dict[Key, HealthState]:
    """Every state in PB_HEALTH, read once."""
    out: dict[Key, HealthState] = {}
    watcher = await kv.watchall()
    try:
        while True:
            try:
                e = await watcher.updates(timeout=5.0)
            except Exception:  # nats TimeoutError: nothing more is coming
                break
            if e is None:
                break
            if e.value and e.operation is None:
                try:
                    st = _decode_state(e.value)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                out[(st.provider, st.model)] = st
    finally:
        await watcher.stop()
    return out


class HealthView:
    """A broker's live copy of PB_HEALTH: pass `view.states` to health.order_chain."""

    def __init__(self, kv: KeyValue):
        self.kv = kv
        self.states: dict[Key, HealthState] = {}
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self.ready = asyncio.Event()  # set once the initial values are in
        self._changed = asyncio.Event()

    @classmethod
    async def start(cls, js: JetStreamContext, cfg: Config) -> "HealthView":
        view = cls(await streams.ensure_health_kv(js, cfg))
        view._watcher = await view.kv.watchall()
        view._task = asyncio.get_running_loop().create_task(view._follow())
        return view

    async def _follow(self) -> None:
        assert self._watcher is not None
        async for e in self._watcher:
            if e is None:
                self.ready.set()
                continue
            if e.operation is not None or not e.value:
                continue
            try:
                st = _decode_state(e.value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self.states[(st.provider, st.model)] = st
            self._changed.set()
            self._changed = asyncio.Event()
        self.ready.set()

    async def wait_for(self, pred: Callable[[dict[Key, HealthState]], bool], timeout: float) -> None:
        """Until pred(states) holds, on the bucket's updates (for tests and tools)."""
        async def go() -> None:
            while not pred(self.states):
                await self._changed.wait()

        await asyncio.wait_for(go(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=2)


async def pool_load(js: JetStreamContext) -> dict[str, int]:
    """provider -> dispatches queued or running in its pool (every lane), for strategies."""
    out: dict[str, int] = {}
    try:
        infos = await js.consumers_info(wire.DISPATCH_STREAM)
    except NotFoundError:
        return out
    for c in infos:
        name = c.config.durable_name or ""
        if not name.startswith("pool-"):
            continue
        provider = name.removeprefix("pool-")
        for lane in wire.LANES[1:]:
            provider = provider.removesuffix(f"-{lane}")
        out[provider] = out.get(provider, 0) + (c.num_pending or 0) + (c.num_ack_pending or 0)
    return out


async def read_health(js: JetStreamContext) -> dict[Key, HealthState]:
    """PB_HEALTH read once; empty when no aggregator has created it yet."""
    try:
        kv = await js.key_value(streams.HEALTH_BUCKET)
    except NotFoundError:
        return {}
    return await read_states(kv)


# -- panelboard status ----------------------------------------------------------------------
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
    for stream in (wire.JOBS_STREAM, wire.DISPATCH_STREAM, wire.COSTS_STREAM):
        try:
            infos = await js.consumers_info(stream)
        except NotFoundError:
            continue
        for c in infos:
            if c.config.durable_name:
                queues.append(QueueDepth(stream, c.config.durable_name, c.num_pending or 0, c.num_ack_pending or 0))
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


async def serve(url: str, cfg: Config) -> None:
    """The aggregator process."""
    nc = await connection.connect(url, "panelboard-health")
    js = nc.jetstream()
    await streams.ensure_streams(js, cfg)
    agg = Aggregator(js, cfg, await streams.ensure_health_kv(js, cfg))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agg.stopping.set)
    try:
        await agg.run()
    finally:
        await nc.drain()
