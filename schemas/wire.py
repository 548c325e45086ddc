"""The public wire contract: subjects, headers, stream names. Changing these breaks clients."""

from __future__ import annotations

JOBS_STREAM = "PB_JOBS"
DISPATCH_STREAM = "PB_DISPATCH"
RESULTS_STREAM = "PB_RESULTS"
COSTS_STREAM = "PB_COSTS"
DEAD_STREAM = "PB_DEAD"
ATTEMPTS_STREAM = "PB_ATTEMPTS"
CLAIMS_STREAM = "PB_CLAIMS"
LANES_STREAM = "PB_LANES"  # dispatches waiting for a provider batch (workers/batch_lane.py)
LANE_STATE_BUCKET = "PB_LANE_STATE"  # KV: provider batches in flight and who owns each provider's lane

HDR_MSG_ID = "Nats-Msg-Id"  # JetStream dedupe of a publish retried after a timeout
HDR_CHUNK = "Pb-Chunk"  # a streamed chunk's index within its job's stream: 0, 1, 2...
HDR_EXPECT_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"  # "0": create only if absent


def jobs(team: str, intent: str | None) -> str:
    """Where a job is published. The team token is the team the publisher claims: tenant users
    may publish only under their own team, and a virtual key's team must match it."""
    return f"pb.jobs.{team}.{intent or '_'}"


def jobs_subject_team(subject: str) -> str:
    """The team token of a job subject (pb.jobs.<team>.<intent>); "" when it has none."""
    parts = subject.split(".")
    return parts[2] if len(parts) >= 3 else ""


def jobs_subject_intent(subject: str) -> str | None:
    parts = subject.split(".")
    return parts[3] if len(parts) == 4 and parts[3] != "_" else None


LANES = ("interactive", "batch")  # priority lanes: each has its own share of a provider's slots


def dispatch(provider: str, lane: str = "interactive", team: str | None = None) -> str:
    """pb.dispatch.<provider>.<lane>.<team>: one subject per team, so each team has its own
    durable consumer and the pool can share its slots among teams (workers/fair.py). Without a
    team: the subject older versions published to, still consumed."""
    return f"pb.dispatch.{provider}.{lane}" if team is None else f"pb.dispatch.{provider}.{lane}.{team}"


def dispatch_parts(subject: str) -> tuple[str, str, str | None] | None:
    """(provider, lane, team or None) of a dispatch subject or consumer filter; None otherwise."""
    t = subject.split(".")
    if len(t) not in (4, 5) or t[:2] != ["pb", "dispatch"]:
        return None
    return t[2], t[3], t[4] if len(t) == 5 else None


def fair_nudge(provider: str) -> str:
    """Core NATS, payload the team: a team's dispatch for this provider after a quiet second, so
    the provider's fair-share controller gives its consumer a slot now, not at its next look."""
    return f"pb.fair.{provider}"


def batch_lane(provider: str) -> str:
    """A Dispatch (hop 0) the broker sent to the provider's batch lane instead of pb.dispatch."""
    return f"pb.lanes.batch.{provider}"


def batch_lane_msg_id(team: str, job_id: str, run: int, hop: int) -> str:
    return f"{team}.{job_id}:{run}:b{hop}"


def result(team: str, job_id: str) -> str:
    """The one terminal Result of a claimed job: any process of the team that knows the id
    reads it (direct get, last by subject) or waits for it live."""
    return f"pb.results.{team}.{job_id}"


def chunks(team: str, job_id: str) -> str:
    """Core NATS (not stored): a streaming job's chunks, each an OpenAI `chat.completion.chunk`
    JSON object, published by the worker in order; the terminal Result on result(team, job_id)
    still ends the job. Subscribe before submitting to see every chunk."""
    return f"pb.chunks.{team}.{job_id}"


def results_of(team: str) -> str:
    return f"pb.results.{team}.>"


def reject(team: str, seq: int) -> str:
    """A Failed for a publish refused before it could be claimed (undecodable, bad ids, bad
    key, team mismatch, oversized), addressed by its PB_JOBS sequence from the PubAck."""
    return f"pb.rejects.{team}.{seq}"


def rejects_of(team: str) -> str:
    return f"pb.rejects.{team}.>"


def claim(team: str, job_id: str, run: int = 0) -> str:
    """Ownership of (team, job, run): created once, by the broker, after the team is authenticated."""
    return f"pb.claims.{team}.{job_id}.{run}"


def end_claim(team: str, job_id: str, run: int = 0) -> str:
    """Who decides how a job held by a provider's batch lane ends: the lane (its answer, or a
    realtime dispatch) or a cancel. Created once (expected last subject sequence 0), so a cancel
    racing the lane's fan-out loses or wins as a whole: one terminal result either way."""
    return f"pb.claims.{team}.{job_id}.{run}.end"


def cost(team: str) -> str:
    return f"pb.costs.{team}"


def dead(reason: str) -> str:
    return f"pb.dead.{reason}"


def attempts(team: str, job_id: str, shadow: bool = False) -> str:
    return f"pb.attempts.{team}.{job_id}.shadow" if shadow else f"pb.attempts.{team}.{job_id}"


CONTROL_QUEUE = "broker"  # the queue group of the brokers' control subscribers: one answers each request


def control(team: str, action: str) -> str:
    """Core NATS request/reply (not stored): a team asks the broker to act for it, e.g.
    `cancel` with a schemas.control.CancelRequest, answered with a CancelReply. The team token
    is who asks; the broker acts only on that team's jobs."""
    return f"pb.control.{team}.{action}"


def submit_msg_id(team: str, job_id: str, nonce: str) -> str:
    """A submit's Nats-Msg-Id: unique per submit call (the nonce), so the stream drops only
    that call's own retries; ownership of the job id is the broker's claim, not this."""
    return f"{team}.{job_id}.{nonce}"


def submit_msg_id_fits(header_id: str, team: str, job_id: str) -> bool:
    """A submit's Nats-Msg-Id, when one is sent, names the job it carries."""
    return header_id == f"{team}.{job_id}" or header_id.startswith(f"{team}.{job_id}.")


# Nats-Msg-Ids: derived from (team, job, run, hop, attempt), so a step redone after a crash
# is dropped by the stream's dedupe window instead of counted twice, and two teams' jobs of
# the same id never dedupe each other.
def _s(shadow: bool) -> str:
    return ":s" if shadow else ""


def dispatch_msg_id(team: str, job_id: str, run: int, hop: int, shadow: bool = False) -> str:
    return f"{team}.{job_id}:{run}:d{hop}{_s(shadow)}"


def result_msg_id(team: str, job_id: str, run: int) -> str:
    return f"{team}.{job_id}:{run}:result"


def reject_msg_id(seq: int) -> str:
    return f"jobs-{seq}:reject"


def cost_msg_id(team: str, job_id: str, run: int, hop: int, attempt: int, shadow: bool = False) -> str:
    return f"{team}.{job_id}:{run}:c{hop}:{attempt}{_s(shadow)}"


def attempt_msg_id(team: str, job_id: str, run: int, hop: int, attempt: int, shadow: bool = False) -> str:
    return f"{team}.{job_id}:{run}:a{hop}:{attempt}{_s(shadow)}"


def dead_msg_id(team: str, job_id: str, run: int) -> str:
    return f"{team}.{job_id}:{run}:dead"

