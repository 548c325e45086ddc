"""`panelboard batch submit | status | results | cancel | wait`: the CLI over clients/batch.py."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from typing import Any

import msgspec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def duration_s(text: str) -> float:
    """'24h', '30m', '90s', '2d' or plain seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: say 24h, 30m, 90s or 2d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("batch", help="batch files (OpenAI Batch API / Anthropic Message Batches JSONL): submit, status, results, cancel")
    bsub = p.add_subparsers(dest="action", required=True)

    s = bsub.add_parser("submit", help="send every line of a JSONL batch file as a job; safe to run again after a crash")
    common(s)
    s.add_argument("file", help="JSONL: OpenAI Batch API lines (custom_id, method, url, body) or Anthropic (custom_id, params)")
    s.add_argument("--intent", help="the intent of every line (a line may carry its own \"intent\"); default: the config's default_intent")
    from panelboard.cli_common import add_key_options

    add_key_options(s, "the jobs run under")
    s.add_argument("--team", default="default")
    s.add_argument("--feature", help="feature tag for cost reports")
    s.add_argument("--batch-id", help="name the batch (default: a hash of the file and these options, so a resubmit resumes it)")
    s.add_argument("--window", type=int, default=512, help="publishes in flight at once (default 512)")
    s.add_argument("--errors", help="where malformed and oversized lines are reported (default: FILE's name with .errors.jsonl)")
    s.add_argument("--completion-window", type=duration_s, metavar="24h",
                   help="jobs not started by then fail with deadline_exceeded (OpenAI's batch_expired); default: none")
    s.add_argument("--wait", action="store_true", help="then wait for every result, with a progress bar")
    s.add_argument("--json", action="store_true", help="print the outcome as one JSON object")

    for name, text in (("status", "counts by state, as OpenAI's batch object names them"),
                       ("cancel", "stop the batch: jobs not yet started get a `cancelled` result and are never called"),
                       ("wait", "wait until every job of the batch has a result")):
        s = bsub.add_parser(name, help=text, description=text)
        common(s)
        s.add_argument("batch_id")
        s.add_argument("--json", action="store_true")
        if name == "wait":
            s.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")

    s = bsub.add_parser("results", help="write the results as OpenAI batch output JSONL; failures to their own file")
    common(s)
    s.add_argument("batch_id")
    s.add_argument("-o", "--output", required=True, help="completed requests, one JSON line each; - writes them to stdout")
    s.add_argument("--errors", help="failed requests (default: OUTPUT's name with .errors.jsonl; with -o -, BATCH_ID.errors.jsonl)")
    s.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_batch)


def _bar(unit: str):
    from panelboard.progress import Progress

    bar = Progress(0, unit=unit)

    def total(n: int) -> None:
        bar.total = n

    return bar, total


def _status_text(st: dict[str, Any]) -> str:
    c, pb = st["request_counts"], st["panelboard"]
    lines = [f"batch {st['id']}: {st['status']}",
             f"  requests  total {c['total']}  completed {c['completed']}  failed {c['failed']}  pending {pb['pending']}"]
    if pb["cancelled"] or pb["expired"]:
        lines.append(f"  of the failed: cancelled {pb['cancelled']}  expired {pb['expired']}")
    if pb["lines"] is not None:
        lines.append(f"  input {st['input_file']}: {pb['lines']} lines, {pb['malformed_lines']} malformed; submission {pb['submission']}"
                     + (f" (sent through line {pb['sent_through_line']})" if pb["submission"] != "complete" else ""))
    if pb["submission"] == "interrupted":
        lines.append(f"  hint: run `panelboard batch submit {st['input_file']} --batch-id {st['id']}` with the same options to send the rest")
    lines.append(f"  results: panelboard batch results {st['id']} -o {st['id']}.jsonl")
    return "\n".join(lines)


def check_input(path: str) -> str | None:
    """Why a batch file cannot be read, before anything connects; None when it can."""
    import os

    if not os.path.exists(path):
        return f"no such file: {path}\nhint: give the path of a JSONL batch file (one request per line)"
    if os.path.isdir(path):
        return f"{path} is a directory\nhint: give the path of a JSONL batch file (one request per line), not a folder"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


def _no_batch(batch_id: str) -> str:
    return (f"no batch {batch_id} (never submitted to this server, or its results have aged out)\n"
            "hint: check the id (`batch submit` prints it) and --nats-url")


async def _exists(js: Any, batch_id: str) -> bool:
    """Any trace of the batch (what `status` would report on), cheapest reads first: a cancel
    must not wait behind a full status while the queue drains."""
    from panelboard.clients import batch

    batch.check_batch_id(batch_id)
    return (await batch.read_info(js, batch_id) is not None or await batch.count_jobs(js, batch_id) > 0
            or await batch.count_results(js, batch_id) > 0)


