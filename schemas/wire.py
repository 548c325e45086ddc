"""The public wire contract: subjects, headers, stream names. Changing these breaks clients."""

from __future__ import annotations

JOBS_STREAM = "PB_JOBS"
DISPATCH_STREAM = "PB_DISPATCH"
RESULTS_STREAM = "PB_RESULTS"
COSTS_STREAM = "PB_COSTS"
DEAD_STREAM = "PB_DEAD"

HDR_MSG_ID = "Nats-Msg-Id"  # JetStream dedupe: the job id on submit
HDR_CLIENT = "Pb-Client"  # where the result goes, even if the body cannot be decoded


def jobs(intent: str | None) -> str:
    return f"pb.jobs.{intent or '_'}"


def dispatch(provider: str) -> str:
    return f"pb.dispatch.{provider}"


def result(client: str, job_id: str) -> str:
    return f"pb.results.{client}.{job_id}"


def cost(team: str) -> str:
    return f"pb.costs.{team}"


def dead(reason: str) -> str:
    return f"pb.dead.{reason}"


def dispatch_msg_id(job_id: str, hop: int, attempt: int = 0) -> str:
    return f"{job_id}:d{hop}:{attempt}"


def result_msg_id(job_id: str) -> str:
    return f"{job_id}:result"


def cost_msg_id(job_id: str, hop: int, attempt: int) -> str:
    return f"{job_id}:c{hop}:{attempt}"
