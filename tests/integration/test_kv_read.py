"""Reading a whole KV bucket (transport/kv_read.py) against a real nats-server: every live key,
every time, where nats-py's `keys()` may stop at an early "no more" marker."""

from __future__ import annotations

import uuid

import nats
from nats.js.api import KeyValueConfig
from nats.js.errors import NoKeysError

from panelboard.transport.kv_read import live_entries


async def test_every_live_key_is_read_every_time_and_deleted_ones_never(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket="KVREAD_" + uuid.uuid4().hex[:8], history=1))
        # Given 60 keys, 10 of them deleted and 5 overwritten
        for i in range(60):
            await kv.put(f"batch.p.{i}", f"v{i}".encode())
        for i in range(10):
            await kv.delete(f"batch.p.{i}")
        for i in range(50, 55):
            await kv.put(f"batch.p.{i}", b"newer")
        want = {f"batch.p.{i}" for i in range(10, 60)}
        # When the bucket is read 100 times over, then every read has exactly the live keys
        short = 0
        for _ in range(100):
            assert {e.key for e in await live_entries(kv)} == want
            try:
                short += len(set(await kv.keys())) < len(want)
            except NoKeysError:
                short += 1
        values = {e.key: e.value for e in await live_entries(kv)}
        assert values["batch.p.52"] == b"newer" and values["batch.p.10"] == b"v10" and len(values) == 50
        print(f"\nnats-py keys() came back short {short} times of 100")
    finally:
        await nc.close()