def cmd_batch(a: argparse.Namespace) -> int:
    from panelboard.clients import batch
    from panelboard.clients.control import ControlError
    from panelboard.cli_common import resolve_key
    from panelboard.config import load
    from panelboard.transport.connection import connect, require_url
    from panelboard.runtime import run

    if a.action == "submit" and (why := check_input(a.file)):
        print(f"batch submit: {why}", file=sys.stderr)
        return 2
    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)
    if a.action == "submit":
        a.key = resolve_key(a)

    async def go() -> int:
        nc = await connect(url, f"panelboard-batch-{a.action}")
        js = nc.jetstream()
        try:
            await batch.ensure_manifest(js, cfg)
            match a.action:
                case "submit":
                    return await _submit(a, js, cfg)
                case "status":
                    st = await batch.status(js, a.batch_id)
                    if st is None:
                        print(f"no batch {a.batch_id} (never submitted here, or its results have aged out)", file=sys.stderr)
                        return 1
                    print(json.dumps(st) if a.json else _status_text(st))
                    return 0
                case "results":
                    if not await _exists(js, a.batch_id):  # not an empty file and rc 0
                        print(f"batch results: {_no_batch(a.batch_id)}", file=sys.stderr)
                        return 1
                    bar, _ = _bar("results")
                    bar.total = await batch.count_results(js, a.batch_id)
                    rep = await batch.results(js, a.batch_id, a.output, a.errors, progress=bar.advance)
                    bar.close()
                    say = sys.stderr if a.output == "-" else sys.stdout  # stdout carries the results
                    if a.json:
                        print(json.dumps(asdict(rep)), file=say)
                    else:
                        print(f"{rep.completed} completed -> {rep.output}" + (f"; {rep.failed} failed -> {rep.errors}" if rep.failed else "")
                              + (f"; {rep.pending} still pending" if rep.pending else ""), file=say)
                    return 0
                case "cancel":
                    if not await _exists(js, a.batch_id):  # a cancel record would block the id for ever
                        print(f"batch cancel: {_no_batch(a.batch_id)}", file=sys.stderr)
                        return 1
                    cancelled = await batch.cancel(js, a.batch_id, cfg)
                    st = await batch.status(js, a.batch_id)
                    if a.json:
                        print(json.dumps({"cancel": msgspec.structs.asdict(cancelled), "batch": st}))
                    else:
                        queued = cancelled.cancelled - cancelled.lane
                        print(f"batch {a.batch_id}: {queued} queued job(s) cancelled, never called; "
                              f"{cancelled.lane} cancelled in a provider batch lane (a line the provider had already run is billed); "
                              f"{cancelled.running} already with a broker or worker run to their own result")
                        if st is not None:
                            print(_status_text(st))
                    return 0
                case _:  # wait
                    if not await _exists(js, a.batch_id):
                        print(f"batch wait: {_no_batch(a.batch_id)}", file=sys.stderr)
                        return 1
                    bar, total = _bar("results")
                    ok = await batch.follow(js, a.batch_id, progress=bar.advance, on_total=total, timeout=a.timeout)
                    bar.close()
                    st = await batch.status(js, a.batch_id)
                    if st is not None:
                        print(json.dumps(st) if a.json else _status_text(st))
                    return 0 if ok else 1
        except batch.BatchError as e:
            print(f"batch {a.action}: {e}", file=sys.stderr)
            return 2
        except ControlError as e:  # no broker to do the cancel
            print(f"batch {a.action}: {e}", file=sys.stderr)
            return 1
        finally:
            await nc.drain()

    rc: list[int] = []

    async def main() -> None:
        rc.append(await go())

    try:
        run(main())
    except KeyboardInterrupt:
        hint = " (the jobs sent keep running; the same command resumes the rest)" if a.action == "submit" else ""
        print(f"\nbatch {a.action}: interrupted{hint}", file=sys.stderr)
        return 130
    return rc[0]


async def _submit(a: argparse.Namespace, js: Any, cfg: Any) -> int:
    from panelboard.clients import batch

    bar, total = _bar("lines")
    try:
        rep = await batch.submit(js, a.file, cfg=cfg, batch_id=a.batch_id, intent=a.intent, key=a.key, team=a.team, feature=a.feature,
                                 window=a.window, errors_path=a.errors, completion_window_s=a.completion_window, on_total=total,
                                 progress=bar.advance)
    finally:
        bar.close()
    out: dict[str, Any] = {"submit": asdict(rep)}
    if not a.json:
        resumed = f" (resumed: {rep.skipped} lines already sent, {rep.already_done} already done)" if rep.resumed else ""
        print(f"batch {rep.batch_id}: {rep.lines} lines, {rep.requests} requests, {rep.sent} sent{resumed} in {rep.elapsed_s:.1f}s")
        if rep.malformed:
            print(f"{rep.malformed} line(s) not sent (malformed or too large), by line number and custom_id, in {rep.errors_path}",
                  file=sys.stderr)
        if rep.stopped:
            print("stopped: the batch was cancelled", file=sys.stderr)
        print(f"status: panelboard batch status {rep.batch_id}\nresults: panelboard batch results {rep.batch_id} -o {rep.batch_id}.jsonl")
        sys.stdout.flush()
    if a.wait and not rep.stopped:
        bar, total = _bar("results")
        await batch.follow(js, rep.batch_id, progress=bar.advance, on_total=total)
        bar.close()
        st = await batch.status(js, rep.batch_id)
        out["batch"] = st
        if not a.json and st is not None:
            print(_status_text(st))
    if a.json:
        print(json.dumps(out))
    return 0
