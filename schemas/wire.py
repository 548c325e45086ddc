"""The public wire contract: subjects, headers, stream names. Changing these breaks clients."""

from __future__ import annotations

JOBS_STREAM = "PB_JOBS"
DISPATCH_STREAM = "PB_DISPATCH"
RESULTS_STREAM = "PB_RESULTS"
COSTS_STREAM = "PB_COSTS"
DEAD_STREAM = "PB_DEAD"
ATTEMPTS_STREAM = "PB_ATTEMPTS"

HDR_MSG_ID = "Nats-Msg-Id"  # JetStream dedupe: the job id on submit
HDR_CLIENT = "Pb-Client"  # where the result goes, even if the body cannot be decoded


def jobs(intent: str | None) -> str:
    return f"pb.jobs.{intent or '_'}"


LANES = ("interactive", "batch")  # priority lanes: each has its own share of a provider's slots


def dispatch(provider: str, lane: str = "interactive") -> str:
    return f"pb.dispatch.{provider}.{lane}"


def result(client: str, job_id: str) -> str:
    return f"pb.results.{client}.{job_id}"


def cost(team: str) -> str:
    return f"pb.costs.{team}"


def dead(reason: str) -> str:
    return f"pb.dead.{reason}"


def attempts(job_id: str, shadow: bool = False) -> str:
    return f"pb.attempts.{job_id}.shadow" if shadow else f"pb.attempts.{job_id}"


def submit_msg_id(job_id: str, run: int = 0) -> str:
    """The submit dedupe key: the job id; a replay (run n) is a new submission."""
    return job_id if run == 0 else f"{job_id}~{run}"


# Nats-Msg-Ids: derived from (job, run, hop, attempt), so a step redone after a crash is
# dropped by the stream's dedupe window instead of counted twice.
def _s(shadow: bool) -> str:
    return ":s" if shadow else ""


def dispatch_msg_id(job_id: str, run: int, hop: int, shadow: bool = False) -> str:
    return f"{job_id}:{run}:d{hop}{_s(shadow)}"


def result_msg_id(job_id: str, run: int) -> str:
    return f"{job_id}:{run}:result"


def cost_msg_id(job_id: str, run: int, hop: int, attempt: int, shadow: bool = False) -> str:
    return f"{job_id}:{run}:c{hop}:{attempt}{_s(shadow)}"


def attempt_msg_id(job_id: str, run: int, hop: int, attempt: int, shadow: bool = False) -> str:
    return f"{job_id}:{run}:a{hop}:{attempt}{_s(shadow)}"


def dead_msg_id(job_id: str, run: int) -> str:
    return f"{job_id}:{run}:dead"
