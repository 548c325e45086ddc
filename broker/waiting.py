"""Why jobs sit: keys (or teams) over a rate limit with on_limit=wait.

A waiting job is nak'd back into PB_JOBS again and again until its window frees room; logging
each of those would be one line per job per retry, and not logging them leaves an operator
with a queue that does not move and no reason. So a broker keeps, per owner, the jobs it saw
waiting, logs one line per owner per interval, and publishes the table to the PB_WAITING KV
bucket (one entry per broker, aged out if the broker dies), which `panelboard status` shows.
"""

from __future__ import annotations

import msgspec

INTERVAL_S = 10.0  # at most one log line per owner this often; the KV entry is refreshed as often
# A waiting job is tried again at least every WINDOW_S + 1 s (ratelimit.wait_delay): one not
# seen for longer has left (admitted by another broker, expired, cancelled).
HORIZON_S = 65.0
WAITING_BUCKET = "PB_WAITING"


class Waiting(msgspec.Struct):
    owner: str  # "key pb_ab12c" or "team default": a key's prefix, never the key
    limit: str  # rpm | tpm | parallel
    jobs: int  # jobs seen waiting on it (and not admitted since)
    since: float  # when it started waiting


def owner_and_limit(reason: str) -> tuple[str, str]:
    """admission.Wait.reason is "<owner> <limit>", e.g. "key pb_ab12c rpm"."""
    owner, _, limit = reason.rpartition(" ")
    return (owner or reason), limit


class WaitLog:
    """Pure bookkeeping (the clock is passed in): what to log, and the table to publish."""

    def __init__(self, interval_s: float = INTERVAL_S, horizon_s: float = HORIZON_S):
        self.interval_s = interval_s
        self.horizon_s = horizon_s
        self.jobs: dict[str, dict[str, float]] = {}  # owner -> job id -> last seen waiting
        self.owner_of: dict[str, str] = {}  # job id -> owner
        self.limit: dict[str, str] = {}
        self.since: dict[str, float] = {}
        self.logged: dict[str, float] = {}  # owner -> when its last line was logged

    def note(self, reason: str, job_id: str, now: float) -> Waiting | None:
        """A job waits: the owner's row when a log line is due (its first wait, or the first
        after an interval), else None."""
        owner, limit = owner_and_limit(reason)
        prev = self.owner_of.get(job_id)
        if prev is not None and prev != owner:
            self.jobs[prev].pop(job_id, None)
        self.owner_of[job_id] = owner
        self.jobs.setdefault(owner, {})[job_id] = now
        self.limit[owner] = limit
        self.since.setdefault(owner, now)
        if now - self.logged.get(owner, -self.interval_s) >= self.interval_s:
            self.logged[owner] = now
            return Waiting(owner, limit, len(self.jobs[owner]), self.since[owner])
        return None

    def done(self, job_id: str) -> None:
        """The job left the wait (admitted, or failed): it no longer counts."""
        owner = self.owner_of.pop(job_id, None)
        if owner is not None:
            self.jobs[owner].pop(job_id, None)

    def snapshot(self, now: float) -> list[Waiting]:
        """Owners with jobs waiting, after dropping jobs not seen within the horizon."""
        out = []
        for owner in list(self.jobs):
            live = self.jobs[owner]
            for job_id in [j for j, t in live.items() if now - t > self.horizon_s]:
                live.pop(job_id)
                self.owner_of.pop(job_id, None)
            if not live:
                for d in (self.jobs, self.limit, self.since):
                    d.pop(owner, None)
                continue
            out.append(Waiting(owner, self.limit[owner], len(live), self.since[owner]))
        return sorted(out, key=lambda w: w.owner)


def merge(tables: list[list[Waiting]]) -> list[Waiting]:
    """Several brokers' tables as one row per owner (a job that moved between brokers within
    the horizon may be counted by both: an upper bound)."""
    by: dict[str, Waiting] = {}
    for table in tables:
        for w in table:
            if w.owner in by:
                m = by[w.owner]
                by[w.owner] = Waiting(w.owner, m.limit, m.jobs + w.jobs, min(m.since, w.since))
            else:
                by[w.owner] = w
    return sorted(by.values(), key=lambda w: w.owner)


# -- the PB_WAITING bucket: I/O only --------------------------------------------------------

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[Waiting]).decode


async def _bucket(js, replicas: int = 1, create: bool = True):
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError

    try:
        return await js.key_value(WAITING_BUCKET)
    except BucketNotFoundError:
        if not create:
            return None
    try:  # memory: the table is live state; ttl: a dead broker's entry ages out
        return await js.create_key_value(KeyValueConfig(bucket=WAITING_BUCKET, history=1, replicas=replicas,
                                                        ttl=3 * INTERVAL_S, storage=StorageType.MEMORY))
    except BadRequestError as e:  # another broker created it between our two calls
        if e.err_code != 10058:
            raise
        return await js.key_value(WAITING_BUCKET)


async def publish(js, broker: str, table: list[Waiting], replicas: int = 1) -> None:
    kv = await _bucket(js, replicas)
    if table:
        await kv.put(broker, _encode(table))
    else:
        await kv.delete(broker)


async def read(js) -> list[Waiting]:
    """Every broker's table, merged: empty when no broker has had a job waiting."""
    kv = await _bucket(js, create=False)
    if kv is None:
        return []
    from panelboard.transport.kv_read import live_entries

    return merge([_decode(e.value) for e in await live_entries(kv) if e.value])
