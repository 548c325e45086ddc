"""What a call costs at the catalog price. Pure."""

from __future__ import annotations

from panelboard.schemas.config import Model


def call_cost(model: Model, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0) -> float:
    """prompt_tokens include the cached and cache-written ones (OpenAI's reckoning), which the
    catalog may price apart; reasoning tokens are completion tokens, billed as output."""
    cached = min(max(cached_tokens, 0), prompt_tokens)
    written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
    cached_price = model.input_per_m if model.cached_input_per_m is None else model.cached_input_per_m
    write_price = model.input_per_m if model.cache_write_per_m is None else model.cache_write_per_m
    return ((prompt_tokens - cached - written) * model.input_per_m + cached * cached_price + written * write_price
            + completion_tokens * model.output_per_m) / 1_000_000
