"""A redelivery that finds its job's result stored re-publishes the answer's cost record,
rebuilt from the result: it must be the record the answering worker published (its
timestamp aside), so the ledger, budgets and the dedupe id see one and the same call."""

from __future__ import annotations

import msgspec

from panelboard.schemas.chat import ChatRequest, ChatResponse, Choice, ChoiceMessage, Message, PromptTokensDetails, Usage
from panelboard.schemas.config import Model
from panelboard.schemas.embeddings import EmbeddingsResponse
from panelboard.schemas.job import Attempt, Completed, Dispatch, Embedded, Hop, Job, Route
from panelboard.workers.outcome import Ok
from panelboard.workers.pool import billed_answer, cost_record

MODEL = Model(provider="b", model="m-1", input_per_m=1.5, output_per_m=4.0, cached_input_per_m=0.3, quantization="fp8")
ROUTE = Route(tier="t", chain=(Hop("a/m", "a"), Hop("b/m", "b")))
JOB = Job(id="j1", team="team-a", key="pb-abcdefgh-secretsecret", feature="search", intent="extract", run=2,
          request=ChatRequest(messages=[Message(role="user", content="hi")]))
D = Dispatch(job=JOB, route=ROUTE, hop=1, admitted_at=100.0)
USAGE = Usage(prompt_tokens=1200, completion_tokens=80, total_tokens=1280, prompt_tokens_details=PromptTokensDetails(cached_tokens=1000))
RESPONSE = ChatResponse(id="r", model="m-1", choices=[Choice(message=ChoiceMessage(content="ok"))], usage=USAGE)


def answered(outcome: Ok, attempt: int, reported: Usage | None = None, discount: float | None = None) -> tuple[Completed, object]:
    """The record and the result the pool publishes for a call answered at hop 1 (pool._handle)."""
    cost = cost_record(D, "b", attempt, outcome, MODEL, 12.3456, 200.0, reported)
    if discount is not None:
        cost = msgspec.structs.replace(cost, cost_usd=cost.cost_usd * discount, lane="flex")
    this = Attempt(provider="b", model="b/m", hop=1, attempt=attempt, status=200, run=2, latency_ms=round(outcome.latency_ms, 2), decision="succeed")
    earlier = Attempt(provider="a", model="a/m", hop=0, attempt=0, status=429, run=2, latency_ms=3.0, decision="forward")
    result = Completed(job_id="j1", response=RESPONSE, tier="t", provider="b", model="b/m", cost_usd=cost.cost_usd, attempts=[earlier, this],
                       latency_ms=this.latency_ms, queue_ms=round(12.3456, 2), reported_usage=reported, ttft_ms=outcome.ttft_ms, lane=cost.lane)
    return result, cost


def test_the_rebuilt_record_is_the_published_one_but_for_its_timestamp():
    for outcome, reported, discount in ((Ok(response=RESPONSE, latency_ms=41.23789), None, None),
                                        (Ok(response=RESPONSE, latency_ms=7.0, ttft_ms=2.5, chunks=3), Usage(prompt_tokens=9_000_000_000), 0.5)):
        result, cost = answered(outcome, attempt=3, reported=reported, discount=discount)
        rebuilt = billed_answer(result, D, "b", MODEL, now=999.0)
        assert rebuilt == msgspec.structs.replace(cost, ts=999.0)  # type: ignore[type-var]
        assert rebuilt is not None and rebuilt.key_prefix == "pb-abcde" and rebuilt.cached_tokens == 1000 and rebuilt.attempt == 3


def test_an_embeddings_answer_rebuilds_too():
    emb = msgspec.convert({"data": [{"embedding": [0.1], "index": 0}], "model": "m-1", "usage": {"prompt_tokens": 7, "total_tokens": 7}},
                          EmbeddingsResponse)
    outcome = Ok(response=emb, latency_ms=5.0)
    cost = cost_record(D, "b", 0, outcome, MODEL, 1.0, 200.0)
    this = Attempt(provider="b", model="b/m", hop=1, attempt=0, status=200, run=2, latency_ms=5.0, decision="succeed")
    result = Embedded(job_id="j1", response=emb, tier="t", provider="b", model="b/m", cost_usd=cost.cost_usd, attempts=[this], latency_ms=5.0, queue_ms=1.0)
    assert billed_answer(result, D, "b", MODEL, now=200.0) == cost


def test_a_result_another_hop_answered_is_left_to_that_hops_worker():
    result, _ = answered(Ok(response=RESPONSE, latency_ms=4.0), attempt=0)
    stale = msgspec.structs.replace(D, hop=0)  # this hop forwarded; its redelivery finds the later hop's answer
    assert billed_answer(result, stale, "a", MODEL, now=1.0) is None
    assert billed_answer(result, D, "someone-else", MODEL, now=1.0) is None
    assert billed_answer(msgspec.structs.replace(result, attempts=[]), D, "b", MODEL, now=1.0) is None
