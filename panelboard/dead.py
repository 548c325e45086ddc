"""`panelboard dead list / replay`: inspect dead letters and resubmit them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from panelboard.broker.keys import KEY_RE
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_dead, encode
from panelboard.schemas.job import DeadLetter


async def letters(js: JetStreamContext, reason: str | None = None) -> list[tuple[int, DeadLetter]]:
    try:
        info = await js.stream_info(wire.DEAD_STREAM)
    except NotFoundError:
        return []
    out = []
    seq = info.state.first_seq
    subject = wire.dead(reason) if reason else "pb.dead.>"
    while info.state.messages and seq <= info.state.last_seq:
        try:
            raw = await js.get_msg(wire.DEAD_STREAM, seq=seq, subject=subject, direct=True, next=True)
        except NotFoundError:
            break
        seq = raw.seq or seq
        out.append((seq, decode_dead(raw.data or b"")))
        seq += 1
    return out


def table(rows: list[tuple[int, DeadLetter]]) -> str:
    if not rows:
        return "no dead letters"
    now = time.time()
    lines = [f"{'seq':>6}  {'reason':<18}{'job':<34}{'intent':<16}{'attempts':>8}  {'age':>7}  error"]
    for seq, d in rows:
        job = d.job.id if d.job else "(undecodable)"
        intent = (d.job.intent if d.job else None) or "-"
        lines.append(f"{seq:>6}  {d.reason:<18}{job:<34}{intent:<16}{len(d.attempts):>8}  {now - d.ts:>6.0f}s  {d.error.message[:80]}")
    lines.append(f"{len(rows)} dead letter(s); `panelboard dead replay --all` (or --job ID) resubmits them")
    return "\n".join(lines)


def key_for_replay(key_env: str | None, key_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The virtual key to replay under, from an environment variable or a file (never the
    command line, which `ps` shows). A letter keeps only its job's key prefix, so a governed
    job is replayed under a key supplied again; its team pays. Raises ValueError with what to
    do; the message never holds the key."""
    if key_env and key_file:
        raise ValueError("give --key-env or --key-file, not both")
    if key_env:
        key = environ.get(key_env, "").strip()
        where = f"${key_env}"
        if not key:
            raise ValueError(f"{where} is not set or empty: export the virtual key in it (panelboard keys create --team T prints one)")
    elif key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the key file {key_file}: {e.strerror}") from None
        where = key_file
    else:
        return None
    if not KEY_RE.match(key):
        raise ValueError(f"{where} does not hold a panelboard virtual key (pb_<5>_<32 letters or digits>)")
    return key


async def replay(js: JetStreamContext, rows: list[tuple[int, DeadLetter]], key: str | None = None) -> tuple[int, int]:
    """Resubmit each letter's job as a new run (so dedupe does not drop it), then delete the
    letter; under `key` when given (a letter holds only its key's prefix). Undecodable
    payloads cannot be replayed: they stay for inspection."""
    replayed = skipped = 0
    for seq, d in rows:
        if d.job is None or (d.subject_team is not None and d.subject_team != d.job.team):
            skipped += 1  # undecodable, or refused for claiming a team its publisher was not
            continue
        job = msgspec.structs.replace(d.job, run=d.job.run + 1, key=key or d.job.key)
        # A new run is a new claim (pb.claims.<team>.<job>.<run>); the letter's team was
        # authenticated when the job was first claimed.
        headers = {wire.HDR_MSG_ID: wire.submit_msg_id(job.team, job.id, f"replay{job.run}")}
        await js.publish(wire.jobs(job.team, job.intent), encode(job), headers=headers)
        await js.delete_msg(wire.DEAD_STREAM, seq)
        replayed += 1
    return replayed, skipped
