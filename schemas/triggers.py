"""The grammar of a fallback link's `on:` triggers, in one place: the config check, the
worker's fallback decision and `route explain` all read triggers through it. Pure.

    429, 503   a call answered with that status
    5xx        any status of that hundred (1xx .. 5xx)
    timeout    no answer in time; `timeout>3000ms` also makes 3000 ms the hop's call timeout
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from panelboard.schemas.config import Link

_GRAMMAR = re.compile(r"^(?:(?P<status>\d{3})|(?P<hundred>[1-5])xx|timeout(?:>(?P<ms>\d+)ms)?)$")
FORMS = "429, 5xx, 503, timeout, timeout>3000ms"  # for error messages


class Trigger(NamedTuple):
    status: int | None = None  # an exact status
    hundred: int | None = None  # 5 for 5xx
    timeout: bool = False
    timeout_ms: int | None = None  # timeout>Nms


def parse(text: str) -> Trigger | None:
    """The trigger, or None when `text` is not one."""
    m = _GRAMMAR.match(text)
    if m is None:
        return None
    if m["status"]:
        return Trigger(status=int(m["status"]))
    if m["hundred"]:
        return Trigger(hundred=int(m["hundred"]))
    return Trigger(timeout=True, timeout_ms=int(m["ms"]) if m["ms"] else None)


def parsed(on: Iterable[str]) -> list[Trigger]:
    return [t for t in map(parse, on) if t is not None]


def fires(on: Iterable[str], status: int | None) -> bool:
    """Whether a call that ended with `status` (None: it timed out) moves on by these triggers."""
    for t in parsed(on):
        if status is None:
            if t.timeout:
                return True
        elif t.status == status or t.hundred == status // 100:
            return True
    return False


def link_timeout_ms(link: Link, provider_timeout_ms: int) -> int:
    """`timeout>3000ms` in a link's triggers is that hop's call timeout."""
    return min([provider_timeout_ms, *(t.timeout_ms for t in parsed(link.on) if t.timeout_ms is not None)])
