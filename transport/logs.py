"""structlog set-up: JSON in production, pretty on a terminal, secrets redacted everywhere."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, MutableMapping

import structlog

# Virtual keys (pb-...), OpenAI/Anthropic-style keys, bearer tokens, and any field named like a secret.
_SECRET_RE = re.compile(r"(pb_[A-Za-z0-9]{4})[A-Za-z0-9_-]{8,}|sk-(?:ant-)?[A-Za-z0-9_-]{8,}|(Bearer\s+)[A-Za-z0-9._-]{8,}")
_SECRET_FIELDS = {"api_key", "key", "authorization", "x-api-key", "token", "password", "secret"}


# Secrets known by value (provider keys read from the environment), whatever their format.
_KNOWN: set[str] = set()


def register_secret(value: str) -> None:
    """Redact this exact string from every log line from now on."""
    if len(value) >= 8:
        _KNOWN.add(value)


def redact_text(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(1) + "…[redacted]"
        if m.group(2):
            return m.group(2) + "[redacted]"
        return "sk-…[redacted]"

    for secret in _KNOWN:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return _SECRET_RE.sub(sub, text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: "[redacted]" if str(k).lower() in _SECRET_FIELDS and v else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v) for v in value)
    return value


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: the last thing before rendering, so nothing bypasses it."""
    return _redact(event)


class _StderrLogger:
    """Writes to whatever sys.stderr is at the time of the call, not at configure time: a
    caller that swaps stderr (a test capturing output, a daemon redirecting it) and closes the
    old one must not break every later log line."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure(level: str | None = None, json: bool | None = None) -> None:
    level = (level or os.environ.get("PANELBOARD_LOG_LEVEL", "info")).upper()
    if json is None:
        json = not sys.stderr.isatty()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level, logging.INFO)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
