"""Results as the OpenAI API returns them: a chat.completion, or its chunks. Pure."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from panelboard.schemas.job import Completed

FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def completion(r: Completed, now: float | None = None) -> dict[str, Any]:
    """The Result's response as a chat.completion that openai.types.chat.ChatCompletion accepts:
    every choice has a role and a finish reason, `created` is a real time."""
    body: dict[str, Any] = msgspec.to_builtins(r.response)
    body["object"] = "chat.completion"
    if not body.get("created"):
        body["created"] = int(now if now is not None else time.time())
    for i, ch in enumerate(body.get("choices") or []):
        ch.setdefault("index", i)
        msg = ch.setdefault("message", {})
        msg.setdefault("role", "assistant")
        msg.setdefault("content", None)
        if ch.get("finish_reason") not in FINISH:
            ch["finish_reason"] = "tool_calls" if msg.get("tool_calls") else "stop"
    return body


def chunks_of(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A whole completion as the chunks a streaming provider would have sent: for a job whose
    worker answered in one piece (a provider or worker that does not stream)."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    out: list[dict[str, Any]] = []
    for ch in body.get("choices") or []:
        msg = ch.get("message") or {}
        delta: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
        out.append({**base, "choices": [{"index": ch.get("index", 0), "delta": delta, "finish_reason": None}]})
        out.append({**base, "choices": [{"index": ch.get("index", 0), "delta": {}, "finish_reason": ch.get("finish_reason") or "stop"}]})
    if include_usage and body.get("usage") is not None:
        out.append({**base, "choices": [], "usage": body["usage"]})
    return out


def model_list(ids: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "panelboard"} for i in ids]}
