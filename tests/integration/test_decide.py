"""The retry / fallback decision, from tables: no I/O."""

from __future__ import annotations

import random

import pytest

from panelboard.schemas.chat import ChatResponse, Usage
from panelboard.schemas.config import Link, Model, RetryPolicy
from panelboard.schemas.errors import ChainExhausted, DeadlineExceeded, PromptTooLarge, ProviderError
from panelboard.schemas.job import Attempt
from panelboard.workers.decide import (
    Fail, Forward, Numbering, Retry, Succeed, backoff_s, call_timeout_s, decide, number_attempt,
)
from panelboard.workers.outcome import ClientError, Ok, RateLimited, ServerError, Timeout
from panelboard.schemas.triggers import link_timeout_ms
from panelboard.workers.usage import checked_usage

ARTICLE = Link(model="novita/llama-3.3-70b", on=["429", "timeout>3000ms", "5xx"])
POLICY = RetryPolicy(max_retries=2, backoff="exponential", base_ms=500, max_delay_ms=8000, jitter=0)
OK = Ok(ChatResponse(id="x", model="m", choices=[]), 1.0)


def d(outcome, attempt=0, hop=0, chain_len=3, link=ARTICLE):
    return decide(outcome, spent=attempt, hop=hop, chain_len=chain_len, link=link, policy=POLICY, provider="novita")


@pytest.mark.parametrize(
    "outcome, attempt, hop, expected",
    [
        (OK, 0, 0, Succeed()),
        (RateLimited(1, "slow down"), 0, 0, Retry(0.5)),
        (ServerError(503, 1, "unavailable"), 1, 0, Retry(1.0)),
        (Timeout(3000), 2, 0, Forward(1)),  # retries spent: next hop
        (ServerError(500, 1, "boom"), 2, 1, Forward(2)),
        (RateLimited(1, "quota", hard=True), 0, 0, Forward(1)),  # insufficient_quota: move on at once
        (ClientError(413, 1, "too big", kind="context_length"), 0, 0, Forward(1)),
    ],
)
def test_decision_table(outcome, attempt, hop, expected):
    assert d(outcome, attempt, hop) == expected


def test_retry_after_wins_over_a_shorter_backoff():
    assert d(RateLimited(1, "wait", retry_after_s=7.0)) == Retry(7.0)
    assert d(ServerError(529, 1, "overloaded", retry_after_s=0.1), attempt=1) == Retry(1.0)


def test_bad_requests_are_never_retried_or_forwarded():
    for status in (400, 413, 422):
        out = d(ClientError(status, 1, "bad"))
        assert isinstance(out, Fail) and isinstance(out.error, ProviderError) and out.error.status == status
        assert "retrying will not help" in out.error.hint


def test_chain_end_fails_with_chain_exhausted_and_prompt_too_large():
    last = d(ServerError(500, 1, "boom"), attempt=2, hop=2)
    assert isinstance(last, Fail) and isinstance(last.error, ChainExhausted)
    ctx = d(ClientError(400, 1, "prompt is too long", kind="context_length"), hop=2)
    assert isinstance(ctx, Fail) and isinstance(ctx.error, PromptTooLarge)


def test_an_error_the_link_does_not_fall_back_on_fails_after_its_retries():
    only_429 = Link(model="m", on=["429"])
    out = d(ServerError(500, 1, "boom"), attempt=2, link=only_429)
    assert isinstance(out, Fail) and "'500'" in out.error.hint


