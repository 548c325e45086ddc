"""Reading PB_HEALTH: a broker's live copy (HealthView, a KV watch: `view.states` for
order_chain), one-off reads, and the pools' queue depths the strategies weigh."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from panelboard.broker.health import HealthState, Key
from panelboard.transport import logs, streams
from panelboard.transport.kv_read import live_entries
from panelboard.schemas import wire
from panelboard.schemas.config import Config

log = logs.get("health")

_decode_state = msgspec.json.Decoder(HealthState).decode


async def read_states(kv: KeyValue) -> dict[Key, HealthState]:
    """Every state in PB_HEALTH, read once (transport/kv_read.py: read to the end, not to
    nats-py's first "no more" marker)."""
    out: dict[Key, HealthState] = {}
    for e in await live_entries(kv):
        if e.value:
            try:
                st = _decode_state(e.value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            out[(st.provider, st.model)] = st
    return out


class HealthView:
    """A broker's live copy of PB_HEALTH: pass `view.states` to health.order_chain."""

    def __init__(self, kv: KeyValue):
        self.kv = kv
        self.states: dict[Key, HealthState] = {}
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None  # nats-py's KeyWatcher, once started
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
    """provider -> dispatches queued or running in its pool (every lane and team), for strategies."""
    out: dict[str, int] = {}
    for (provider, _), d in (await streams.pool_depths(js)).items():
        out[provider] = out.get(provider, 0) + max(d.in_stream, d.running)
    return out


async def read_health(js: JetStreamContext) -> dict[Key, HealthState]:
    """PB_HEALTH read once; empty when no aggregator has created it yet."""
    try:
        kv = await js.key_value(streams.HEALTH_BUCKET)
    except NotFoundError:
        return {}
    return await read_states(kv)


# -- panelboard status ----------------------------------------------------------------------
