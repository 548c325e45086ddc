"""Batch files: submit a JSONL file of requests, follow it, read its results, cancel it.

Everything a batch needs later lives in NATS (schemas/batch.py has the layout): any process,
on any machine, can report on a batch or cancel it; no local file is needed after `submit`.

- **Ids.** A line's job id is a hash of (batch id, custom_id); the batch id is `--batch-id`,
  or a hash of the file's bytes and the submit options. So the same file submitted again is
  the same batch, and each of its lines the same job: the broker's claim on (team, job id)
  drops what was already sent.
- **Resume.** The submitter checkpoints (every second and every CHECKPOINT_LINES lines) the
  line up to which everything is in the stream. A resubmit of the same file skips those lines,
  and for the lines that may have been sent after the last checkpoint first checks for a
  result, so a job already done is not run again even after the dedupe window has passed.
- **Memory.** The file is read line by line and at most `window` publishes are in flight;
  results are streamed from PB_RESULTS into the output files. Flat at any size.
- **Results** go where every job's go (pb.results.<team>.<job>); each carries the job's
  metadata (`batch_id`, `custom_id`) back, and is indexed under the batch
  (pb.batch.<batch>.done.<team>.<job>), which is what status counts and results reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from panelboard.clients import control
from panelboard.schemas.control import CancelReply, CancelRequest
from panelboard.transport import bus, jspub
from panelboard.transport.streams import ensure_stream, stream_configs
from panelboard.schemas import batch as B
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_result, encode
from panelboard.schemas.config import Config
from panelboard.schemas.embeddings import EmbeddingsRequest
from panelboard.schemas.job import ID_RE, Completed, Embedded, Job

CHECKPOINT_LINES = 4096  # at most; a small window checkpoints every 8 windows
CHECKPOINT_S = 1.0
HEARTBEAT_STALE_S = 10.0  # a submitter silent this long has stopped (killed, or lost)

Progress = Callable[[int], None]  # called with how many more lines / results are done


class BatchError(Exception):
    """Something the user must fix: the message says what."""


@dataclass
class SubmitReport:
    batch_id: str
    client: str
    lines: int = 0
    requests: int = 0  # well-formed lines
    malformed: int = 0
    sent: int = 0  # jobs published by this run (the stream drops those it already had)
    duplicates: int = 0  # of those, ones the stream already had (a publish retried after a timeout)
    skipped: int = 0  # lines before the last checkpoint of an earlier run: not sent again
    already_done: int = 0  # lines after it whose result already existed: not sent again
    resumed: bool = False
    stopped: bool = False  # cancelled while sending
    errors_path: str | None = None
    elapsed_s: float = 0.0


# -- helpers ------------------------------------------------------------------------------


def fingerprint(path: Path) -> tuple[str, int]:
    """sha256 of the file and its number of lines, read in 1 MiB blocks."""
    h = hashlib.sha256()
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return h.hexdigest(), lines + (last != b"\n")


def default_batch_id(fp: str, intent: str | None, team: str, feature: str | None, key: str | None) -> str:
    opts = "\x00".join([fp, intent or "", team, feature or "", key or ""])
    return "b" + hashlib.sha256(opts.encode()).hexdigest()[:20]


def check_batch_id(batch_id: str) -> None:
    if not ID_RE.match(batch_id) or len(batch_id) > B.MAX_BATCH_ID:
        raise BatchError(f"batch id {batch_id[:64]!r} is not valid: use 1-{B.MAX_BATCH_ID} characters from A-Z a-z 0-9 _ -")


async def ensure_manifest(js: JetStreamContext, cfg: Config) -> None:
    """Create PB_BATCHES when the running stack predates it; never rewrite a live one's settings."""
    try:
        await js.stream_info(B.BATCHES_STREAM)
    except NotFoundError:
        await ensure_stream(js, next(sc for sc in stream_configs(cfg) if sc.name == B.BATCHES_STREAM))


