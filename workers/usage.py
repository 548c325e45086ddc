"""Provider usage is checked before it is billed. A count no call of the model could produce
(negative, or more tokens than its context window holds) is clamped to what it could be, and
the provider's own figures travel beside it, flagged, in the cost record and the result."""

from __future__ import annotations

import msgspec

from panelboard.schemas.chat import Usage
from panelboard.schemas.config import Model


def checked_usage(usage: Usage, model: Model) -> tuple[Usage, Usage | None]:
    """(usage to bill, the provider's usage when it was implausible, else None). Pure."""
    bound = model.context_window
    pt, ct = (min(max(n, 0), bound) for n in (usage.prompt_tokens, usage.completion_tokens))
    if (pt, ct) == (usage.prompt_tokens, usage.completion_tokens):
        return usage, None
    return msgspec.structs.replace(usage, prompt_tokens=pt, completion_tokens=ct, total_tokens=pt + ct), usage
