"""Long-running processes: connect, create streams and consumers, run broker and/or pools,
drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS

from panelboard.transport import logs, streams, tracing
from panelboard.config import provider_key
from panelboard.transport.connection import SERVICE_CONNECT_PATIENCE_S, connect, home
from panelboard.schemas import wire
from panelboard.schemas.config import Config

if TYPE_CHECKING:
    from panelboard.broker.admission import Governor
    from panelboard.broker.service import Broker
    from panelboard.workers.batch_lane import BatchLane
    from panelboard.workers.pool import Pool

log = logs.get("runtime")

async def prepare(nc: NATS, cfg: Config, providers: list[str] | None = None, with_broker: bool = True) -> None:
    js = nc.jetstream()
    await streams.ensure_streams(js, cfg)
    if with_broker:
        await streams.ensure_consumer(js, wire.JOBS_STREAM, streams.broker_consumer_config())
    for p in providers if providers is not None else list(cfg.providers):
        await streams.ensure_pool_consumers(js, cfg, p)


async def serve(url: str, cfg: Config, *, broker: bool, providers: list[str]) -> None:
    parts: list[Broker | Pool | BatchLane] = []

    async def reconnected() -> None:
        # A restarted server may have lost recent acks and redeliver finished work as if
        # new: deliveries stored before this moment get checked before they are redone.
        now = time.time()
        for part in parts:
            part.suspect_before = now

    tracing.configure("panelboard-" + ("broker" if broker else "worker"))  # off unless OTLP (or a traces file) is configured
    nc = await connect(url, "panelboard-" + ("broker" if broker else "worker"), on_reconnect=reconnected,
                       patience_s=SERVICE_CONNECT_PATIENCE_S)
    await prepare(nc, cfg, providers, with_broker=broker)
    js = nc.jetstream()
    # Imported here, each only by the process that runs it: a worker never loads the broker's
    # SQL stack, so a replacement for a killed worker is serving in well under a second.
    if broker:
        from panelboard.broker.service import Broker

        parts.append(Broker(js, cfg, governor(cfg), control_url=url))
    if providers:
        from panelboard.workers.pool import Pool

        api_keys = {p: provider_key(cfg, p) for p in providers}
        for key in api_keys.values():
            if key:
                logs.register_secret(key)  # redacted from every log line, whatever its format
        parts += [Pool(js, cfg, p, api_key=api_keys[p]) for p in providers]
        from panelboard.workers.batch_lane import BatchLane, batch_caps

        parts += [BatchLane(js, cfg, p, api_key=api_keys[p]) for p in providers if batch_caps(cfg, p)]

    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("shutdown.requested", parts=len(parts))
        for part in parts:
            part.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    from panelboard.drain import Listener

    tasks = {p: asyncio.ensure_future(p.run()) for p in parts}
    control = Listener(nc, tasks)  # `panelboard drain`: stop named parts without a cut
    await control.start()
    try:
        await asyncio.gather(*tasks.values())
        await control.settle()
    finally:
        # A stop while the server is away: nothing left to flush (drain would raise).
        await (nc.drain() if nc.is_connected else nc.close())


def governor(cfg: Config, database_url: str | None = None) -> "Governor":
    """The broker's admission control: keys, rate limits, budgets, in the ledger's database."""
    from panelboard.broker.admission import Governor
    from panelboard.broker.governance_store import Store
    from panelboard.transport import db

    if cfg.governance.require_keys is False:
        return Governor(cfg, None)
    return Governor(cfg, Store.open(db.resolve_url(database_url, cfg, home()), durable=db.durable_for(cfg)))


def run(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
