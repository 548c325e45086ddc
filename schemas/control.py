"""Control requests: what a client asks the broker to do for it, on pb.control.<team>.<action>
(core NATS request/reply, answered by one broker process of the `broker` queue group). The
subject's team is who asks: a tenant user may publish only under its own team, and the
broker acts only on that team's jobs. Privileged work (pausing consumers, deleting stream
messages) stays in the broker; the client only asks."""

from __future__ import annotations

import msgspec


class CancelRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Cancel the asking team's queued jobs: one job (`job_id`), or every job submitted under
    the client id `client` (a batch's jobs). Exactly one of the two."""

    job_id: str = ""
    client: str = ""
    reason: str = ""  # recorded in each cancelled job's error message


class CancelReply(msgspec.Struct, kw_only=True):
    cancelled: int = 0  # taken out of a queue, given a `cancelled` result, never called
    # Of those, ended in a provider's batch lane (waiting for, or inside, a provider batch): a
    # provider batch that had already run its line bills that call (its cost record is kept).
    lane: int = 0
    running: int = 0  # found already handed to a broker or worker: left to finish
    scanned: int = 0  # queued messages read
    ids: list[str] = []  # the cancelled job ids (for a single-job cancel)
    error: str = ""  # the request was refused: what was wrong and what to do
