"""The lean JetStream publish (transport/jspub.py) against a real nats-server: the same PubAck
and the same errors as nats-py's `JetStreamContext.publish`, which it replaces on the hot path."""

from __future__ import annotations

import asyncio
import uuid

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from panelboard.transport import jspub


@pytest.fixture
async def nc(nats_server):
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


async def test_a_publish_answers_with_the_streams_seq_and_a_retry_is_a_duplicate(nc):
    js = nc.jetstream()
    name = "JSPUB_" + uuid.uuid4().hex[:8].upper()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    subject = f"{name.lower()}.a"
    # Given 200 publishes in flight at once on one connection, each with its own id
    acks = await asyncio.gather(*(jspub.publish(nc, subject, b"x", {"Nats-Msg-Id": f"m{i}"}) for i in range(200)))
    # Then each got its own PubAck: every seq once, the stream's name, none a duplicate
    assert sorted(a.seq for a in acks) == list(range(1, 201)) and {a.stream for a in acks} == {name}
    assert not any(a.duplicate for a in acks)
    # and the same id again is the stream's duplicate, as nats-py reports it
    again = await jspub.publish(nc, subject, b"x", {"Nats-Msg-Id": "m7"})
    assert again.duplicate and again.seq == acks[7].seq
    assert (await js.stream_info(name)).state.messages == 200


async def test_a_refused_publish_raises_nats_pys_api_error(nc):
    js = nc.jetstream()
    name = "JSPUB_" + uuid.uuid4().hex[:8].upper()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    subject = f"{name.lower()}.claim"
    await jspub.publish(nc, subject, b"1", {"Nats-Expected-Last-Subject-Sequence": "0"})
    # A second "create" of the same subject is refused: wrong last sequence (the claim path's signal)
    with pytest.raises(nats.js.errors.BadRequestError) as e:
        await jspub.publish(nc, subject, b"2", {"Nats-Expected-Last-Subject-Sequence": "0"})
    assert e.value.err_code == 10071


async def test_no_stream_and_no_answer_raise_what_the_retry_loop_retries(nc):
    # A subject no stream holds: no responders, at once
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await jspub.publish(nc, "jspub.nowhere." + uuid.uuid4().hex, b"x", timeout_s=5.0)
    # A subject something listens on but never answers: the timeout, and nothing left waiting
    subject = "jspub.silent." + uuid.uuid4().hex
    await nc.subscribe(subject)
    await nc.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await jspub.publish(nc, subject, b"x", timeout_s=0.3)
    assert not jspub._by_connection[nc].waiting
