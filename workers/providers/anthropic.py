"""Anthropic Messages, translated to and from the unified chat-completions shape.

Both ways: system prompts, content parts (text, images by URL or base64, PDF files), tools and
tool calls (tool_use / tool_result blocks, ids kept), tool_choice, parallel_tool_calls,
response_format (json_object and json_schema, as a forced "answer" tool whose input is the
JSON answer), reasoning_effort (output_config.effort), stop sequences, stop reasons and usage
(cache reads and writes). Streams: EventReader, below. What the Messages
API cannot express (n > 1, logprobs, penalties, a seed, audio, unmodelled fields...) raises
Unsupported, so the job fails with invalid_job instead of losing the field.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from panelboard.schemas.chat import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    ChoiceMessage,
    ContentPart,
    Delta,
    FunctionCall,
    FunctionDelta,
    Message,
    PromptTokensDetails,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from panelboard.schemas.config import Model
from panelboard.workers.providers.base import Adapter, Unsupported
from panelboard.workers.providers.sse import StreamError, Translator

API_VERSION = "2023-06-01"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; chat-completions does not
EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}  # -> output_config.effort
JSON_OBJECT_TOOL = "json_object"  # the answer tool's name for response_format json_object
ROUTE_ELSEWHERE = "route this job to a tier whose providers speak the OpenAI API"

_encode = msgspec.json.Encoder().encode
_decode_json = msgspec.json.decode


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Message(msgspec.Struct):
    id: str
    model: str
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


_decode = msgspec.json.Decoder(_Message).decode


def _no(what: str, hint: str = ROUTE_ELSEWHERE) -> Unsupported:
    return Unsupported("anthropic", what, hint)


def answer_tool(request: ChatRequest) -> dict[str, Any] | None:
    """response_format as the tool the model is made to call: its input is the JSON answer."""
    rf = request.response_format or {}
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"name": JSON_OBJECT_TOOL, "description": "Answer with a JSON object.", "input_schema": {"type": "object"}}
    if kind == "json_schema":
        js = rf.get("json_schema") or {}
        if not isinstance(js, dict) or not js.get("name"):
            raise _no("response_format json_schema without a name", "give json_schema a name, as the OpenAI API requires")
        schema = js.get("schema") or {"type": "object"}
        return {"name": js["name"], "description": js.get("description") or "Answer with JSON that fits this schema.", "input_schema": schema}
    raise _no(f"response_format {kind!r}", "use response_format text, json_object or json_schema")


def _media(url: str) -> dict[str, Any]:
    """An image or file source: a data: URL becomes base64, anything else a URL source."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0]
        if ";base64" not in head or not media_type:
            raise _no("a data: URL that is not base64", "send data:<media type>;base64,<data>")
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _part(p: ContentPart) -> dict[str, Any]:
    if p.type == "text":
        return {"type": "text", "text": p.text or ""}
    if p.type == "image_url" and p.image_url is not None:
        return {"type": "image", "source": _media(p.image_url.url)}
    if p.type == "file" and p.file is not None and p.file.file_data:
        return {"type": "document", "source": _media(p.file.file_data)}
    if p.type == "refusal":
        return {"type": "text", "text": p.refusal or ""}
    if p.type == "file":
        raise _no("a file part by file_id (an OpenAI file)", "send the file inline as file_data (data:application/pdf;base64,...)")
    raise _no(f"a {p.type!r} content part")


def _blocks(content: str | list[ContentPart] | None) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [b for b in map(_part, content) if b.get("type") != "text" or b["text"]]


def _arguments(tc: ToolCall) -> Any:
    try:
        return _decode_json(tc.function.arguments or "{}")
    except msgspec.DecodeError:
        raise _no(f"tool call {tc.id} whose arguments are not JSON", "send the arguments the model returned, unchanged") from None


