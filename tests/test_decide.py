"""The retry / fallback decision, from tables: no I/O."""

from __future__ import annotations

import random

import pytest

from schemas.chat import ChatResponse
from schemas.config import Link, RetryPolicy
from schemas.errors import ChainExhausted, PromptTooLarge, ProviderError
from workers.decide import Fail, Forward, Retry, Succeed, backoff_s, decide, link_timeout_ms
from workers.outcome import ClientError, Ok, RateLimited, ServerError, Timeout

ARTICLE = Link(model="novita/llama-3.3-70b", on=["429", "timeout>3000ms", "5xx"])
POLICY = RetryPolicy(max_retries=2, backoff="exponential", base_ms=500, max_delay_ms=8000, jitter=0)
OK = Ok(ChatResponse(id="x", model="m", choices=[]), 1.0)


def d(outcome, attempt=0, hop=0, chain_len=3, link=ARTICLE):
    return decide(outcome, attempt=attempt, hop=hop, chain_len=chain_len, link=link, policy=POLICY, provider="novita")


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
