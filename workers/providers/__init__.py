"""One small adapter per API family."""

from panelboard.schemas.config import Provider
from panelboard.workers.providers.anthropic import AnthropicAdapter
from panelboard.workers.providers.base import Adapter
from panelboard.workers.providers.openai import OpenAIAdapter

FAMILIES: dict[str, type[Adapter]] = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter}


def adapter_for(provider: Provider, api_key: str | None) -> Adapter:
    return FAMILIES[provider.api](provider, api_key)
