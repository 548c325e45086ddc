"""What an HTTP request asks of the queue: its intent, a pinned model, lane, deadline, id.

`model` names an intent (`extraction`), a tier (`frontier`: the first intent mapping to it),
`panelboard/auto` (the broker's classifier picks the intent), or a catalog model id
(`novita/llama-3.3-70b`: that model alone, when the key allows it). The x-pb-* headers
override or add to it. Pure: no I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from panelboard.ingress.errors import HttpError, bad_request, not_found
from panelboard.schemas.config import Config
from panelboard.schemas.job import ID_RE

AUTO = "panelboard/auto"
PREFIX = "panelboard/"  # `panelboard/extraction` is the same as `extraction`


@dataclass(frozen=True)
class Choice:
    intent: str | None  # None: the broker classifies the request
    pinned: str | None  # a catalog model id the job runs on alone


@dataclass(frozen=True)
class Options:
    choice: Choice
    job_id: str | None
    feature: str | None
    priority: str
    deadline_s: float | None  # seconds from now


def model_ids(cfg: Config) -> list[str]:
    """What GET /v1/models lists: auto, every intent, every tier, every catalog model."""
    seen: dict[str, None] = {AUTO: None}
    for name in [*cfg.intents, *cfg.tiers, *cfg.models]:
        seen.setdefault(name, None)
    return list(seen)


def choose(cfg: Config, model: str | None, intent_header: str | None) -> Choice | HttpError:
    if intent_header:
        if intent_header not in cfg.intents:
            return bad_request(f"x-pb-intent {intent_header[:64]!r} is not an intent of this gateway",
                               param="x-pb-intent", code="unknown_intent")
        return Choice(intent_header, model if model in cfg.models else None)
    if model is None or model in (AUTO, "auto"):
        return Choice(None, None)
    name = model[len(PREFIX):] if model.startswith(PREFIX) else model
    if name in cfg.intents:
        return Choice(name, None)
    if name in cfg.tiers:
        intent = next((i for i, t in cfg.intents.items() if t == name), None)
        if intent is None:
            return bad_request(f"model {model!r} is a tier no intent maps to",
                               param="model", code="model_not_found")
        return Choice(intent, None)
    if name in cfg.models:
        tier = next((t for t, spec in cfg.tiers.items() if any(link.model == name for link in spec.fallbacks)), None)
        intent = next((i for i, t in cfg.intents.items() if t == tier), None) if tier else None
        return Choice(intent, name)
    return not_found(f"model {model[:128]!r} is not served here: use {AUTO}, an intent ({', '.join(sorted(cfg.intents))}), "
                     f"a tier ({', '.join(sorted(cfg.tiers))}) or a catalog model id (GET /v1/models lists them)",
                     code="model_not_found")


def options(cfg: Config, model: str | None, headers: dict[str, str]) -> Options | HttpError:
    """Read the x-pb-* headers (lower-cased names) beside `model`."""
    choice = choose(cfg, model, headers.get("x-pb-intent"))
    if isinstance(choice, HttpError):
        return choice
    job_id = headers.get("x-pb-job-id") or None
    if job_id is not None and not ID_RE.match(job_id):
        return bad_request(f"x-pb-job-id {job_id[:64]!r} is not a valid id: use 1-128 characters from A-Z a-z 0-9 _ -",
                           param="x-pb-job-id")
    priority = headers.get("x-pb-priority", "interactive")
    if priority not in ("interactive", "batch"):
        return bad_request(f"x-pb-priority {priority[:32]!r}: use interactive or batch", param="x-pb-priority")
    deadline_s = None
    if (raw := headers.get("x-pb-deadline")) is not None:
        try:
            deadline_s = float(raw)
        except ValueError:
            deadline_s = -1.0
        if not 0 < deadline_s <= 86400 * 7:
            return bad_request(f"x-pb-deadline {raw[:32]!r}: give the seconds the caller will wait, e.g. 30",
                               param="x-pb-deadline")
    feature = headers.get("x-pb-feature") or None
    if feature is not None and len(feature) > 128:
        return bad_request("x-pb-feature is over 128 characters", param="x-pb-feature")
    return Options(choice, job_id, feature, priority, deadline_s)


def deadline_at(opts: Options, now: float | None = None) -> float | None:
    return None if opts.deadline_s is None else (now if now is not None else time.time()) + opts.deadline_s
