"""Embeddings jobs: a job kind of its own through the queue, answered in OpenAI's
/v1/embeddings shape (judged by the openai SDK's CreateEmbeddingResponse), priced per input token."""

from __future__ import annotations

import msgspec
import pytest
from openai.types import CreateEmbeddingResponse

from panelboard.broker.budgets import estimate
from panelboard.clients import Client
from panelboard.clients.errors import JobFailed
from panelboard.config import load
from panelboard.schemas.embeddings import EmbeddingsRequest
from panelboard.schemas.job import Hop, Job, Route
from tests.conftest import TEST_CONFIG
from tests.integration.test_streaming import cost_of

CFG = load(TEST_CONFIG)


async def test_an_embeddings_job_runs_and_is_priced_per_input_token(stack, mock):
    team = "emb"
    async with Client(stack.nats_url, team=team) as client:
        texts = ["invoice 17, total $42", "a lighthouse keeper"]
        r = await client.embed(texts, intent="fast", dimensions=16, job_id="emb-1")
        back = CreateEmbeddingResponse.model_validate(msgspec.to_builtins(r))
        assert [d.index for d in back.data] == [0, 1] and all(len(d.embedding) == 16 for d in back.data)
        again = await client.embed(texts[1], intent="fast", dimensions=16)
        assert again.data[0].embedding == r.data[1].embedding  # deterministic per input
        [rec] = await cost_of(client, team, "emb-1")
        m = CFG.models["oa/small"]
        assert rec.outcome == "ok" and rec.completion_tokens == 0 and rec.prompt_tokens == r.usage.prompt_tokens > 0
        assert rec.cost_usd == pytest.approx(rec.prompt_tokens * m.input_per_m / 1e6)
        assert [e["model"] for e in mock.log("oa") if e["request_id"] == "emb-1:0:0"] == ["small-1"]


async def test_a_family_without_embeddings_fails_the_job_with_a_hint(client):
    with pytest.raises(JobFailed) as e:
        await client.embed("x", intent="claude")
    assert "embeddings" in str(e.value)


def test_an_embeddings_job_reserves_its_input_and_no_output():
    job = Job(id="e", embeddings=EmbeddingsRequest(input=["abcd", "ef"]))
    est = estimate(job, Route(tier="fast", chain=(Hop("oa/small", "oa"),)), CFG)
    assert est.output_tokens == 0 and est.prompt_tokens >= 6
