"""Key-shaped secrets cut out of bytes before they are stored or logged.

Pure and dependency-free so the transport layer can scrub every publish without importing the
broker. The key format (pb_<id>_<secret>) is fixed here; broker.keys generates and verifies it.
"""
from __future__ import annotations

import re

ID_LEN = 5
SECRET_LEN = 32
PREFIX_LEN = 3 + ID_LEN  # "pb_" + id: what workers record as the cost record's key_prefix


# -- keys in stored text ------------------------------------------------------------------------
# Whatever a client writes (metadata, a prompt, a field a decode error quotes back) may hold a
# key. Keys are ASCII letters, digits and "_", which msgspec's encoder never escapes, so a scan
# of our own encoded output sees exactly what a decoder of it will see.
_KEY_ANYWHERE = re.compile(rb"(pb_[A-Za-z0-9]{%d})_[A-Za-z0-9]{%d}" % (ID_LEN, SECRET_LEN))
REDACTED = b"_[redacted]"


def scrub(data: bytes) -> bytes:
    """Encoded JSON with every key-shaped value cut to its visible prefix. One search on the
    literal "pb_" (about what encoding the message cost) when there is none to cut."""
    if _KEY_ANYWHERE.search(data) is None:
        return data
    return _KEY_ANYWHERE.sub(rb"\1" + REDACTED, data)


# Raw payloads come from a client, not our encoder: a key may be spelled with JSON escapes
# (pb\u005f...), so each character may also be its \u00XX escape (over-matching is harmless).
def _lit(ch: str) -> bytes:
    return b"(?:%s|\\\\u00(?i:%02x))" % (re.escape(ch.encode()), ord(ch))


_ALNUM = rb"(?:[A-Za-z0-9]|\\u00[0-9A-Fa-f]{2})"
_RAW_SECRET = re.compile(b"(" + _lit("p") + _lit("b") + _lit("_") + _ALNUM + b"{%d})" % ID_LEN + _lit("_") + _ALNUM + b"{%d}" % SECRET_LEN
                         + rb"|sk-(?:ant-)?[A-Za-z0-9_-]{8,}")
_RAW_KEY_MAX = 6 * (PREFIX_LEN + 1 + SECRET_LEN)  # every character escaped
RAW_KEEP = 65_536  # bytes of an undecodable or oversized payload kept in its dead letter


def scrub_raw(data: bytes, keep: int = RAW_KEEP) -> bytes:
    """A raw payload fit for a dead letter: keys (ours and provider-style sk-...) cut to their
    prefix, and at most `keep` bytes. The cut never splits a key: one that straddles it is
    dropped whole, so no prefix plus part of a secret survives."""
    cut = len(data)
    if cut > keep:
        cut = keep
        for m in _RAW_SECRET.finditer(data, max(0, keep - _RAW_KEY_MAX), keep + _RAW_KEY_MAX):
            if m.start() < keep < m.end():
                cut = m.start()
                break
    return _RAW_SECRET.sub(lambda m: (m.group(1) or b"sk-") + REDACTED, data[:cut])
