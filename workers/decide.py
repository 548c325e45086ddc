"""The retry / fallback decision: a pure function of the outcome and where the job stands.

    decide(outcome, attempt, hop, chain_len, link, policy) -> Succeed | Retry | Forward | Fail
"""

from __future__ import annotations

import random
import re

import msgspec

from schemas.config import Link, RetryPolicy
from schemas.errors import ChainExhausted, JobError, PromptTooLarge, ProviderError
from workers.outcome import ClientError, Ok, Outcome, RateLimited, ServerError, Timeout, status_of

_TIMEOUT_RE = re.compile(r"^timeout>(\d+)ms$")


class Succeed(msgspec.Struct):
    pass


class Retry(msgspec.Struct):
    delay_s: float


class Forward(msgspec.Struct):
    hop: int


class Fail(msgspec.Struct):
    error: JobError


Decision = Succeed | Retry | Forward | Fail


def link_timeout_ms(link: Link, provider_timeout_ms: int) -> int:
    """`timeout>3000ms` in a link's triggers is that hop's call timeout."""
    limits = [int(m.group(1)) for t in link.on if (m := _TIMEOUT_RE.match(t))]
    return min([provider_timeout_ms, *limits])


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
    for t in link.on:
        if t == trig or (t.startswith("timeout") and trig == "timeout"):
            return True
        if len(t) == 3 and t.endswith("xx") and trig[0] == t[0] and trig.isdigit():
            return True
    return False


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
    attempt: int,
    hop: int,
    chain_len: int,
    link: Link,
    policy: RetryPolicy,
    provider: str,
    rng: random.Random | None = None,
) -> Decision:
    """attempt counts from 0 within this hop; each hop has its own retry budget."""
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
            if attempt < policy.max_retries:
                delay = backoff_s(attempt, policy, rng)
                after = getattr(outcome, "retry_after_s", None)
                return Retry(max(delay, after) if after is not None else delay)
            if has_next and matches(link, outcome):
                return Forward(hop + 1)
            return exhausted()
    raise AssertionError(f"unhandled outcome {outcome!r}")
