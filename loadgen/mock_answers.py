"""What the mock provider answers, wire-neutral and deterministic (pure functions).

    read_openai(req) / read_anthropic(req) -> Prompt    what a request asks, on either wire
    answer(prompt, reply) -> Answer                     text, a tool call, or JSON

- Tools offered and not declined, and the last turn is no tool result: the forced tool (else
  the first) is called with arguments built from its parameter schema and the last user text.
- The last turn is a tool result: a text (or JSON) answer quoting it, so a two-turn agent loop
  ends and a test can see the result reached the provider.
- response_format json_schema: an instance of the schema (every property, the first enum
  value, strings from the prompt); json_object: {"answer": text}.
Images are counted (85 prompt tokens each) and their URLs kept (base64 as data: URLs) for the
request log, so a test can check an image reached the provider unchanged.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import msgspec

_encode = msgspec.json.encode
IMAGE_TOKENS = 85  # OpenAI's low-detail price of an image


class Prompt(NamedTuple):
    text: str  # all the text the model reads (for token counts)
    last_user: str
    tool_result: str | None  # the content of the tool result(s) ending the conversation
    images: list[str]
    tools: list[tuple[str, dict[str, Any]]]  # (name, parameter schema)
    forced: str | None  # a tool the request forces; "" for "any tool"; None: auto
    declined: bool  # tool_choice none
    json_schema: dict[str, Any] | None
    json_object: bool
    bad: str | None  # what a real provider would refuse (a tool result answering no call...)


class Answer(NamedTuple):
    text: str | None
    tool: tuple[str, str, dict[str, Any]] | None  # (call id, name, arguments)


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(_text(p.content) if p.type == "tool_result" else p.text for p in content)


def _images(content: Any) -> list[str]:
    if content is None or isinstance(content, str):
        return []
    out = []
    for p in content:
        if p.type == "image_url" and p.image_url:
            out.append(str(p.image_url.get("url", "")))
        elif p.type == "image" and p.source:
            src = p.source
            out.append(src.get("url", "") if src.get("type") == "url" else f"data:{src.get('media_type')};base64,{src.get('data')}")
        elif p.type == "tool_result":
            out += _images(p.content)
    return out


def read_openai(req: Any) -> Prompt:
    text, images, last_user, bad = [], [], "", None
    called: set[str] = set()
    for m in req.messages:
        t = _text(m.content)
        text.append(t)
        images += _images(m.content)
        if m.role == "user":
            last_user = t
        for tc in m.tool_calls or ():
            called.add(tc.id)
            text.append(str(tc.function.get("arguments", "")))
        if m.role == "tool" and m.tool_call_id not in called:
            bad = f"tool message answers {m.tool_call_id!r}, which no earlier assistant message called"
    last = req.messages[-1] if req.messages else None
    tool_result = _text(last.content) if last is not None and last.role == "tool" else None
    tools = [(t["function"]["name"], t["function"].get("parameters") or {}) for t in req.tools or () if isinstance(t.get("function"), dict)]
    choice = req.tool_choice
    forced = choice["function"]["name"] if isinstance(choice, dict) else ("" if choice == "required" else None)
    rf = req.response_format or {}
    schema = (rf.get("json_schema") or {}).get("schema", {"type": "object"}) if rf.get("type") == "json_schema" else None
    return Prompt("".join(text), last_user, tool_result, images, tools, forced, choice == "none", schema, rf.get("type") == "json_object", bad)


def read_anthropic(req: Any) -> Prompt:
    text = [_text(req.system)]
    images: list[str] = []
    last_user, bad = "", None
    called: set[str] = set()
    for m in req.messages:
        text.append(_text(m.content))
        images += _images(m.content)
        blocks = [] if isinstance(m.content, str) else m.content
        for b in blocks:
            if b.type == "tool_use":
                called.add(b.id or "")
                text.append(_encode(b.input).decode())
            elif b.type == "tool_result" and b.tool_use_id not in called:
                bad = f"tool_result block answers {b.tool_use_id!r}, which no earlier tool_use block called"
        if m.role == "user":
            last_user = "".join(b.text for b in blocks if b.type == "text") if blocks else _text(m.content)
    last = req.messages[-1] if req.messages else None
    results = [b for b in (last.content if last is not None and not isinstance(last.content, str) else []) if b.type == "tool_result"]
    tool_result = "".join(_text(b.content) for b in results) if results else None
    tools = [(t["name"], t.get("input_schema") or {}) for t in req.tools or () if "name" in t]
    choice = req.tool_choice or {}
    kind = choice.get("type")
    forced = choice.get("name") if kind == "tool" else ("" if kind == "any" else None)
    return Prompt("".join(text), last_user, tool_result, images, tools, forced, kind == "none", None, False, bad)


def instance(schema: Any, seed: str, depth: int = 0) -> Any:
    """A value that fits a JSON schema (the subset tools and structured outputs use)."""
    if not isinstance(schema, dict) or depth > 8:
        return seed
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance(schema[key][0], seed, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    match kind:
        case "object":
            return {k: instance(v, seed, depth + 1) for k, v in (schema.get("properties") or {}).items()}
        case "array":
            return [instance(schema.get("items", {}), seed, depth + 1) for _ in range(max(1, schema.get("minItems", 1)))]
        case "integer":
            return len(seed)
        case "number":
            return len(seed) / 2
        case "boolean":
            return True
        case "null":
            return None
    return seed[: schema.get("maxLength", 60)] or "mock"


def answer(p: Prompt, reply: str, salt: str) -> Answer:
    """reply: the plain text answer the mock would give; salt: makes tool call ids unique."""
    seed = p.last_user.strip()[:60] or "mock"
    if p.tools and not p.declined and p.tool_result is None:
        name, schema = next(((n, s) for n, s in p.tools if n == p.forced), p.tools[0])
        call_id = f"{zlib.crc32(f'{salt}:{name}'.encode()):08x}"
        return Answer(None, (call_id, name, instance(schema, seed)))
    if p.tool_result is not None:
        reply = f"mock answer from the tool result: {p.tool_result[:200]}"
    if p.json_schema is not None:
        return Answer(_encode(instance(p.json_schema, seed)).decode(), None)
    if p.json_object:
        return Answer(_encode({"answer": reply}).decode(), None)
    return Answer(reply, None)
