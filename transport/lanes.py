"""The batch lane's place in JetStream: publishing a dispatch to it, its KV bucket, and how
the lane and a cancel agree on who ends a job the lane holds (its end claim, its marks)."""

from __future__ import annotations

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from panelboard.schemas import wire
from panelboard.schemas.codec import encode
from panelboard.schemas.config import Config
from panelboard.schemas.job import Dispatch
from panelboard.schemas.lanes import CancelMarks, cancels_key
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



async def claim_end(js: JetStreamContext, team: str, job_id: str, run: int, who: bytes) -> bytes:
    """Claim the end of (team, job, run) for `who`; returns who holds it: `who` when it is ours
    (just created, or by an earlier try of ours), else the first claimant's data."""
    subject = wire.end_claim(team, job_id, run)
    try:
        await bus.publish(js, subject, who, headers={wire.HDR_EXPECT_LAST_SUBJECT_SEQ: "0"})
        return who
    except nats.js.errors.APIError as e:
        if e.err_code != 10071:  # wrong last sequence: the claim exists
            raise
    return (await js.get_last_msg(wire.CLAIMS_STREAM, subject, direct=True)).data or b""


async def read_end(js: JetStreamContext, team: str, job_id: str, run: int) -> bytes | None:
    """Who holds the end claim of (team, job, run); None: nobody yet."""
    try:
        return (await js.get_last_msg(wire.CLAIMS_STREAM, wire.end_claim(team, job_id, run), direct=True)).data or b""
    except nats.js.errors.NotFoundError:
        return None


async def read_marks(kv: KeyValue, provider: str, batch_id: str) -> set[int]:
    try:
        entry = await kv.get(cancels_key(provider, batch_id))
    except KeyNotFoundError:
        return set()
    return set(msgspec.json.decode(entry.value, type=CancelMarks).seqs) if entry.value else set()


async def add_marks(kv: KeyValue, provider: str, batch_id: str, seqs: set[int]) -> None:
    """Add to a provider batch's marks, compare-and-set: two cancels at once both count."""
    key = cancels_key(provider, batch_id)
    while True:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        held = set(msgspec.json.decode(entry.value, type=CancelMarks).seqs) if entry is not None and entry.value else set()
        value = encode(CancelMarks(seqs=sorted(held | seqs)))
        try:
            if entry is None:
                await kv.create(key, value)
            else:
                await kv.update(key, value, last=entry.revision)
            return
        except KeyWrongLastSequenceError:
            continue
