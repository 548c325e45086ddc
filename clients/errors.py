"""Exceptions that mirror the JobError union: catch JobFailed, or the one kind you care about."""

from __future__ import annotations

from panelboard.schemas import errors as e
from panelboard.schemas.job import Attempt, Failed


class PanelboardError(Exception):
    pass


class ServerUnreachable(PanelboardError, ConnectionError):
    """No NATS server answered (or accepted us) within the connect patience: the message
    names the URL tried and what to do."""


class JobFailed(PanelboardError):
    def __init__(self, failed: Failed):
        self.failed = failed
        self.error = failed.error
        self.attempts: list[Attempt] = failed.attempts
        super().__init__(f"{failed.error.message} (hint: {failed.error.hint})")


class InvalidJobError(JobFailed): ...
class UnknownIntentError(JobFailed): ...
class BadKeyError(JobFailed): ...
class OverBudgetError(JobFailed): ...
class RateLimitedError(JobFailed): ...
class PromptTooLargeError(JobFailed): ...
class DeadlineExceededError(JobFailed): ...
class JobCancelledError(JobFailed): ...  # kind `cancelled` (not asyncio.CancelledError)
class ProviderErrorError(JobFailed): ...
class ChainExhaustedError(JobFailed): ...
class ResponseTooLargeError(JobFailed): ...


_BY_TYPE: dict[type, type[JobFailed]] = {
    e.InvalidJob: InvalidJobError,
    e.UnknownIntent: UnknownIntentError,
    e.BadKey: BadKeyError,
    e.OverBudget: OverBudgetError,
    e.RateLimited: RateLimitedError,
    e.PromptTooLarge: PromptTooLargeError,
    e.DeadlineExceeded: DeadlineExceededError,
    e.Cancelled: JobCancelledError,
    e.ProviderError: ProviderErrorError,
    e.ChainExhausted: ChainExhaustedError,
    e.ResponseTooLarge: ResponseTooLargeError,
}


def too_large(job_id: str, size: int, limit: int, metadata: dict | None = None) -> PromptTooLargeError:
    """A job bigger than the server's max_payload: refused before it is published (nats-py
    raises MaxPayloadError), as the PromptTooLarge a gateway limit would give."""
    err = e.PromptTooLarge(message=f"the job is {size} bytes, over the NATS server's max_payload of {limit} bytes; it was not sent",
                           hint="send a shorter prompt (split the document, or summarise it in parts), "
                                "or ask an operator to raise the server's max_payload")
    return PromptTooLargeError(Failed(job_id=job_id, error=err, metadata=metadata or {}))


def exception_for(failed: Failed) -> JobFailed:
    return _BY_TYPE.get(type(failed.error), JobFailed)(failed)


class ResultTimeout(PanelboardError, TimeoutError):
    def __init__(self, job_id: str, timeout: float):
        super().__init__(f"no result for job {job_id} within {timeout}s; it is still queued or running: call result() again later")
        self.job_id = job_id
