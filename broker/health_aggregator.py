"""The health aggregator: cost records in, HealthState per provider/model out, into the
PB_HEALTH KV bucket that every broker process reads. The I/O shell around broker/health.py.

It reads PB_COSTS with its own ordered consumer, separate from the ledger's durable one, so
both see every record. The consumer starts `window_s` back in the stream: a restarted
aggregator rebuilds its windows from the records themselves, and picks up each state (and
its hysteresis: degraded since, recovering since) from PB_HEALTH, which is file-backed. No
consumer state is left on the server, and two aggregators (one per broker process, say)
compute the same windows from the same records: the states they write agree.

Run by every broker with health on, or alone as `panelboard health` (serve). Reading the
states: broker/health_view.py; `panelboard status`: broker/health_status.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from typing import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from panelboard.broker.health import HealthState, Key, Window, assess, kv_key, thresholds, tracked
from panelboard.broker.health_view import read_states
from panelboard.transport import connection, logs, streams
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost
from panelboard.schemas.config import Config

log = logs.get("health")

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