def _turn(m: Message) -> tuple[str, list[dict[str, Any]]]:
    if m.name is not None:
        raise _no(f"a {m.role} message's name ({m.name[:40]!r})", "drop `name` from the messages, or " + ROUTE_ELSEWHERE)
    if m.audio is not None:
        raise _no("an assistant message's audio")
    if m.role == "tool":
        if not m.tool_call_id:
            raise _no("a tool message without tool_call_id", "set tool_call_id to the id of the tool call it answers")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
        if m.content:
            result["content"] = m.content if isinstance(m.content, str) else _blocks(m.content)
        return "user", [result]
    if m.role == "assistant":
        blocks = _blocks(m.content)
        if not blocks and m.refusal:
            blocks = [{"type": "text", "text": m.refusal}]
        blocks += [{"type": "tool_use", "id": tc.id, "name": tc.function.name, "input": _arguments(tc)} for tc in m.tool_calls or ()]
        return "assistant", blocks
    return "user", _blocks(m.content)


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    if t.get("type", "function") != "function" or not isinstance(f := t.get("function"), dict) or "name" not in f:
        raise _no(f"a tool of type {t.get('type')!r}", "send function tools: {\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}")
    out: dict[str, Any] = {"name": f["name"], "input_schema": f.get("parameters") or {"type": "object", "properties": {}}}
    if f.get("description"):
        out["description"] = f["description"]
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    match choice:
        case None:
            return None
        case "auto":
            return {"type": "auto"}
        case "required":
            return {"type": "any"}
        case "none":
            return {"type": "none"}
        case {"type": "function", "function": {"name": str(name)}}:
            return {"type": "tool", "name": name}
    raise _no(f"tool_choice {choice!r}", "use auto, required, none or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def _refuse_unexpressible(r: ChatRequest) -> None:
    if r.passthrough:
        raise _no(f"the fields {', '.join(sorted(r.passthrough))}")
    if r.n not in (None, 1):
        raise _no(f"n={r.n} (several choices)", "submit one job per answer you want")
    for name in ("logprobs", "top_logprobs", "logit_bias", "seed", "presence_penalty", "frequency_penalty", "metadata"):
        value = getattr(r, name)
        if value not in (None, False, 0, 0.0):
            raise _no(f"{name}={str(value)[:60]}", f"drop {name}, or " + ROUTE_ELSEWHERE)
    if r.temperature is not None and r.temperature > 1:
        raise _no(f"temperature {r.temperature} (its range is 0..1)", "use a temperature from 0 to 1")
    if r.reasoning_effort not in (None, *EFFORT):
        raise _no(f"reasoning_effort {r.reasoning_effort!r}", f"use one of {', '.join(EFFORT)}")
    if r.service_tier not in (None, "auto", "default"):
        raise _no(f"service_tier {r.service_tier!r}", "use service_tier auto or default, or leave it out")


def encode_body(request: ChatRequest, model: Model, stream: bool = False) -> dict[str, Any]:
    _refuse_unexpressible(request)
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role in ("system", "developer"):
            if isinstance(m.content, list) and any(p.type != "text" for p in m.content):
                raise _no("a non-text part in a system message", "put images and files in a user message")
            system += _blocks(m.content)
            continue
        role, blocks = _turn(m)
        # Anthropic wants alternating turns: consecutive same-role messages (parallel tool
        # results, a tool result then a user remark) become one turn.
        if messages and messages[-1]["role"] == role:
            prev = messages[-1]["content"]
            if prev and blocks and prev[-1]["type"] == blocks[0]["type"] == "text":
                prev[-1] = {"type": "text", "text": prev[-1]["text"] + "\n\n" + blocks.pop(0)["text"]}
            prev += blocks
        else:
            messages.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": model.model,
        "max_tokens": request.output_cap() or min(model.max_output_tokens, DEFAULT_MAX_TOKENS),
        "messages": messages,
    }
    if system:
        body["system"] = "\n\n".join(b["text"] for b in system)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if (v := getattr(request, ours)) is not None:
            body[theirs] = v
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.reasoning_effort is not None:
        body["output_config"] = {"effort": EFFORT[request.reasoning_effort]}
    if request.service_tier is not None:
        body["service_tier"] = "auto" if request.service_tier == "auto" else "standard_only"
    tools = [_tool(t) for t in request.tools or ()]
    choice = _tool_choice(request.tool_choice)
    if (answer := answer_tool(request)) is not None:
        # With tools of its own the model may still call them; else it must answer in JSON.
        choice = {"type": "any"} if tools and request.tool_choice != "none" else {"type": "tool", "name": answer["name"]}
        tools = [*(tools if choice["type"] == "any" else ()), answer]
    if request.parallel_tool_calls is False and tools and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tools:  # a tool_choice without tools means nothing (OpenAI refuses it)
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def encode_request(request: ChatRequest, model: Model, stream: bool = False) -> bytes:
    return _encode(encode_body(request, model, stream))


def usage_of(u: _Usage) -> Usage:
    """Anthropic's input_tokens leave out the cached ones; OpenAI's prompt_tokens hold them."""
    read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    prompt = u.input_tokens + read + write
    details = PromptTokensDetails(cached_tokens=read, cache_creation_tokens=write or None) if read or write else None
    return Usage(prompt, u.output_tokens, prompt + u.output_tokens, prompt_tokens_details=details)


def finish_reason(stop_reason: str | None, answered: bool) -> str:
    if answered:  # the model called the answer tool: that is its answer, not a tool turn
        return "stop"
    return STOP_REASONS.get(stop_reason or "", "stop")


