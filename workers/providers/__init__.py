"""One small adapter per API family."""

from schemas.config import Provider
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.base import Adapter
from workers.providers.openai import OpenAIAdapter

FAMILIES: dict[str, type[Adapter]] = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter}


def adapter_for(provider: Provider, api_key: str | None) -> Adapter:
    return FAMILIES[provider.api](provider, api_key)
