"""The Anthropic Messages API over the OpenAI-shaped queue: requests in, messages and stream
events out. Works on plain dicts, so fields the chat schema gains later pass through. Pure."""

from __future__ import annotations

import json
from typing import Any

STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal", "function_call": "tool_use"}


class Untranslatable(ValueError):
    """A Messages request the chat shape cannot carry: the message says which part."""


def _text(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise Untranslatable(f"{where} must be a string or a list of text blocks")
    parts = []
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") != "text":
            raise Untranslatable(f"{where} holds a {b.get('type') if isinstance(b, dict) else type(b).__name__} block; only text blocks fit there")
        parts.append(str(b.get("text", "")))
    return "".join(parts)


def _image(b: dict[str, Any]) -> dict[str, Any]:
    src = b.get("source") or {}
    if src.get("type") == "base64":
        url = f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"
    elif src.get("type") == "url":
        url = src.get("url", "")
    else:
        raise Untranslatable(f"an image block's source type {src.get('type')!r} is not supported: use base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _messages(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise Untranslatable(f"messages[{i}].role is {role!r}: use user or assistant")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise Untranslatable(f"messages[{i}].content must be a string or a list of blocks")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": b.get("text", "")})
        elif kind == "image":
            parts.append(_image(b))
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": b.get("id"), "type": "function",
                          "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            res = b.get("content")
            out.append({"role": "tool", "tool_call_id": b.get("tool_use_id"),
                        "content": res if isinstance(res, str) else _text(res or [], f"messages[{i}].content[{j}].content")})
        else:
            raise Untranslatable(f"messages[{i}].content[{j}] is a {kind!r} block, which a {role} message cannot carry here")
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(p.get("text", "") for p in parts) or None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _tool_choice(tc: dict[str, Any]) -> Any:
    match tc.get("type"):
        case "auto":
            return "auto"
        case "any":
            return "required"
        case "none":
            return "none"
        case "tool":
            return {"type": "function", "function": {"name": tc.get("name")}}
    raise Untranslatable(f"tool_choice type {tc.get('type')!r} is not known")


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as an OpenAI chat-completions request."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise Untranslatable("messages: send a non-empty list of messages")
    if not isinstance(body.get("max_tokens"), int):
        raise Untranslatable("max_tokens: required, an integer")
    msgs: list[dict[str, Any]] = []
    if body.get("system"):
        msgs.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(body["messages"]):
        if not isinstance(m, dict):
            raise Untranslatable(f"messages[{i}] must be an object")
        msgs.extend(_messages(m, i))
    req: dict[str, Any] = {"messages": msgs, "max_tokens": body["max_tokens"]}
    for k in ("temperature", "top_p", "stream"):
        if k in body:
            req[k] = body[k]
    if body.get("stop_sequences"):
        req["stop"] = body["stop_sequences"]
    if isinstance(body.get("metadata"), dict) and body["metadata"].get("user_id"):
        req["user"] = body["metadata"]["user_id"]
    if body.get("tools"):
        req["tools"] = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                          "parameters": t.get("input_schema") or {"type": "object"}}}
                        for t in body["tools"]]
    if isinstance(body.get("tool_choice"), dict):
        req["tool_choice"] = _tool_choice(body["tool_choice"])
    if req.get("stream"):
        req["stream_options"] = {"include_usage": True}
    return req


def msg_id(completion_id: Any) -> str:
    text = str(completion_id or "")
    return text if text.startswith("msg_") else "msg_" + text


def _usage(u: dict[str, Any] | None) -> dict[str, int]:
    u = u or {}
    return {"input_tokens": int(u.get("prompt_tokens") or 0), "output_tokens": int(u.get("completion_tokens") or 0)}


def _args(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw or "{}")
    except ValueError:
        return {"_raw": raw}


def message(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat.completion (dict) as an Anthropic Message."""
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id"), "name": fn.get("name"), "input": _args(fn.get("arguments"))})
    return {"id": msg_id(completion.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": _usage(completion.get("usage"))}


class StreamTranslator:
    """OpenAI chunks in, Anthropic stream events out (message_start, content_block_*,
    message_delta, message_stop), as the Messages API sends them."""

    def __init__(self, model: str):
        self.model = model
        self.started = False
        self.block: int = -1  # index of the open content block
        self.kind: str | None = None  # "text" or "tool_use"
        self.tools: dict[int, int] = {}  # OpenAI tool-call index -> our block index
        self.stop: str | None = None
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}

    def _open(self, kind: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        ev = self._close()
        self.block += 1
        self.kind = kind
        ev.append(("content_block_start", {"type": "content_block_start", "index": self.block, "content_block": block}))
        return ev

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self.kind is None:
            return []
        self.kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.block})]

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        ev: list[tuple[str, dict[str, Any]]] = []
        if not self.started:
            self.started = True
            ev.append(("message_start", {"type": "message_start", "message": {
                "id": msg_id(chunk.get("id")), "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": None, "stop_sequence": None, "usage": dict(self.usage)}}))
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        for ch in chunk.get("choices") or []:
            delta = ch.get("delta") or {}
            if delta.get("content"):
                if self.kind != "text":
                    ev += self._open("text", {"type": "text", "text": ""})
                ev.append(("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                   "delta": {"type": "text_delta", "text": delta["content"]}}))
            for tc in delta.get("tool_calls") or []:
                fn = tc.get("function") or {}
                idx = tc.get("index", 0)
                if idx not in self.tools:
                    ev += self._open("tool_use", {"type": "tool_use", "id": tc.get("id"), "name": fn.get("name"), "input": {}})
                    self.tools[idx] = self.block
                if fn.get("arguments"):
                    ev.append(("content_block_delta", {"type": "content_block_delta", "index": self.tools[idx],
                                                       "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))
            if ch.get("finish_reason"):
                self.stop = STOP.get(ch["finish_reason"], "end_turn")
        return ev

    def end(self) -> list[tuple[str, dict[str, Any]]]:
        ev = self._close()
        ev.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": self.stop or "end_turn", "stop_sequence": None},
                                     "usage": dict(self.usage)}))
        ev.append(("message_stop", {"type": "message_stop"}))
        return ev
