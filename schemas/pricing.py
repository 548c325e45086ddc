"""What a call costs at the catalog price. Pure."""

from __future__ import annotations

from panelboard.schemas.config import Model


def call_cost(model: Model, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * model.input_per_m + completion_tokens * model.output_per_m) / 1_000_000
