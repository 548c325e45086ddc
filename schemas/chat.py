"""The one schema: OpenAI chat-completions shape in and out, whatever the provider.

Wire structs do not forbid unknown fields, so old and new messages live side by side. A request
field this schema does not model is not dropped: the broker moves it into
`ChatRequest.passthrough`, which OpenAI-family adapters send on unchanged and other families
refuse (see workers/providers/).

A few structs keep their defaults on the wire (no omit_defaults): the official SDKs require
`type` on content parts and tool calls, `role` on answers, and every count in usage.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str  # https://... or data:<media type>;base64,<data>
    detail: str | None = None


class InputAudio(msgspec.Struct):
    data: str  # base64
    format: str


class FileData(msgspec.Struct, omit_defaults=True):
    file_id: str | None = None
    file_data: str | None = None  # data:<media type>;base64,<data>
    filename: str | None = None


class ContentPart(msgspec.Struct, omit_defaults=True):
    type: str  # text | image_url | input_audio | file | refusal
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None
    file: FileData | None = None
    refusal: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class Message(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    refusal: str | None = None  # assistant
    audio: dict[str, Any] | None = None  # assistant: {"id": ...} of an earlier audio answer

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
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | str | None = None
    n: int | None = None
    seed: int | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    tools: list[dict[str, Any]] | None = None  # {"type": "function", "function": {name, description, parameters}}
    tool_choice: str | dict[str, Any] | None = None  # none | auto | required | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}
    reasoning_effort: str | None = None
    service_tier: str | None = None
    # Request fields this schema does not model, kept as the client sent them (set by the broker).
    passthrough: dict[str, Any] = {}

    def output_cap(self) -> int | None:
        """The longest answer asked for: max_completion_tokens (OpenAI's newer name) wins."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


MODELLED = frozenset(ChatRequest.__struct_fields__)


class PromptTokensDetails(msgspec.Struct, omit_defaults=True):
    cached_tokens: int = 0  # read from the provider's prompt cache (part of prompt_tokens)
    audio_tokens: int | None = None
    # Anthropic's cache writes (part of prompt_tokens, priced at the cache-write price).
    cache_creation_tokens: int | None = None


class CompletionTokensDetails(msgspec.Struct, omit_defaults=True):
    reasoning_tokens: int = 0  # part of completion_tokens, billed as output
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else 0

    @property
    def cache_write_tokens(self) -> int:
        return (self.prompt_tokens_details.cache_creation_tokens or 0) if self.prompt_tokens_details else 0

    @property
    def reasoning_tokens(self) -> int:
        return self.completion_tokens_details.reasoning_tokens if self.completion_tokens_details else 0


class ChoiceMessage(msgspec.Struct):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class Choice(msgspec.Struct):
    index: int = 0
    message: ChoiceMessage = msgspec.field(default_factory=ChoiceMessage)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatResponse(msgspec.Struct):
    id: str
    model: str
    choices: list[Choice]
    usage: Usage = msgspec.field(default_factory=Usage)
    object: str = "chat.completion"
    created: int = 0
    system_fingerprint: str | None = None
    service_tier: str | None = None

    @property
    def text(self) -> str:
        return self.choices[0].message.content or "" if self.choices else ""

    @property
    def tool_calls(self) -> list[ToolCall]:
        return (self.choices[0].message.tool_calls or []) if self.choices else []


# -- streaming: OpenAI chat.completion.chunk objects, whatever the provider ---------------------


class FunctionDelta(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatChunk(msgspec.Struct):
    id: str
    model: str
    choices: list[ChunkChoice]
    created: int = 0
    object: str = "chat.completion.chunk"
    system_fingerprint: str | None = None
    usage: Usage | None = None  # the last chunk of a stream asked with include_usage (choices empty)


def assemble(chunks: list[ChatChunk]) -> ChatResponse:
    """The completion a stream of chunks adds up to: content and tool-call arguments joined,
    tool calls by index, the last finish reason and usage. Pure."""
    first = chunks[0]
    content: dict[int, list[str]] = {}
    calls: dict[int, dict[int, list[Any]]] = {}  # choice -> tool index -> [id, name, [arguments]]
    finish: dict[int, str | None] = {}
    usage = Usage()
    fingerprint = None
    for c in chunks:
        fingerprint = c.system_fingerprint or fingerprint
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            d = ch.delta
            if d.content:
                content.setdefault(ch.index, []).append(d.content)
            for tc in d.tool_calls or ():
                slot = calls.setdefault(ch.index, {}).setdefault(tc.index, ["", "", []])
                slot[0] = tc.id or slot[0]
                if tc.function is not None:
                    slot[1] = tc.function.name or slot[1]
                    slot[2].append(tc.function.arguments or "")
            if ch.finish_reason is not None:
                finish[ch.index] = ch.finish_reason
    indexes = sorted({*content, *calls, *finish}) or [0]
    choices = []
    for i in indexes:
        tcs = [ToolCall(id=s[0], function=FunctionCall(name=s[1], arguments="".join(s[2]))) for _, s in sorted(calls.get(i, {}).items())]
        text = "".join(content.get(i, ()))
        message = ChoiceMessage(content=text if text or not tcs else None, tool_calls=tcs or None)
        choices.append(Choice(i, message, finish.get(i) or ("tool_calls" if tcs else "stop")))
    return ChatResponse(id=first.id, model=first.model, created=first.created, choices=choices, usage=usage, system_fingerprint=fingerprint)


def as_chunk(response: ChatResponse) -> ChatChunk:
    """A whole answer as one chunk: what a stream of an already finished job yields."""
    choices = [
        ChunkChoice(c.index, Delta(role="assistant", content=c.message.content, refusal=c.message.refusal, tool_calls=[
            ToolCallDelta(i, tc.id, tc.type, FunctionDelta(tc.function.name, tc.function.arguments)) for i, tc in enumerate(c.message.tool_calls or ())
        ] or None), c.finish_reason)
        for c in response.choices
    ]
    return ChatChunk(id=response.id, model=response.model, created=response.created, choices=choices, usage=response.usage)
