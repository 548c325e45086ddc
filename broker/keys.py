"""Virtual keys: their shape, their hash, and whether one may run a job. Pure.

A key is `pb_<id>_<secret>`: `pb_<id>` (8 characters) is the visible prefix, shown in lists
and cost records and used to look the key up; `<secret>` is 32 base62 characters (190 bits).
Only sha256(key) is stored. A slow password hash (bcrypt, argon2) defends low-entropy
passwords against guessing; nobody guesses 190 random bits, fast or slow, and sha256 keeps
verification at microseconds per job. No salt is needed for the same reason: a table of
precomputed hashes cannot cover a 2^190 space.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import Literal

from panelboard.schemas.errors import BadKey
from panelboard.schemas.redact import ID_LEN, SECRET_LEN
from panelboard.schemas.job import Route

_ALPHABET = string.ascii_letters + string.digits
KEY_RE = re.compile(rf"^(pb_[A-Za-z0-9]{{{ID_LEN}}})_[A-Za-z0-9]{{{SECRET_LEN}}}$")
PREFIX_RE = re.compile(rf"^pb_[A-Za-z0-9]{{{ID_LEN}}}$")
_DUMMY_HASH = "0" * 64

OnLimit = Literal["wait", "fail"]


def generate() -> tuple[str, str]:
    """A new key and its prefix. `secrets` draws from the OS CSPRNG."""
    prefix = "pb_" + "".join(secrets.choice(_ALPHABET) for _ in range(ID_LEN))
    return f"{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(SECRET_LEN))}", prefix


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str | None) -> str | None:
    """The visible prefix of a well-formed key, else None (never part of a secret)."""
    if not key:
        return None
    m = KEY_RE.match(key)
    return m.group(1) if m else None


@dataclass(frozen=True)
class KeyRecord:
    """A stored key, as admission reads it."""

    prefix: str
    hash: str
    team: str
    models: frozenset[str] | None = None  # allow-lists; None: any
    tiers: frozenset[str] | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    on_limit: OnLimit = "fail"


_CREATE_HINT = "ask an operator for a key: panelboard keys create --team <team>"


def verify(key: str | None, rec: KeyRecord | None, route: Route, now: float | None = None) -> KeyRecord | BadKey:
    """Whether `key` may run a job on `route`. The hash comparison is constant-time, and runs
    against a dummy hash when the prefix is unknown, so timing tells nothing about either."""
    now = time.time() if now is None else now
    if not key:
        return BadKey(message="this gateway requires a virtual key and the job carries none",
                      hint=f"set the job's `key` (Client(key=...)); {_CREATE_HINT}")
    prefix = prefix_of(key)
    if prefix is None:
        return BadKey(message="the job's key is not a panelboard key (pb_xxxxx_ followed by 32 characters)",
                      hint=f"copy the whole key printed by `panelboard keys create`; {_CREATE_HINT}")
    matches = hmac.compare_digest(rec.hash if rec is not None else _DUMMY_HASH, digest(key))
    if rec is None or not matches:
        return BadKey(message=f"unknown key {prefix}…", hint=f"check the key, or {_CREATE_HINT}")
    if rec.revoked_at is not None and rec.revoked_at <= now:
        return BadKey(message=f"key {prefix}… was revoked", hint=f"use the key that replaced it (panelboard keys list --team {rec.team}), or {_CREATE_HINT}")
    if rec.expires_at is not None and rec.expires_at <= now:
        return BadKey(message=f"key {prefix}… expired", hint=f"rotate it: panelboard keys rotate {prefix}")
    if rec.tiers is not None and route.tier not in rec.tiers:
        return BadKey(message=f"key {prefix}… may not use tier {route.tier!r}",
                      hint=f"this key may use tiers: {', '.join(sorted(rec.tiers)) or 'none'}; use another intent or key")
    if rec.models is not None:
        barred = [h.model for h in route.chain if h.model not in rec.models]
        if barred:
            return BadKey(message=f"key {prefix}… may not use model(s) {', '.join(barred)} of tier {route.tier!r}",
                          hint=f"this key may use models: {', '.join(sorted(rec.models)) or 'none'}; use an intent whose whole chain is allowed")
    return rec


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_expiry(text: str, now: float | None = None) -> float:
    """`30d`, `12h`, `90m`, or an ISO date/time (UTC unless it says otherwise) -> unix seconds."""
    from datetime import datetime, timezone

    now = time.time() if now is None else now
    m = _DURATION_RE.match(text.strip())
    if m:
        return now + float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"cannot read expiry {text!r}: use a duration (30d, 12h, 90m) or an ISO date (2026-12-31)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def team_mismatch(team: str, key_team: str) -> BadKey:
    """A valid key used for another team than the one the job was published for."""
    return BadKey(message=f"the key belongs to team {key_team!r}, but the job was published for team {team!r}",
                  hint=f"submit as team {key_team!r}: Client(team={key_team!r}, key=...), or publish on pb.jobs.{key_team}.<intent>")