async def _last(js: JetStreamContext, subject: str, typ: type) -> Any:
    try:
        raw = await js.get_last_msg(B.BATCHES_STREAM, subject, direct=True)
    except NotFoundError:
        return None
    return msgspec.json.decode(raw.data or b"", type=typ)


async def read_info(js: JetStreamContext, batch_id: str) -> B.BatchInfo | None:
    return await _last(js, B.info_subject(batch_id), B.BatchInfo)


async def read_cancel(js: JetStreamContext, batch_id: str) -> B.BatchCancel | None:
    return await _last(js, B.cancel_subject(batch_id), B.BatchCancel)


async def _count(js: JetStreamContext, stream: str, subject: str, per_subject: bool = True) -> int:
    """How many messages (distinct subjects, with per_subject) match: the server counts them
    for a consumer that is created, asked, and deleted without delivering anything."""
    cc = ConsumerConfig(filter_subject=subject, ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
                        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT if per_subject else DeliverPolicy.ALL)
    ci = await js.add_consumer(stream, cc)
    try:
        return ci.num_pending or 0
    finally:
        try:
            await js.delete_consumer(stream, ci.name)
        except Exception:
            pass


async def count_jobs(js: JetStreamContext, batch_id: str) -> int:
    return await _count(js, B.BATCHES_STREAM, B.jobs_filter(batch_id))


async def team_of(js: JetStreamContext, batch_id: str) -> str:
    info = await read_info(js, batch_id)
    return info.team if info is not None else "default"


async def count_results(js: JetStreamContext, batch_id: str, team: str | None = None) -> int:
    return await _count(js, B.BATCHES_STREAM, B.done_filter(batch_id, team or await team_of(js, batch_id)))


HEADER_ROOM = 1024  # the server counts headers against max_payload too


def job_size_limit(cfg: Config, max_payload: int) -> int:
    """The largest job the stack takes: what the server lets us publish, and what the broker
    reads at all (larger ones get a PromptTooLarge result before they are decoded, so
    without their metadata, and so without the line's custom_id)."""
    return min(cfg.governance.max_job_bytes, max_payload - HEADER_ROOM)


def too_large(size: int, limit: int) -> str:
    return (f"the request is {size} bytes as a job, over the limit of {limit} bytes (the smaller of governance.max_job_bytes "
            "and the NATS server's max_payload); it was not sent: shorten the prompt or split it across lines")


def _malformed_record(line_no: int, raw: bytes, error: str, custom_id: str | None = None) -> bytes:
    if custom_id is None:
        try:
            obj = msgspec.json.decode(raw)
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                custom_id = obj["custom_id"]
        except msgspec.DecodeError:
            pass
    return encode({"line": line_no, "custom_id": custom_id, "error": error}) + b"\n"


# -- submit -------------------------------------------------------------------------------


class _Submitter:
    def __init__(self, js: JetStreamContext, path: Path, report: SubmitReport, window: int, progress: Progress | None):
        self.js = js
        self.path = path
        self.report = report
        self.window = window
        self.progress = progress
        self.sem = asyncio.Semaphore(window)
        self.order: deque[int] = deque()  # line numbers in order, until everything before them is done
        self.done: set[int] = set()
        self.through = 0
        self.started = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None

    def finish(self, line_no: int, n: int = 1) -> None:
        self.done.add(line_no)
        while self.order and self.order[0] in self.done:
            self.through = self.order.popleft()
            self.done.discard(self.through)
        if self.progress is not None:
            self.progress(n)

    async def send(self, line_no: int, job: Job, custom_id: str, check: bool) -> None:
        rep = self.report
        try:
            exists = False
            if check:  # may have been sent before a crash: a job already done is not run again
                exists = await bus.result_exists(self.js, job.team, job.id, 0)
            if exists:
                rep.already_done += 1
            else:
                # A nonce per send: only this send's own retries dedupe in the stream (a fixed
                # id could be squatted by another team); a resend is dropped by the claim.
                headers = {wire.HDR_MSG_ID: wire.submit_msg_id(job.team, job.id, uuid.uuid4().hex[:16])}
                ack = await _publish(self.js, wire.jobs(job.team, job.intent), encode(job), headers)
                rep.sent += 1
                rep.duplicates += bool(ack.duplicate)
            # The manifest entry follows the job: every entry names a job that is in the stream.
            entry = encode(B.JobEntry(custom_id=custom_id, line=line_no))
            await _publish(self.js, B.job_subject(rep.batch_id, job.id), entry, {wire.HDR_MSG_ID: f"{job.id}:m"})
        except BaseException as e:  # stop the run; the checkpoint keeps what is known to be sent
            if self.failure is None:
                self.failure = e
            raise
        else:
            self.finish(line_no)
        finally:
            self.sem.release()


