"""The batch lane's shared pieces: what a provider batch keeps in JetStream KV while it runs,
and the ids that make every step of it safe to redo after a crash.

    PB_LANE_STATE (KV)   owner.<provider>           Owner: which process drives the lane
                         batch.<provider>.<id>      ProviderBatch: one provider batch
                         cancels.<provider>.<id>    CancelMarks: its jobs a cancel has ended
    PB_CLAIMS (stream)   pb.claims.<team>.<job>.<run>.end   END_LANE or END_CANCEL + reason:
                                                    who ends a job the lane holds (wire.end_claim)
    PB_LANES (stream)    pb.lanes.batch.<provider>  the Dispatches waiting for (or in) one
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import msgspec

from panelboard.schemas.config import BatchLane, Config
from panelboard.schemas.errors import Cancelled
from panelboard.schemas.job import Attempt, Failed, Job

# A provider-batch call's attempt number: far from realtime attempts (0, 1, 2...), so a job
# that falls back to realtime never reuses its request id, cost-record key or ledger row.
BATCH_ATTEMPT = 1000

Stage = Literal["collected", "uploaded", "created", "ended", "fell_back", "done"]
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")


def duration_s(text: str) -> float:
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 90m, 30s)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def custom_id(team: str, job_id: str, run: int, hop: int) -> str:
    """A job's line id in a provider batch: the same whichever process builds the batch, and
    within both APIs' rules (Anthropic allows 1-64 of [A-Za-z0-9_-])."""
    return "pb_" + hashlib.blake2b(f"{team}\0{job_id}\0{run}\0{hop}".encode(), digest_size=16).hexdigest()


def capability(cfg: Config, model: str) -> BatchLane | None:
    """The batch lane of a catalog model: its own, else its provider's."""
    m = cfg.models.get(model)
    if m is None:
        return None
    return m.batch or cfg.providers[m.provider].batch


class Owner(msgspec.Struct, kw_only=True):
    owner: str  # host-pid-nonce of the process driving this provider's lane
    until: float  # unix seconds; past it another process may take over


class ProviderBatch(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One provider batch, from the moment its jobs are collected until they are all fanned
    out. Written (compare-and-set on the key's revision) before each step's effect is relied
    on, so a crash at any stage resumes from the last written one:

        collected -> uploaded (file_id) -> created (batch_id) -> ended -> done
                  \\-> fell_back (deadline near: jobs sent realtime, provider batch cancelled) -> done
    """

    id: str  # ours: the uploaded file's name and the provider batch's metadata.pb_batch
    provider: str
    model: str  # catalog name
    seqs: list[int]  # PB_LANES sequences of its jobs, in line order
    stage: Stage = "collected"
    collected_at: float = 0.0
    earliest_deadline: float | None = None
    file_id: str | None = None
    batch_id: str | None = None
    created_at: float | None = None
    status: str | None = None  # the provider's last status
    output_file_id: str | None = None
    error_file_id: str | None = None
    polls: int = 0
    # Sequences a cancel ended before the upload: left out of its lines, never sent.
    dropped: list[int] = []
    # Anthropic: when the create was sent. Its batches carry no name of ours, so a create whose
    # answer a crash lost is found as the one batch created since that no other state claims.
    creating_since: float | None = None


def state_key(provider: str, batch_id: str) -> str:
    return f"batch.{provider}.{batch_id}"


def owner_key(provider: str) -> str:
    return f"owner.{provider}"


def cancels_key(provider: str, batch_id: str) -> str:
    return f"cancels.{provider}.{batch_id}"


class CancelMarks(msgspec.Struct, kw_only=True):
    """Sequences of one provider batch whose jobs a cancel has ended (it won their end claim):
    the lane cancels the provider batch once they are all of its jobs. A hint only: the end
    claims decide, so a mark that is late costs a provider call, never a second result."""

    seqs: list[int] = []


# Data of a job's end claim (wire.end_claim): the lane, or a cancel followed by its reason.
END_LANE = b"lane"
END_CANCEL = b"cancel:"


def lane_cancelled(job: Job, history: list[Attempt], provider: str, reason: str) -> Failed:
    """The `cancelled` result of a job a cancel took from a batch lane: the same whoever
    publishes it (the cancel, or the lane finishing a cancel that died after its claim)."""
    err = Cancelled(message=f"job {job.id} was cancelled while it waited in {provider}'s batch lane ({reason})",
                    hint="no answer is delivered for it; if the provider batch had already run its line, that call is billed "
                         "(a cost record with lane=batch); submit it again (a new job id) if it is still wanted")
    return Failed(job_id=job.id, error=err, attempts=history, metadata=job.metadata)