def parse_response(body: bytes, request: ChatRequest | None = None) -> ChatResponse:
    msg = _decode(body)
    answer = answer_tool(request) if request is not None else None
    texts: list[str] = []
    calls: list[ToolCall] = []
    answered = False
    for b in msg.content:
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "tool_use" and answer is not None and b.name == answer["name"]:
            texts = [_encode(b.input).decode()]
            answered = True
        elif b.type == "tool_use":
            calls.append(ToolCall(id=b.id or "", function=FunctionCall(name=b.name or "", arguments=_encode(b.input).decode())))
    message = ChoiceMessage(content="".join(texts) if texts or not calls else None, tool_calls=calls or None)
    return ChatResponse(
        id=msg.id, model=msg.model, created=int(time.time()), usage=usage_of(msg.usage),
        choices=[Choice(0, message, finish_reason(msg.stop_reason, answered and not calls))],
    )


class AnthropicAdapter(Adapter):
    family = "anthropic"
    static_headers = {"anthropic-version": API_VERSION}

    def auth(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def endpoint(self, model: Model, kind: str) -> str:
        if kind != "chat":
            raise _no(f"{kind} jobs", "send embeddings jobs to an intent whose tier has OpenAI-family providers")
        return f"{self.base}/v1/messages"

    def encode(self, request: ChatRequest, model: Model) -> bytes:
        return encode_request(request, model)

    def parse(self, body: bytes, request: ChatRequest) -> ChatResponse:
        return parse_response(body, request)

    def stream_body(self, request: ChatRequest, model: Model) -> bytes:
        return encode_request(request, model, stream=True)

    def translator(self, request: ChatRequest) -> Translator:
        return EventReader(request)


# -- streams --------------------------------------------------------------------------------
# Anthropic's stream (message_start, content_block_start/delta/stop, message_delta,
# message_stop, error) as OpenAI chat.completion.chunk objects: text deltas as content, tool_use
# blocks as tool-call deltas (ids kept), the forced answer tool of response_format as content.


class _Event(msgspec.Struct):
    type: str
    message: dict[str, Any] | None = None
    index: int = 0
    content_block: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class EventReader(Translator):
    def __init__(self, request: ChatRequest):
        answer = answer_tool(request)
        self.answer = answer["name"] if answer else None
        self.id, self.model, self.created = "", "", int(time.time())
        self.raw_usage = _Usage()
        self.tools: dict[int, int] = {}  # block index -> tool-call index
        self.answer_blocks: set[int] = set()
        self.answered = False

    def _chunk(self, delta: Delta, finish: str | None = None) -> tuple[ChatChunk, bytes]:
        c = ChatChunk(id=self.id, model=self.model, created=self.created, choices=[ChunkChoice(0, delta, finish)])
        return c, _encode(c)

    def feed(self, event: str, data: bytes) -> list[tuple[ChatChunk, bytes]]:
        e = _decode_event(data)
        match e.type:
            case "message_start":
                m = e.message or {}
                self.id, self.model = str(m.get("id", "")), str(m.get("model", ""))
                self.raw_usage = msgspec.convert(m.get("usage") or {}, _Usage)
                self.usage = usage_of(self.raw_usage)
                return [self._chunk(Delta(role="assistant", content=""))]
            case "content_block_start":
                b = e.content_block or {}
                if b.get("type") != "tool_use":
                    return []
                if self.answer is not None and b.get("name") == self.answer:
                    self.answer_blocks.add(e.index)
                    return []
                n = self.tools[e.index] = len(self.tools)
                return [self._chunk(Delta(tool_calls=[ToolCallDelta(n, b.get("id"), "function", FunctionDelta(b.get("name"), ""))]))]
            case "content_block_delta":
                d = e.delta or {}
                if d.get("type") == "text_delta":
                    return [self._chunk(Delta(content=d.get("text", "")))]
                if d.get("type") == "input_json_delta":
                    part = d.get("partial_json", "")
                    if e.index in self.answer_blocks:
                        self.answered = True
                        return [self._chunk(Delta(content=part))] if part else []
                    return [self._chunk(Delta(tool_calls=[ToolCallDelta(self.tools.get(e.index, 0), function=FunctionDelta(arguments=part))]))]
                return []  # thinking and signature deltas are not part of the answer
            case "message_delta":
                if e.usage is not None:
                    self.raw_usage = msgspec.structs.replace(self.raw_usage, output_tokens=e.usage.output_tokens)
                    self.usage = usage_of(self.raw_usage)
                stop = (e.delta or {}).get("stop_reason")
                return [self._chunk(Delta(), finish_reason(stop, self.answered and not self.tools))] if stop else []
            case "message_stop":
                self.done = True
                assert self.usage is not None
                c = ChatChunk(id=self.id, model=self.model, created=self.created, choices=[], usage=self.usage)
                return [(c, _encode(c))]
            case "error":
                err = e.error or {}
                raise StreamError(f"{err.get('type', 'error')}: {err.get('message', '')}"[:300])
        return []  # ping