async def _publish(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]) -> jspub.PubAck:
    """Publish and wait for the stream's ack, riding out a server restart (a minute)."""
    return await bus.publish_retrying(js, subject, data, headers, patience_s=60.0, timeout_s=5.0)


async def submit(
    js: JetStreamContext,
    path: str | os.PathLike[str],
    *,
    cfg: Config,
    batch_id: str | None = None,
    intent: str | None = None,
    key: str | None = None,
    team: str = "default",
    feature: str | None = None,
    window: int = 512,
    errors_path: str | os.PathLike[str] | None = None,
    completion_window_s: float | None = None,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> SubmitReport:
    """Send every well-formed line of a batch file as a job; write malformed lines, with their
    line numbers, to the errors file. Safe to run again on the same file after a crash."""
    t0 = time.monotonic()
    src = Path(path)
    fp, nlines = fingerprint(src)
    batch_id = batch_id or default_batch_id(fp, intent, team, feature, key)
    check_batch_id(batch_id)
    client = B.client_id(batch_id)
    if on_total is not None:
        on_total(nlines)
    await ensure_manifest(js, cfg)
    if await read_cancel(js, batch_id) is not None:
        raise BatchError(f"batch {batch_id} was cancelled; submit it under a new --batch-id to run it again")

    now = time.time()
    prev = await read_info(js, batch_id)
    skip_through, check_until = 0, 0
    if prev is not None:
        if (prev.intent, prev.team, prev.feature) != (intent, team, feature):
            raise BatchError(f"batch {batch_id} was submitted with intent={prev.intent} team={prev.team} feature={prev.feature}; "
                             "resubmit it with the same options, or give a new --batch-id")
        if prev.fingerprint == fp:  # the same file: resume after the last checkpoint
            skip_through, check_until = prev.through_line, prev.started_line + prev.checkpoint_lines
        else:  # a different file under the same id: check every line against the results
            check_until = 1 << 62
    created_at = prev.created_at if prev else now
    deadline = prev.deadline if prev else (now + completion_window_s if completion_window_s else None)
    info = B.BatchInfo(id=batch_id, client=client, input=src.name, fingerprint=fp, intent=intent, team=team, feature=feature,
                       created_at=created_at, updated_at=now, deadline=deadline, lines=nlines, submitter=_me(),
                       checkpoint_lines=max(64, min(CHECKPOINT_LINES, 8 * window)))
    if prev is not None and prev.fingerprint == fp:
        # What an earlier run may have sent after its last checkpoint stays in the zone that is
        # checked, until a run gets past it.
        info.started_line = prev.started_line
        info.checkpoint_lines = max(info.checkpoint_lines, prev.checkpoint_lines)
    rep = SubmitReport(batch_id=batch_id, client=client, resumed=prev is not None)
    err_path = Path(errors_path) if errors_path else src.with_name(src.stem + ".errors.jsonl")
    err_path.unlink(missing_ok=True)  # this run reports every malformed line again
    s = _Submitter(js, src, rep, window, progress)
    s.started = info.started_line
    max_bytes = job_size_limit(cfg, js._nc.max_payload)

    async def checkpoint(state: str = "sending") -> bool:
        """Record progress; False when a cancel asks us to stop."""
        info.updated_at = time.time()
        info.through_line, info.started_line = s.through, s.started
        info.malformed, info.state = rep.malformed, state  # type: ignore[assignment]
        await _publish(js, B.info_subject(batch_id), encode(info), {})
        return state != "sending" or await read_cancel(js, batch_id) is None

    errors: BinaryIO | None = None
    last_ckpt, last_ckpt_started = time.monotonic(), s.started
    try:
        await checkpoint()
        with open(src, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if s.failure is not None:
                    raise s.failure
                s.order.append(line_no)
                if not raw.strip():
                    s.finish(line_no)
                    continue
                try:
                    custom_id, request, line_intent = B.parse_line(raw)
                except B.LineError as e:
                    rep.malformed += 1
                    if errors is None:
                        errors = open(err_path, "wb")
                    errors.write(_malformed_record(line_no, raw, str(e)))
                    s.finish(line_no)
                    continue
                kind: dict[str, Any] = {"embeddings": request} if isinstance(request, EmbeddingsRequest) else {"request": request}
                job = Job(id=B.job_id(batch_id, custom_id), client=client, **kind, intent=line_intent or intent, key=key,
                          team=team, feature=feature, metadata={"batch_id": batch_id, "custom_id": custom_id}, priority="batch",
                          deadline=deadline)
                if (size := len(encode(job))) > max_bytes:  # would crash the publish, or be refused unread
                    rep.malformed += 1
                    if errors is None:
                        errors = open(err_path, "wb")
                    errors.write(_malformed_record(line_no, raw, too_large(size, max_bytes), custom_id))
                    s.finish(line_no)
                    continue
                rep.requests += 1
                if line_no <= skip_through:
                    rep.skipped += 1
                    s.finish(line_no)
                    continue
                await s.sem.acquire()
                s.started = max(s.started, line_no)
                t = asyncio.create_task(s.send(line_no, job, custom_id, check=line_no <= check_until))
                s.tasks.add(t)
                t.add_done_callback(s.tasks.discard)
                if s.started - last_ckpt_started >= info.checkpoint_lines or time.monotonic() - last_ckpt >= CHECKPOINT_S:
                    last_ckpt, last_ckpt_started = time.monotonic(), s.started
                    if not await checkpoint():
                        rep.stopped = True
                        break
        if s.tasks:
            await asyncio.gather(*list(s.tasks))
        if s.failure is not None:
            raise s.failure
        await checkpoint("stopped" if rep.stopped else "sent")
    except BaseException:
        for t in list(s.tasks):
            t.cancel()
        try:  # what is known to be in the stream, for the resume
            await asyncio.wait_for(asyncio.shield(checkpoint("stopped")), 5)
        except BaseException:
            pass
        raise
    finally:
        if errors is not None:
            errors.close()
    rep.lines = nlines
    rep.errors_path = str(err_path) if rep.malformed else None
    rep.elapsed_s = round(time.monotonic() - t0, 3)
    return rep


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- status -------------------------------------------------------------------------------


_decode_done = msgspec.json.Decoder(B.Done).decode


async def _read(js: JetStreamContext, subject: str, cc: ConsumerConfig, on_msg: Callable[[Any], Any], batch: int = 1000,
                stream: str = B.BATCHES_STREAM) -> int:
    """Every message a consumer has pending when created, one fetch of `batch` at a time
    (`on_msg` may be a coroutine function: a fetch's messages are then handled together)."""
    cc.ack_policy = AckPolicy.NONE
    cc.inactive_threshold = 30.0
    psub = await js.pull_subscribe(subject, stream=stream, config=cc, pending_msgs_limit=4 * batch)
    try:
        expected = (await psub.consumer_info()).num_pending or 0
        got = 0
        while got < expected:
            try:
                msgs = await psub.fetch(min(batch, expected - got), timeout=5)
            except nats.errors.TimeoutError:
                break  # what was pending has gone (max_age): stop at what we have
            outs = [on_msg(m) for m in msgs]
            if outs and asyncio.iscoroutine(outs[0]):
                await asyncio.gather(*outs)
            got += len(msgs)
        return got
    finally:
        try:
            await js.delete_consumer(stream, psub._consumer)
        except Exception:
            pass
        await psub.unsubscribe()


async def tally(js: JetStreamContext, batch_id: str, team: str | None = None) -> B.Tally:
    """Result counts by kind, read from the batch's index of ended jobs after the last
    counted sequence (the counts so far are cached in the manifest, so a status of a finished
    batch reads nothing)."""
    t = await _last(js, B.tally_subject(batch_id), B.Tally) or B.Tally()
    start = t.seq

    def count(m: Any) -> None:
        kind = _decode_done(m.data).kind
        if kind == "completed":
            t.completed += 1
        else:
            t.failed += 1
            t.cancelled += kind == "cancelled"
            t.expired += kind == "deadline_exceeded"
        t.seq = max(t.seq, m.metadata.sequence.stream)
        t.last_ts = max(t.last_ts, m.metadata.timestamp.timestamp())

    subject = B.done_filter(batch_id, team or await team_of(js, batch_id))
    cc = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start + 1) if start else ConsumerConfig()
    if await _read(js, subject, cc, count) and t.seq > start:
        await _publish(js, B.tally_subject(batch_id), encode(t), {})
    return t


async def status(js: JetStreamContext, batch_id: str) -> dict[str, Any] | None:
    """The batch as OpenAI's Batch object words it (status, request_counts), plus what
    panelboard knows besides. None: no trace of this batch (or it aged out)."""
    check_batch_id(batch_id)
    info, cancel = await read_info(js, batch_id), await read_cancel(js, batch_id)
    team = info.team if info is not None else "default"
    total = await count_jobs(js, batch_id)
    t = await tally(js, batch_id, team)
    finished = t.completed + t.failed
    if info is None and not total and not finished:
        return None
    now = time.time()
    submission = "unknown (the manifest has aged out)"
    if info is not None:
        submission = {"sending": "sending", "sent": "complete", "stopped": "stopped"}[info.state]
        if info.state == "sending" and now - info.updated_at > HEARTBEAT_STALE_S:
            submission = "interrupted"
        if info.state == "stopped" and cancel is None:
            submission = "interrupted"
    total = max(total, finished)
    sending = submission in ("sending",)
    all_in = submission == "complete" or (cancel is not None and not sending)
    if cancel is not None:
        state = "cancelled" if all_in and finished >= total else "cancelling"
    elif submission == "complete" and total == 0:
        state = "failed"  # not one well-formed line
    elif all_in and finished >= total:
        state = "completed"
    else:
        state = "in_progress"
    done_at = t.last_ts if state in ("completed", "cancelled") and t.last_ts else None
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file": info.input if info else None,
        # OpenAI's Batch fields (openai.types.Batch validates this object): the input is the
        # file's name, the output and errors are what `panelboard batch results` writes.
        "input_file_id": info.input if info else "",
        "completion_window": f"{round((info.deadline - info.created_at) / 3600)}h" if info and info.deadline else "none",
        "output_file_id": None,
        "error_file_id": None,
        "status": state,
        "created_at": int(info.created_at) if info else int(t.last_ts),
        "expires_at": int(info.deadline) if info and info.deadline else None,
        "cancelling_at": int(cancel.requested_at) if cancel else None,
        "cancelled_at": int(done_at) if state == "cancelled" and done_at else None,
        "completed_at": int(done_at) if state == "completed" and done_at else None,
        "request_counts": {"total": total, "completed": t.completed, "failed": t.failed},
        "panelboard": {
            "client": B.client_id(batch_id),
            "results_subject": wire.results_of(team),
            "index_subject": B.done_filter(batch_id, team),
            "submission": submission,
            "lines": info.lines if info else None,
            "sent_through_line": info.through_line if info else None,
            "malformed_lines": info.malformed if info else None,
            "pending": max(0, total - finished),
            "cancelled": t.cancelled,
            "expired": t.expired,
            "intent": info.intent if info else None,
            "team": info.team if info else None,
        },
    }


