"""The mock provider (loadgen/mock_provider.py) on the test's own event loop, and the vendor
SDK clients pointed at it. A test module takes these fixtures by importing them:

    from tests.support.mock_server import claude, mock, oai  # noqa: F401  (pytest fixtures)

(`mock` here is the in-process server; tests/conftest.py's session `mock` is the stack's.)
A module that needs the OpenAI client on another provider path defines its own `oai`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from panelboard.loadgen.mock_provider import MockConfig, MockServer, start_mock

@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    server = await start_mock(MockConfig(port=0))
    yield server
    await server.stop()


@pytest.fixture
async def oai(mock: MockServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{mock.url}/novita/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(mock: MockServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=f"{mock.url}/anthropic", api_key="x", max_retries=0) as client:
        yield client
