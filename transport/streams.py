"""Streams and durable consumers, created idempotently at start by every process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from panelboard.schemas import shadow, wire
from panelboard.schemas.batch import BATCHES_STREAM
from panelboard.schemas.config import Config

BROKER_CONSUMER = "broker"
BROKER_MAX_ACK_PENDING = 8192
DAY = 86_400.0


def pool_consumer(provider: str, lane: str = "interactive") -> str:
    return f"pool-{provider}" if lane == "interactive" else f"pool-{provider}-{lane}"


def lane_caps(cfg: Config, provider: str) -> dict[str, int]:
    """The provider's lanes and their slots; they always sum to its max_concurrency."""
    p = cfg.providers[provider]
    if p.batch_share is None or p.max_concurrency < 2:
        return {"interactive": p.max_concurrency}  # one lane takes both subjects
    batch = min(p.max_concurrency - 1, max(1, round(p.max_concurrency * p.batch_share)))
    return {"interactive": p.max_concurrency - batch, "batch": batch}


def stream_configs(cfg: Config) -> list[StreamConfig]:
    n = cfg.nats
    common: dict[str, Any] = dict(storage=StorageType.FILE, num_replicas=n.replicas, duplicate_window=float(n.dedupe_window_s))
    return [
        # Work queues: a job leaves the stream once a broker / pool has acked it.
        StreamConfig(name=wire.JOBS_STREAM, subjects=["pb.jobs.>"], retention=RetentionPolicy.WORK_QUEUE, **common),
        StreamConfig(name=wire.DISPATCH_STREAM, subjects=["pb.dispatch.>"], retention=RetentionPolicy.WORK_QUEUE, **common),
        # Results (pb.results.<team>.<job>) and rejects (pb.rejects.<team>.<seq>) stay for late
        # or restarted clients; direct get serves them without a consumer.
        StreamConfig(name=wire.RESULTS_STREAM, subjects=["pb.results.>", "pb.rejects.>"], max_age=float(n.results_ttl_s),
                     allow_direct=True, max_bytes=n.results_max_bytes, max_msgs=n.results_max_msgs, discard=DiscardPolicy.OLD, **common),
        # Who owns a job id (pb.claims.<team>.<job>.<run>): kept longer than its result, so a
        # resubmit is a duplicate for as long as a client can still read the answer.
        StreamConfig(name=wire.CLAIMS_STREAM, subjects=["pb.claims.>"], max_age=2.0 * n.results_ttl_s, max_msgs_per_subject=1,
                     allow_direct=True, **common),
        StreamConfig(name=wire.COSTS_STREAM, subjects=["pb.costs.>"], max_age=30 * DAY, **common),
        # Bounded: bad input makes dead letters as fast as it arrives (nats.dead_max_*).
        StreamConfig(name=wire.DEAD_STREAM, subjects=["pb.dead.>"], max_age=30 * DAY, allow_direct=True,
                     max_bytes=n.dead_max_bytes, max_msgs=n.dead_max_msgs, discard=DiscardPolicy.OLD, **common),
        # Failed attempts per job, so a chain-end Failed result can list every one of them.
        StreamConfig(name=wire.ATTEMPTS_STREAM, subjects=["pb.attempts.>"], max_age=DAY, allow_direct=True, **common),
        # Shadow answers (schemas/shadow.py), kept as long as the live results they are compared
        # with, and capped in size: a mirrored tier must not fill the disk.
        StreamConfig(name=shadow.SHADOW_STREAM, subjects=["pb.shadow.>"], max_age=float(n.results_ttl_s), allow_direct=True,
                     max_msgs=shadow.MAX_MSGS, max_bytes=shadow.MAX_BYTES, discard=DiscardPolicy.OLD, **common),
        # Batch manifests (schemas/batch.py), written while a batch is sent: kept twice as long
        # as results, so they outlive the results of a batch that took a long time to run.
        StreamConfig(name=BATCHES_STREAM, subjects=["pb.batch.>"], max_msgs_per_subject=1, max_age=2.0 * n.results_ttl_s,
                     allow_direct=True, **common),
        # Jobs for a provider's batch lane. Kept (not a work queue) while their provider batch
        # runs: its KV state names them by sequence, and every stage reads them back from here.
        StreamConfig(name=wire.LANES_STREAM, subjects=["pb.lanes.>"], max_age=3 * DAY, allow_direct=True, **common),
    ]


async def ensure_stream(js: JetStreamContext, sc: StreamConfig) -> None:
    assert sc.name is not None  # every stream of stream_configs is named
    try:
        await js.stream_info(sc.name)
    except NotFoundError:
        try:
            await js.add_stream(sc)
            return
        except BadRequestError as e:  # another process created it between our two calls
            if e.err_code != 10058:
                raise
    await js.update_stream(sc)


async def ensure_streams(js: JetStreamContext, cfg: Config) -> None:
    for sc in stream_configs(cfg):
        await ensure_stream(js, sc)


def broker_consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=BROKER_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_ack_pending=BROKER_MAX_ACK_PENDING,
    )


# Short, because a killed worker's deliveries stay frozen (its share of the provider's cap
# with them) until ack_wait passes; live workers renew every delivery they hold with
# heartbeats at a quarter of it, so a long call never times out under them.
DEFAULT_ACK_WAIT_S = 6.0


def ack_wait_s(cfg: Config, provider: str) -> float:
    p = cfg.providers[provider]
    return p.ack_wait_ms / 1000 if p.ack_wait_ms else DEFAULT_ACK_WAIT_S