# -- results ------------------------------------------------------------------------------

_STATUS = {"invalid_job": 400, "unknown_intent": 400, "prompt_too_large": 400, "bad_key": 401, "over_budget": 402,
           "rate_limited": 429, "provider_error": 502, "chain_exhausted": 502,
           "response_too_large": 502}
_BATCH_LEVEL = {"cancelled": "batch_cancelled", "deadline_exceeded": "batch_expired"}


def openai_line(result: Any, batch_id: str) -> tuple[bool, bytes]:
    """One result as a line of OpenAI's batch output (ok) or error file."""
    custom_id = result.metadata.get("custom_id") if result.metadata.get("batch_id") == batch_id else None
    base = {"id": f"batch_req_{result.job_id}", "custom_id": custom_id}
    if isinstance(result, (Completed, Embedded)):
        line = {**base, "response": {"status_code": 200, "request_id": result.job_id, "body": result.response}, "error": None}
        return True, encode(line) + b"\n"
    err = result.error
    kind = err.kind
    if kind in _BATCH_LEVEL:  # like OpenAI's batch_expired / batch_cancelled: the request never ran
        line = {**base, "response": None, "error": {"code": _BATCH_LEVEL[kind], "message": err.message}}
    else:
        status = getattr(err, "status", 0) or _STATUS.get(kind, 500)
        body = {"error": {"message": err.message, "type": kind, "param": None, "code": kind, "hint": err.hint}}
        line = {**base, "response": {"status_code": status, "request_id": result.job_id, "body": body}, "error": None}
    return False, encode(line) + b"\n"