def test_backoff_is_exponential_capped_and_jittered():
    assert [backoff_s(a, POLICY) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    jittered = RetryPolicy(base_ms=1000, jitter=0.2)
    samples = [backoff_s(0, jittered, random.Random(i)) for i in range(200)]
    assert min(samples) >= 0.8 and max(samples) <= 1.2 and len(set(samples)) > 100


def test_timeout_trigger_sets_the_hop_timeout():
    assert link_timeout_ms(ARTICLE, 30_000) == 3000
    assert link_timeout_ms(Link(model="m"), 30_000) == 30_000


def rec(n: int, decision: str = "retry") -> Attempt:
    return Attempt(provider="novita", model="m", hop=0, attempt=n, status=0 if decision == "lost" else 500, latency_ms=1.0, decision=decision)


@pytest.mark.parametrize(
    "recorded, delivered, expected",
    [
        ([], 1, Numbering(0)),  # first delivery
        ([rec(0)], 2, Numbering(1, spent=1)),  # a nak'd retry comes back
        ([rec(0), rec(1)], 3, Numbering(2, spent=2)),
        # a restarted server redelivers as if never delivered: numbered past what is recorded,
        # so attempt 0's request id (and its cost record key) is never reused
        ([rec(0)], 1, Numbering(1, spent=1)),
        ([rec(0), rec(1, "lost"), rec(2)], 1, Numbering(3, spent=2)),
        # a worker killed mid-call: the delivery count says a call happened that left no record
        ([], 2, Numbering(1, lost=(0,), spent=0)),
        ([rec(0)], 4, Numbering(3, lost=(1, 2), spent=1)),
        # lost calls spend no retries (our crash, not the provider's failure) ...
        ([rec(0, "lost"), rec(1, "lost"), rec(2)], 4, Numbering(3, spent=1)),
        # ... until a job has cut off more than LOST_ALLOWANCE (3) calls: it may be what kills its workers
        ([rec(0, "lost"), rec(1, "lost"), rec(2, "lost")], 5, Numbering(4, lost=(3,), spent=1)),
        # a flex refusal moved the hop to the standard tier: a redelivery of that standard call
        # numbers past the flex call but has spent no retry on it
        ([rec(0, "standard")], 2, Numbering(1, spent=0)),
        ([rec(0, "standard"), rec(1)], 3, Numbering(2, spent=1)),
    ],
)
def test_attempt_numbering_table(recorded, delivered, expected):
    assert number_attempt(recorded, delivered) == expected


def test_lost_attempts_do_not_spend_the_retry_budget():
    # Given a hop (max_retries 2) whose first two calls were cut off by worker kills and whose third got a 500
    n = number_attempt([rec(0, "lost"), rec(1, "lost")], delivered=3)
    assert n == Numbering(2, spent=0)
    # Then that 500 is the hop's first failure: it is retried, not the end of the chain
    assert isinstance(decide(ServerError(500, 1, "boom"), spent=n.spent, hop=2, chain_len=3, link=ARTICLE, policy=POLICY, provider="x"), Retry)
    # while three real 500s at the chain's end do end it
    n = number_attempt([rec(0), rec(1)], delivered=3)
    out = decide(ServerError(500, 1, "boom"), spent=n.spent, hop=2, chain_len=3, link=ARTICLE, policy=POLICY, provider="x")
    assert isinstance(out, Fail) and isinstance(out.error, ChainExhausted)


@pytest.mark.parametrize(
    "link_ms, deadline, now, expected",
    [
        (3000, None, 100.0, 3.0),  # no deadline: the hop's timeout
        (3000, 100.5, 100.0, 0.5),  # the deadline is nearer: the call is cut to it
        (3000, 110.0, 100.0, 3.0),
        (3000, 100.0, 100.0, None),  # at or past the deadline: do not call
        (3000, 99.0, 100.0, None),
    ],
)
def test_call_timeout_table(link_ms, deadline, now, expected):
    assert call_timeout_s(link_ms, deadline, now) == expected


def test_a_call_cut_off_by_the_deadline_fails_with_deadline_exceeded_not_a_retry():
    for outcome in (Timeout(500), ServerError(503, 1, "late 503"), RateLimited(1, "slow down")):
        out = decide(outcome, spent=0, hop=0, chain_len=3, link=ARTICLE, policy=POLICY, provider="novita", past_deadline=True)
        assert isinstance(out, Fail) and isinstance(out.error, DeadlineExceeded), outcome
    assert d(OK) == Succeed()  # an answer that made it in time is kept


@pytest.mark.parametrize(
    "reported, billed",
    [
        ((1_000, 200), None),  # plausible: billed as reported, nothing flagged
        ((128_000, 128_000), None),  # the window itself is plausible
        ((1_000, 3_000_000_000), (1_000, 128_000)),  # over the context window: clamped, flagged
        ((-5, 20), (0, 20)),  # negative counts are not money the provider is owed
    ],
)
def test_provider_usage_is_clamped_to_what_the_model_could_produce(reported, billed):
    usage = Usage(*reported, total_tokens=sum(reported))
    out, flagged = checked_usage(usage, Model(provider="p", model="m", input_per_m=1, output_per_m=1, context_window=128_000))
    if billed is None:
        assert out is usage and flagged is None
    else:
        assert (out.prompt_tokens, out.completion_tokens, out.total_tokens) == (*billed, sum(billed)) and flagged is usage
