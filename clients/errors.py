"""Exceptions that mirror the JobError union: catch JobFailed, or the one kind you care about."""

from __future__ import annotations

from schemas import errors as e
from schemas.job import Attempt, Failed


class PanelboardError(Exception):
    pass


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


def exception_for(failed: Failed) -> JobFailed:
    return _BY_TYPE.get(type(failed.error), JobFailed)(failed)


class ResultTimeout(PanelboardError, TimeoutError):
    def __init__(self, job_id: str, timeout: float):
        super().__init__(f"no result for job {job_id} within {timeout}s; it is still queued or running: call result() again later")
        self.job_id = job_id