@dataclass
class ResultsReport:
    completed: int = 0
    failed: int = 0
    pending: int = 0
    output: str = ""
    errors: str | None = None


async def results(js: JetStreamContext, batch_id: str, out: str | os.PathLike[str], errors_out: str | os.PathLike[str] | None = None,
                  progress: Progress | None = None) -> ResultsReport:
    """Write every result of the batch: completed ones to `out`, failed ones to the errors
    file, one line per job (the last result of each job), in the order they finished. `out`
    "-" is stdout (the errors file is then BATCH_ID.errors.jsonl unless given)."""
    check_batch_id(batch_id)
    to_stdout = str(out) == "-"
    out = Path(out)
    err_path = Path(errors_out) if errors_out else Path(f"{batch_id}.errors.jsonl") if to_stdout else out.with_name(out.stem + ".errors.jsonl")
    rep = ResultsReport(output="<stdout>" if to_stdout else str(out))
    team = await team_of(js, batch_id)
    with (open(sys.stdout.fileno(), "wb", closefd=False) if to_stdout else open(out, "wb")) as ok_f, open(err_path, "wb") as err_f:

        async def write(m: Any) -> None:
            try:  # the index names where the job's terminal message is
                raw = await js.get_last_msg(wire.RESULTS_STREAM, _decode_done(m.data).subject, direct=True)
            except NotFoundError:
                return  # aged out of PB_RESULTS (results_ttl_s)
            good, line = openai_line(decode_result(raw.data or b""), batch_id)
            (ok_f if good else err_f).write(line)
            if good:
                rep.completed += 1
            else:
                rep.failed += 1
            if progress is not None:
                progress(1)

        await _read(js, B.done_filter(batch_id, team), ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT), write, batch=256)
    if not rep.failed:
        err_path.unlink(missing_ok=True)
    else:
        rep.errors = str(err_path)
    rep.pending = max(0, await count_jobs(js, batch_id) - rep.completed - rep.failed)
    return rep


