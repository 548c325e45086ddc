"""msgspec Structs at every boundary of panelboard."""

from panelboard.schemas.chat import ChatRequest, ChatResponse, Choice, ChoiceMessage, Message, Usage
from panelboard.schemas.errors import (
    BadKey,
    Cancelled,
    ChainExhausted,
    DeadlineExceeded,
    InvalidJob,
    JobError,
    OverBudget,
    PromptTooLarge,
    ProviderError,
    RateLimited,
    UnknownIntent,
)
from panelboard.schemas.job import (
    Attempt,
    Completed,
    CostRecord,
    DeadLetter,
    Dispatch,
    Failed,
    Hop,
    Job,
    Result,
    Route,
)

__all__ = [
    "Attempt", "BadKey", "Cancelled", "ChainExhausted", "ChatRequest", "ChatResponse", "Choice",
    "ChoiceMessage", "Completed", "CostRecord", "DeadLetter", "DeadlineExceeded", "Dispatch",
    "Failed", "Hop", "InvalidJob", "Job", "JobError", "Message", "OverBudget",
    "PromptTooLarge", "ProviderError", "RateLimited", "Result", "Route", "UnknownIntent",
    "Usage",
]
