"""The one schema: OpenAI chat-completions shape in and out, whatever the provider.

Wire structs do not forbid unknown fields, so old and new messages live side by side.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ContentPart(msgspec.Struct, omit_defaults=True):
    type: str = "text"
    text: str | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content)


class ChatRequest(msgspec.Struct, omit_defaults=True):
    messages: list[Message]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | str | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    service_tier: str | None = None  # set by the flex lane ("flex"); a job's own value is sent as is


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChoiceMessage(msgspec.Struct, omit_defaults=True):
    role: str = "assistant"
    content: str | None = None


class Choice(msgspec.Struct):
    index: int = 0
    message: ChoiceMessage = msgspec.field(default_factory=ChoiceMessage)
    finish_reason: str | None = None


class ChatResponse(msgspec.Struct):
    id: str
    model: str
    choices: list[Choice]
    usage: Usage = msgspec.field(default_factory=Usage)
    object: str = "chat.completion"
    created: int = 0

    @property
    def text(self) -> str:
        return self.choices[0].message.content or "" if self.choices else ""