# -- follow and cancel --------------------------------------------------------------------


async def follow(js: JetStreamContext, batch_id: str, progress: Progress | None = None, on_total: Callable[[int], None] | None = None,
                 timeout: float | None = None, every: float = 1.0) -> bool:
    """Wait until every job of the batch has a result (True), or `timeout` passes (False).
    Reads counts only: the server counts the results for a consumer that never fetches."""
    # It never fetches, so the server reaps it as inactive after inactive_threshold: then it is
    # created again. We delete it at the end.
    cc = ConsumerConfig(filter_subject=B.done_filter(batch_id, await team_of(js, batch_id)), ack_policy=AckPolicy.NONE,
                        inactive_threshold=600.0, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    ci = await js.add_consumer(B.BATCHES_STREAM, cc)
    end = None if timeout is None else time.monotonic() + timeout
    seen = total = 0
    final = False  # the job count stops changing once the submission has ended
    try:
        while True:
            info, cancel = await read_info(js, batch_id), await read_cancel(js, batch_id)
            sent = info is None or info.state == "sent" or (cancel is not None and info.state != "sending")
            try:
                n = (await js.consumer_info(B.BATCHES_STREAM, ci.name)).num_pending
            except NotFoundError:
                ci = await js.add_consumer(B.BATCHES_STREAM, cc)
                n = ci.num_pending
            if not final:
                final = sent
                t = await count_jobs(js, batch_id)
                if t != total:
                    total = t
                    if on_total is not None:
                        on_total(total)
            if progress is not None and n > seen:
                progress(n - seen)
            seen = max(seen, n)
            if sent and n >= total:
                return True
            if end is not None and time.monotonic() > end:
                return False
            await asyncio.sleep(every)
    finally:
        try:
            await js.delete_consumer(B.BATCHES_STREAM, ci.name)
        except Exception:
            pass


async def cancel(js: JetStreamContext, batch_id: str, cfg: Config, wait_submitter_s: float = 15.0,
                 timeout: float = 600.0) -> CancelReply:
    """Cancel a batch. What it guarantees:

    - no line is sent after it: a running submitter stops at its next checkpoint (within a
      second), and `batch submit` of a cancelled batch refuses;
    - every job of the batch still waiting in a queue (not yet handed to a broker or a worker)
      is deleted from it and gets a Failed result of kind `cancelled`; no provider is called
      for it (a broker does it, asked on pb.control.<team>.cancel: broker/cancel.py says how);
    - every job of it waiting in a provider's batch lane gets its `cancelled` result too and
      no other (`lane` in the reply counts them); a provider batch left with no wanted job
      is cancelled provider-side, and a line it had already run is billed;
    - jobs already handed to a broker or worker (running, retrying, or held by a pool that is
      at its cap) run to their own result;
    so every job of the batch still ends with exactly one result.
    """
    check_batch_id(batch_id)
    await ensure_manifest(js, cfg)
    prior = await read_cancel(js, batch_id)
    rec = prior or B.BatchCancel(requested_at=time.time())
    await _publish(js, B.cancel_subject(batch_id), encode(rec), {})
    # Let a live submitter see the flag and stop, so nothing is sent behind our back.
    end = time.monotonic() + wait_submitter_s
    while time.monotonic() < end:
        info = await read_info(js, batch_id)
        if info is None or info.state != "sending" or time.time() - info.updated_at > HEARTBEAT_STALE_S:
            break
        await asyncio.sleep(0.2)
    client, team = B.client_id(batch_id), await team_of(js, batch_id)
    rep = await control.cancel(js._nc, team, CancelRequest(client=client, reason=f"batch {batch_id} was cancelled"), timeout)
    rec.finished_at = time.time()
    rec.cancelled += rep.cancelled
    await _publish(js, B.cancel_subject(batch_id), encode(rec), {})
    return rep


__all__ = ["BatchError", "ResultsReport", "SubmitReport", "cancel", "follow", "results", "status", "submit"]
