"""A pool's pacing and adaptive concurrency: the I/O shell around workers/pacing.py.

On the hot path everything is in memory: a call whose model has no rate signal costs a dict
lookup before it and one AIMD step after. Signals are merged as answers arrive, and shared with
the pool's other worker processes through PB_PACE (transport/pacing_kv.py): a watch keeps the
local copy fresh, and a flush writes what changed at most every FLUSH_S, never per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from panelboard.schemas.config import Config
from panelboard.schemas.job import Job
from panelboard.schemas.pacing import PoolPace, RateSignal
from panelboard.transport import logs, pacing_kv
from panelboard.workers.outcome import Ok, Outcome, RateLimited
from panelboard.workers.pacing import Limit, adapt, congestion, est_tokens, merge, plan

log = logs.get("pacer")

FLUSH_S = 0.25  # how stale another process's view of a roomy window may be (a nearly spent one is written at once)
REFRESH_S = 10.0  # a pool's figures are rewritten this often even unchanged (the bucket forgets in TTL_S)
RECHECK_S = 0.25  # a long wait looks again this often: another process may have brought word of a reset
PEER_LIVE_S = 3 * REFRESH_S  # a process of the pool that has not written for this long is gone
_encode = msgspec.json.Encoder().encode
_decode_signal = msgspec.json.Decoder(RateSignal).decode


class Window:
    """What this process knows of one (provider, key, model) window."""

    __slots__ = ("signal", "next_free", "owed", "owed_tokens", "lock", "dirty")

    def __init__(self, signal: RateSignal):
        self.signal = signal
        self.next_free = 0.0
        self.owed = 0  # calls started here and not answered yet
        self.owed_tokens = 0
        self.lock = asyncio.Lock()  # paced calls take their slots in arrival order
        self.dirty = True


class Pacer:
    def __init__(self, js: JetStreamContext, cfg: Config, provider: str, api_key: str | None,
                 on_limit: Callable[[int], None] | None = None):
        s = cfg.providers[provider]
        self.js, self.cfg, self.provider = js, cfg, provider
        self.key_fp = pacing_kv.fingerprint(api_key)
        self.cap = s.max_concurrency
        self.adaptive = s.adaptive_concurrency
        self.floor = min(self.cap, s.min_concurrency if s.min_concurrency is not None else max(1, self.cap // 8))
        self.state = Limit(self.cap)
        self.pacing = s.pacing
        self.windows: dict[str, Window] = {}  # by the provider's model id
        self.on_limit = on_limit
        self.process = f"{socket.gethostname()}-{os.getpid()}"
        self.kv: KeyValue | None = None
        self._pool_dirty = True
        self.peers: dict[str, float] = {}  # the pool's other processes (by KV key) and when each last wrote
        self._low = asyncio.Event()  # a window nearly spent: the other processes must hear of it now

    def share(self, now: float) -> int:
        """How many processes of the pool split each window: this one and those alive."""
        return 1 + sum(1 for at in self.peers.values() if at > now - PEER_LIVE_S)

    @property
    def limit(self) -> int:
        return self.state.limit

    # -- the hot path ----------------------------------------------------------------------
    async def pace(self, model: str, job: Job) -> int | None:
        """Wait for this call's slot in its model's window (no longer than the job's deadline).
        Returns the tokens it was counted at, for `answered`; None: not paced."""
        w = self.windows.get(model)
        if w is None or not self.pacing:
            return None
        tokens = est_tokens(job) if w.signal.tokens_remaining is not None else 0
        async with w.lock:
            while True:
                now = time.time()
                slot = plan(w.signal, now, w.next_free, w.owed, w.owed_tokens, tokens, self.share(now))
                wait = slot.start - now
                if wait <= 0 or (job.deadline is not None and now >= job.deadline):
                    break
                await asyncio.sleep(min(wait, RECHECK_S))
            w.next_free = max(now, slot.start) + slot.spacing
            w.owed += 1
            w.owed_tokens += tokens
            if w.next_free > now:
                self._pool_dirty = True
        return tokens

    def answered(self, model: str, paced: int | None, outcome: Outcome, started: float, blame: bool = True) -> None:
        """After every call: the window's new word, the owed call settled, one AIMD step
        (`blame`: False when a failure was not the provider's, e.g. a deadline's short timeout)."""
        w = self.windows.get(model)
        if paced is not None and w is not None:
            w.owed -= 1
            w.owed_tokens -= paced
        if isinstance(outcome, (Ok, RateLimited)) and outcome.rate is not None:
            self._observe(model, outcome.rate)
        if self.adaptive:
            before = self.state.limit
            seen = congestion(outcome)
            self.state = adapt(self.state, seen if blame or seen != "congested" else "neutral", started, time.time(), self.floor, self.cap)
            if self.state.limit != before:
                self._pool_dirty = True
                if self.state.limit < before:
                    log.warning("pool.limit_cut", provider=self.provider, limit=self.state.limit, reason=type(outcome).__name__)
                if self.on_limit is not None:
                    self.on_limit(self.state.limit)

    def _observe(self, model: str, sig: RateSignal) -> None:
        w = self.windows.get(model)
        if w is None:
            self.windows[model] = w = Window(sig)
        else:
            merged = merge(w.signal, sig)
            if merged is w.signal:
                return
            w.signal, w.dirty = merged, True
        if self.peers and _low(w.signal, self.cap):
            self._low.set()

    # -- sharing ---------------------------------------------------------------------------
    def figures(self) -> PoolPace:
        now = time.time()
        live = [w for w in self.windows.values() if (w.signal.requests_reset_at or w.signal.at + 1) > now - 5]
        tight = min(live, key=lambda w: w.signal.requests_remaining if w.signal.requests_remaining is not None else 1 << 62, default=None)
        paced = max((w.next_free for w in self.windows.values()), default=0.0)
        return PoolPace(provider=self.provider, limit=self.state.limit, floor=self.floor, cap=self.cap, at=now,
                        paced_until=paced if paced > now else None, signal=tight.signal if tight else None)

    async def run(self) -> None:
        """Watch the other processes' signals and flush ours, until cancelled. Without the
        bucket (NATS trouble) pacing goes on with what this process sees itself."""
        while True:
            try:
                self.kv = await pacing_kv.ensure(self.js, self.cfg)
                watch = await self.kv.watch(pacing_kv.of_provider(self.provider), ignore_deletes=True)
                reader = asyncio.create_task(self._read(watch))
                try:
                    await self._flush_forever()
                finally:
                    reader.cancel()
                    # A stop during NATS's drain raises here; it must not swallow our cancellation.
                    with contextlib.suppress(Exception):
                        await watch.stop()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("pacer.kv_failed", provider=self.provider, error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(2.0)

    async def _read(self, watch: KeyValue.KeyWatcher) -> None:
        sig_prefix = pacing_kv.signals_prefix(self.provider, self.key_fp)
        pool_prefix, me = pacing_kv.pools_prefix(self.provider), pacing_kv.pool_key(self.provider, self.process)
        async for entry in watch:
            if entry is None or not entry.value:
                continue
            if entry.key.startswith(pool_prefix):
                if entry.key != me:
                    self.peers[entry.key] = pacing_kv.decode_pool(entry.value).at
                continue
            if not entry.key.startswith(sig_prefix):  # another API key's windows
                continue
            model, sig = pacing_kv.unesc(entry.key[len(sig_prefix):]), _decode_signal(entry.value)
            w = self.windows.get(model)
            if w is None:
                self.windows[model] = w = Window(sig)
                w.dirty = False
            else:
                merged = merge(w.signal, sig)
                if merged is not w.signal:
                    w.signal = merged
                    w.dirty = merged is not sig  # ours is tighter: keep it in the bucket

    async def _flush_forever(self) -> None:
        assert self.kv is not None
        last_pool = 0.0
        while True:
            for model, w in list(self.windows.items()):
                if w.dirty:
                    w.dirty = False
                    await self.kv.put(pacing_kv.signal_key(self.provider, self.key_fp, model), _encode(w.signal))
            now = time.monotonic()
            if self._pool_dirty or now - last_pool >= REFRESH_S:
                self._pool_dirty = False
                last_pool = now
                await self.kv.put(pacing_kv.pool_key(self.provider, self.process), _encode(self.figures()))
            try:
                await asyncio.wait_for(self._low.wait(), FLUSH_S)
            except TimeoutError:
                pass
            self._low.clear()


def _low(sig: RateSignal, cap: int) -> bool:
    """Left with so little that one burst of the pool could spend it: stale word elsewhere would overrun it."""
    return (sig.requests_remaining is not None and sig.requests_remaining <= 2 * cap) or \
        (sig.tokens_remaining is not None and sig.tokens_limit is not None and sig.tokens_remaining * 8 <= sig.tokens_limit)

