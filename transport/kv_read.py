"""Reading a whole KV bucket once, without trusting nats-py's "no more" marker alone.

`KeyValue.watch` (and so `KeyValue.keys`) sends that marker when the consumer reports nothing
pending and the subscription has handled nothing yet, which is also the case when the server
has pushed every entry but the client has not handled them: the reader then sees an empty
bucket. Seen in CI: a cancel scan read no batch-lane state and missed a job (stop 25), and a
broker read an empty PB_HEALTH after a restart (stop 24). Our buckets keep one message per key
(history 1), so the stream's message count says how many entries are due.
"""

from __future__ import annotations

import nats.errors
from nats.js.kv import KeyValue

IDLE_S = 5.0  # no entry for this long: nothing more is coming (the bucket shrank meanwhile)


async def live_entries(kv: KeyValue) -> list[KeyValue.Entry]:
    """Every key's current entry (value and revision), deleted and purged keys left out."""
    due = (await kv.status()).stream_info.state.messages
    out: list[KeyValue.Entry] = []
    seen, done = 0, False
    watcher = await kv.watchall()
    try:
        while not (done and seen >= due):
            try:
                e = await watcher.updates(timeout=IDLE_S)
            except nats.errors.TimeoutError:  # the only error updates() raises
                break
            if e is None:
                done = True
                continue
            seen += 1
            if e.operation is None:
                out.append(e)
    finally:
        await watcher.stop()
    return out
