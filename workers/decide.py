"""The retry / fallback decision: pure functions of the outcome and where the job stands.

    number_attempt(recorded, delivered) -> Numbering        which call this delivery makes
    call_timeout_s(link_ms, deadline, now) -> float | None  how long it may take
    decide(outcome, spent, hop, chain_len, link, policy) -> Succeed | Retry | Forward | Fail
"""

from __future__ import annotations

import random
from typing import ClassVar

import msgspec

from panelboard.schemas import triggers
from panelboard.schemas.config import Link, RetryPolicy
from panelboard.schemas.errors import ChainExhausted, DeadlineExceeded, InvalidJob, JobError, PromptTooLarge, ProviderError
from panelboard.schemas.job import Attempt, AttemptDecision
from panelboard.workers.outcome import ClientError, Inexpressible, Ok, Outcome, StreamBroken, RateLimited, ServerError, Timeout, status_of


class Succeed(msgspec.Struct):
    name: ClassVar[AttemptDecision] = "succeed"  # as an Attempt records it


class Retry(msgspec.Struct):
    name: ClassVar[AttemptDecision] = "retry"
    delay_s: float


class Forward(msgspec.Struct):
    name: ClassVar[AttemptDecision] = "forward"
    hop: int


class Fail(msgspec.Struct):
    name: ClassVar[AttemptDecision] = "fail"
    error: JobError


Decision = Succeed | Retry | Forward | Fail


# Calls cut off by our own crashes are not the provider's failures, but a job that keeps
# killing its worker must not loop for free: past this many, lost calls spend retries too.
LOST_ALLOWANCE = 3


class Numbering(msgspec.Struct, frozen=True):
    attempt: int  # this call's number within the hop: its request id and cost record key
    lost: tuple[int, ...] = ()  # numbers handed out before but never recorded: cut off mid-call
    spent: int = 0  # the hop's retry budget used: provider answers, not our own crashes


def number_attempt(recorded: list[Attempt], delivered: int) -> Numbering:
    """Number a (re)delivery of one hop from this hop's recorded attempts and the delivery
    count (1 = first delivery). A restarted server may count deliveries from scratch, so the
    number also goes past every recorded attempt: a request id is never reused for a new call.
    Delivered numbers with no record were cut off with their worker ("lost")."""
    seen = {a.attempt for a in recorded}
    attempt = max(delivered - 1, max(seen, default=-1) + 1)
    lost = tuple(n for n in range(attempt) if n not in seen)
    lost_total = len(lost) + sum(a.decision == "lost" for a in recorded)
    # A flex refusal ("standard") moved the hop to another tier: it spends no retry.
    answered = sum(a.decision not in ("lost", "standard") for a in recorded)
    return Numbering(attempt, lost, answered + max(0, lost_total - LOST_ALLOWANCE))


def call_timeout_s(link_ms: int, deadline: float | None, now: float) -> float | None:
    """The call's timeout: the hop's, cut to the time left before the job's deadline. None: the
    deadline has passed, so the call must not start."""
    left = None if deadline is None else deadline - now
    if left is not None and left <= 0:
        return None
    return link_ms / 1000 if left is None else min(link_ms / 1000, left)


def trigger_of(outcome: Outcome) -> str | None:
    match outcome:
        case RateLimited():
            return "429"
        case Timeout():
            return "timeout"
        case ServerError(status=s):
            return str(s)
    return None


def matches(link: Link, outcome: Outcome) -> bool:
    trig = trigger_of(outcome)
    if trig is None:
        return False
    return triggers.fires(link.on, None if trig == "timeout" else int(trig))


def backoff_s(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Exponential (or constant) backoff with +/- jitter, capped at max_delay_ms."""
    base = policy.base_ms * (2**attempt if policy.backoff == "exponential" else 1)
    delay = min(base, policy.max_delay_ms) / 1000
    if policy.jitter:
        delay *= 1 + (rng or random).uniform(-policy.jitter, policy.jitter)
    return max(0.0, delay)


def decide(
    outcome: Outcome,
    *,
    spent: int,
    hop: int,
    chain_len: int,
    link: Link,
    policy: RetryPolicy,
    provider: str,
    rng: random.Random | None = None,
    past_deadline: bool = False,
) -> Decision:
    """spent: the provider failures this hop has already seen (its own retry budget; calls we
    lost with a crashed worker are not counted, see number_attempt)."""
    has_next = hop + 1 < chain_len

    def exhausted() -> Fail:
        status = status_of(outcome)
        if has_next:  # retries spent on an error this link does not fall back on
            return Fail(
                ProviderError(
                    message=f"{provider} failed with {status or 'timeout'}: {getattr(outcome, 'message', '')}",
                    hint=f"add {trigger_of(outcome)!r} to this hop's `on` triggers to fall back on it",
                    provider=provider,
                    status=status,
                )
            )
        return Fail(
            ChainExhausted(
                message=f"every hop of the chain failed; the last, {provider}, with {status or 'timeout'}",
                hint="see attempts for each provider's answer; the job is in the dead-letter stream for `panelboard dead replay`",
            )
        )

    match outcome:
        case Ok():
            return Succeed()
        case Inexpressible(message=message, hint=hint):
            return Fail(InvalidJob(message=message, hint=hint))
        case StreamBroken(chunks=n, message=message):
            return Fail(ProviderError(
                message=f"{provider}'s stream broke after {n} chunk(s) had reached the client: {message}",
                hint="part of the answer was already streamed, so it is not retried: submit the job again (its cost record holds the usage known)",
                provider=provider, status=200,
            ))
        case _ if past_deadline:  # the call was cut short to the deadline: nothing may follow it
            return Fail(
                DeadlineExceeded(
                    message=f"the job reached its deadline during the call to {provider} ({status_of(outcome) or 'no answer'})",
                    hint="submit with a later deadline, or none; this call's cost is in the ledger",
                )
            )
        case RateLimited(hard=True):
            return Forward(hop + 1) if has_next else exhausted()
        case ClientError(kind="context_length"):
            if has_next:
                return Forward(hop + 1)
            return Fail(
                PromptTooLarge(
                    message=f"the prompt is longer than {provider}'s context window: {outcome.message}",
                    hint="shorten the prompt or route the intent to a tier with a larger-context model",
                )
            )
        case ClientError(kind="auth"):
            return Forward(hop + 1) if has_next else exhausted()
        case ClientError():
            return Fail(
                ProviderError(
                    message=f"{provider} rejected the request ({outcome.status}): {outcome.message}",
                    hint="the request itself is invalid for this model; fix it before resubmitting (retrying will not help)",
                    provider=provider,
                    status=outcome.status,
                )
            )
        case RateLimited() | ServerError() | Timeout():
            if spent < policy.max_retries:
                delay = backoff_s(spent, policy, rng)
                after = getattr(outcome, "retry_after_s", None)
                return Retry(max(delay, after) if after is not None else delay)
            if has_next and matches(link, outcome):
                return Forward(hop + 1)
            return exhausted()
    raise AssertionError(f"unhandled outcome {outcome!r}")
