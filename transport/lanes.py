"""The batch lane's place in JetStream: publishing a dispatch to it, and its KV bucket."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from panelboard.schemas import wire
from panelboard.schemas.codec import encode
from panelboard.schemas.config import Config
from panelboard.schemas.job import Dispatch
from panelboard.transport import bus
from panelboard.transport.streams import DAY


async def publish_to_batch_lane(js: JetStreamContext, d: Dispatch) -> None:
    provider = d.route.chain[d.hop].provider
    msg_id = wire.batch_lane_msg_id(d.job.team, d.job.id, d.job.run, d.hop)
    await bus.publish(js, wire.batch_lane(provider), encode(d), headers={wire.HDR_MSG_ID: msg_id})


async def ensure_state_kv(js: JetStreamContext, cfg: Config) -> KeyValue:
    """Owners and provider batches. Done batches stay (their sequences must never be batched
    again) until the bucket's age limit, longer than PB_LANES keeps a job."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError

    try:
        return await js.key_value(wire.LANE_STATE_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(KeyValueConfig(bucket=wire.LANE_STATE_BUCKET, history=1, ttl=4 * DAY,
                                                        replicas=cfg.nats.replicas, storage=StorageType.FILE))
    except BadRequestError as e:  # another process created it between our two calls
        if e.err_code != 10058:
            raise
        return await js.key_value(wire.LANE_STATE_BUCKET)