def team_consumer(provider: str, lane: str, team: str) -> str:
    """A team's consumer of the pool's lane (fair share, workers/fair.py); team "": the
    lane's own, for dispatches published without a team."""
    return f"{pool_consumer(provider, lane)}-t-{team}" if team else pool_consumer(provider, lane)


def pool_filter(cfg: Config, provider: str, lane: str, team: str) -> str:
    """With one lane, its consumers take both lanes' subjects."""
    return wire.dispatch(provider, lane if len(lane_caps(cfg, provider)) > 1 else "*", team or None)


def pool_of(cc: ConsumerConfig) -> tuple[str, str, str] | None:
    """(provider, lane, team) of a pool consumer, read from its filter (names may hold '-');
    team "" for the lane's own consumer. None for any other consumer."""
    parts = wire.dispatch_parts(cc.filter_subject or "")
    if parts is None or not (cc.durable_name or "").startswith("pool-"):
        return None
    provider, lane, team = parts
    return provider, "interactive" if lane == "*" else lane, team or ""


def pool_consumer_config(cfg: Config, provider: str, lane: str = "interactive", team: str = "", max_ack_pending: int = 1) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=team_consumer(provider, lane, team),
        filter_subject=pool_filter(cfg, provider, lane, team),
        ack_policy=AckPolicy.EXPLICIT,
        # Heartbeats renew it, so it bounds how long a dead worker's deliveries stay frozen.
        ack_wait=ack_wait_s(cfg, provider),
        # This team's share of the lane's slots, set by the fair-share controller: the limits
        # of a lane's consumers sum to at most its cap, enforced by the server across every
        # worker process.
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
    )


async def ensure_pool_consumers(js: JetStreamContext, cfg: Config, provider: str) -> None:
    """A pool's consumers are made by its fair-share controller as teams' jobs arrive. Here,
    at start, the leftovers of a changed lane layout are put right: a lane switched off loses
    its consumers (they would take its jobs at their old limits), and one whose filter changed
    (one lane <-> two) gets the new filter, keeping its limit."""
    lanes = lane_caps(cfg, provider)
    try:
        infos = await all_consumers(js, wire.DISPATCH_STREAM)
    except NotFoundError:
        return
    for ci in infos:
        parts = pool_of(ci.config)
        if parts is None or parts[0] != provider:
            continue
        _, lane, team = parts
        if lane not in lanes:
            try:
                await js.delete_consumer(wire.DISPATCH_STREAM, ci.name)
            except NotFoundError:
                pass
        elif ci.config.filter_subject != pool_filter(cfg, provider, lane, team):
            await ensure_consumer(js, wire.DISPATCH_STREAM, pool_consumer_config(cfg, provider, lane, team, ci.config.max_ack_pending or 1))


CONSUMER_PAGE = 256  # the server's page of CONSUMER.LIST


async def all_consumers(js: JetStreamContext, stream: str) -> list[ConsumerInfo]:
    """Every consumer of the stream, past the first page (a pool has one per team and lane)."""
    out = await js.consumers_info(stream)
    while len(out) % CONSUMER_PAGE == 0 and out:
        page = await js.consumers_info(stream, offset=len(out))
        if not page:
            break
        out += page
    return out


@dataclass
class PoolDepth:
    """A pool lane's dispatches, over all its team consumers: a team's jobs may wait in the
    stream before its consumer exists (workers/fair.py creates it), so they are counted from
    the stream's subjects."""

    in_stream: int = 0  # queued or running (a work queue keeps a dispatch until it is acked)
    running: int = 0  # delivered, not yet acked
    consumers: list[ConsumerInfo] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return max(0, self.in_stream - self.running)


async def pool_depths(js: JetStreamContext, cfg: Config | None = None) -> dict[tuple[str, str], PoolDepth]:
    """(provider, lane) -> its depth. With `cfg`, a one-lane provider's batch subjects count in
    its one (interactive) lane, as its consumers take them."""
    try:
        info = await js.stream_info(wire.DISPATCH_STREAM, subjects_filter="pb.dispatch.>")
        infos = await all_consumers(js, wire.DISPATCH_STREAM)
    except NotFoundError:
        return {}
    out: dict[tuple[str, str], PoolDepth] = {}
    for subject, n in (info.state.subjects or {}).items():
        parts = wire.dispatch_parts(subject)
        if parts is None:
            continue
        provider, lane, _ = parts
        if cfg is not None and provider in cfg.providers and lane not in lane_caps(cfg, provider):
            lane = "interactive"
        out.setdefault((provider, lane), PoolDepth()).in_stream += n or 0
    for ci in infos:
        if (pool := pool_of(ci.config)) is not None:
            d = out.setdefault(pool[:2], PoolDepth())
            d.running += ci.num_ack_pending or 0
            d.consumers.append(ci)
    return out


async def ensure_consumer(js: JetStreamContext, stream: str, cc: ConsumerConfig) -> None:
    await js.add_consumer(stream, cc)  # create-or-update: the server accepts the same config twice


HEALTH_BUCKET = "PB_HEALTH"  # HealthState per provider/model (broker/health.py), shared by every broker


async def ensure_kv(js: JetStreamContext, bucket: str, replicas: int = 1, history: int = 1):
    """A JetStream KV bucket, created if missing (file storage: it survives restarts). Safe when
    several processes call it at once."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, replicas=replicas, storage=StorageType.FILE))
    except BadRequestError as e:  # another process created it between our two calls
        if e.err_code != 10058:
            raise
        return await js.key_value(bucket)


async def ensure_health_kv(js: JetStreamContext, cfg: Config):
    return await ensure_kv(js, HEALTH_BUCKET, replicas=cfg.nats.replicas)
