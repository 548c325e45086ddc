"""The `panelboard` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from panelboard import logs


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: $PANELBOARD_CONFIG or examples/mock.yaml)")
    p.add_argument("--nats-url", help="join this NATS server or cluster (default: $PANELBOARD_NATS_URL, else the embedded one)")


def cmd_up(a: argparse.Namespace) -> int:
    import signal
    import threading

    from panelboard.runtime import home
    from panelboard.stack import Stack

    stack = Stack(home(), config=a.config, nats_url=a.nats_url, mock=not a.no_mock, mock_args=["--latency-ms", str(a.mock_latency_ms)])
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with stack:
        stack.start(workers=a.workers)
        print(f"panelboard is up: NATS {stack.nats_url}" + (f", mock provider {stack.mock_url}" if stack.mock_url else ""))
        print(f"logs in {stack.home / 'logs'}; try: panelboard submit --intent extraction 'Extract the date from: due 2026-12-01'")
        print("cost records go to the ledger: panelboard report usage --days 1 (or savings, breakeven, shadow)")
        print("Ctrl-C stops everything.")
        sys.stdout.flush()
        while not done.wait(1.0):
            for name, proc in list(stack.procs.items()):
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {stack.home / 'logs' / (name + '.log')}", file=sys.stderr)
                    stack.procs.pop(name)
    return 0


def _serve(a: argparse.Namespace, broker: bool) -> int:
    from panelboard.config import load
    from panelboard.runtime import find_url, run, serve

    cfg = load(a.config)
    url = find_url(a.nats_url, cfg)
    if not url:
        print("no NATS server: pass --nats-url, set PANELBOARD_NATS_URL, or run `panelboard up` in this directory", file=sys.stderr)
        return 2
    providers = [] if broker else (a.provider or list(cfg.providers))
    unknown = [p for p in providers if p not in cfg.providers]
    if unknown:
        print(f"unknown provider(s) {unknown}; the config has {list(cfg.providers)}", file=sys.stderr)
        return 2
    from panelboard import metrics

    run(metrics.alongside(a.metrics_port, url, serve(url, cfg, broker=broker, providers=providers)))
    return 0


def _database(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="the cost ledger (default: $PANELBOARD_DATABASE_URL, the config's database.url, "
                                          "else sqlite under .panelboard/ledger.db)")


def _metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port at /metrics (0 picks one; default: off)")


def cmd_ledger(a: argparse.Namespace) -> int:
    from broker.ledger import serve
    from panelboard import db
    from panelboard.config import load
    from panelboard.runtime import find_url, home, run

    cfg = load(a.config)
    url = find_url(a.nats_url, cfg)
    if not url:
        print("no NATS server: pass --nats-url, set PANELBOARD_NATS_URL, or run `panelboard up` in this directory", file=sys.stderr)
        return 2
    try:
        run(serve(url, cfg, db.resolve_url(a.database_url, cfg, home()), a.metrics_port))
    except db.DatabaseError as e:
        print(f"ledger: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    import time

    from sqlalchemy.exc import SQLAlchemyError

    from panelboard import db, queries, render, reports
    from panelboard.config import load
    from panelboard.runtime import home

    cfg = load(a.config)
    url = db.resolve_url(a.database_url, cfg, home())

    async def go():
        engine = db.open_engine(url)
        try:
            match a.report:
                case "usage":
                    rep = await queries.usage(engine, a.by, a.days)
                    return rep, render.usage_table(rep)
                case "savings":
                    rep = await queries.savings(engine, cfg, a.days)
                    return rep, render.savings_table(rep)
                case "breakeven":
                    traffic = await queries.traffic(engine, a.days)
                    price, source = reports.serverless_price(cfg, traffic, a.per_million, a.model)
                    rep = reports.breakeven(a.hourly, price, source, a.days, traffic, time.time(), a.capacity_tps)
                    return rep, render.breakeven_table(rep)
                case _:
                    rep = await queries.shadow(engine, a.days)
                    return rep, render.shadow_table(rep)
        finally:
            await engine.dispose()

    try:
        rep, table = asyncio.run(go())
    except ValueError as e:
        print(f"report {a.report}: {e}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as e:
        print(f"cannot read the ledger at {db.display(url)}: {str(e).splitlines()[0]}\n"
              f"hint: pass --database-url or set {db.URL_ENV}; is the database up?", file=sys.stderr)
        return 2
    print(render.to_json(rep) if a.json else render.to_csv(table) if a.csv else render.text(table), end="" if a.csv else "\n")
    if table.empty and a.csv:
        print(table.empty, file=sys.stderr)
    if a.chart:
        if table.empty:
            print(f"no chart: {table.empty}", file=sys.stderr)
        else:
            with open(a.chart, "w") as f:
                f.write(render.chart_html(table.title, rep))
            print(f"chart written to {a.chart}", file=sys.stderr)
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    from clients import Client
    from schemas.codec import encode
    from schemas.job import Completed

    async def go() -> int:
        async with Client(a.nats_url) as c:
            h = await c.submit([{"role": "user", "content": a.prompt}], intent=a.intent, job_id=a.job_id, max_tokens=a.max_tokens, team=a.team)
            r = await h.result(timeout=a.timeout)
        if a.json:
            print(encode(r).decode())
        elif isinstance(r, Completed):
            print(r.response.text)
            print(f"-- {r.provider} {r.model} tier={r.tier} cost=${r.cost_usd:.6f} tokens={r.response.usage.total_tokens} job={r.job_id}", file=sys.stderr)
        else:
            print(f"failed: {r.error.message}\nhint: {r.error.hint}", file=sys.stderr)
        return 0 if isinstance(r, Completed) else 1

    return asyncio.run(go())


def cmd_demo(a: argparse.Namespace) -> int:
    from panelboard.demo import run_demo

    return run_demo(a.jobs, a.concurrency, a.config, a.nats_url, a.mock_latency_ms, a.json)


def cmd_dead(a: argparse.Namespace) -> int:
    from panelboard import dead
    from panelboard.runtime import connect, find_url

    url = find_url(a.nats_url)
    if not url:
        print("no NATS server: pass --nats-url, set PANELBOARD_NATS_URL, or run `panelboard up` in this directory", file=sys.stderr)
        return 2

    async def go() -> int:
        nc = await connect(url, "panelboard-dead")
        try:
            js = nc.jetstream()
            rows = await dead.letters(js, a.reason)
            if a.action == "list":
                print(json.dumps([{"seq": s, **json.loads(encode(d))} for s, d in rows]) if a.json else dead.table(rows))
                return 0
            if a.job:
                rows = [(s, d) for s, d in rows if d.job and d.job.id in a.job]
            elif not a.all:
                print("say which: --job ID (repeatable), --reason R with --all, or --all", file=sys.stderr)
                return 2
            replayed, skipped = await dead.replay(js, rows)
            print(f"replayed {replayed} job(s)" + (f"; {skipped} undecodable letter(s) kept for inspection" if skipped else ""))
            return 0
        finally:
            await nc.drain()

    from schemas.codec import encode

    return asyncio.run(go())


def cmd_mock(a: argparse.Namespace, rest: list[str]) -> int:
    from loadgen.mock_provider import main as mock_main

    return mock_main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mock"]:
        return cmd_mock(argparse.Namespace(), argv[1:])
    logs.configure()
    ap = argparse.ArgumentParser(prog="panelboard", description="An AI gateway built as a NATS JetStream inference broker.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="embedded NATS + broker + worker pools + mock provider, in one command")
    _common(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each runs every pool)")
    p.add_argument("--no-mock", action="store_true", help="do not start the mock provider")
    p.add_argument("--mock-latency-ms", type=float, default=200)
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("broker", help="run a broker process")
    _common(p)
    _metrics(p)
    p.set_defaults(fn=lambda a: _serve(a, broker=True))

    p = sub.add_parser("worker", help="run worker pools (all providers unless --provider is given)")
    _common(p)
    p.add_argument("--provider", action="append", help="run this provider's pool (repeatable)")
    _metrics(p)
    p.set_defaults(fn=lambda a: _serve(a, broker=False))

    p = sub.add_parser("ledger", help="write cost records from the PB_COSTS stream into the SQL ledger")
    _common(p)
    _database(p)
    _metrics(p)
    p.set_defaults(fn=cmd_ledger)

    from panelboard.reports import DIMENSIONS

    p = sub.add_parser("report", help="cost reports from the ledger: usage, savings, breakeven, shadow")
    rsub = p.add_subparsers(dest="report", required=True)
    helps = {
        "usage": "requests, tokens, cost, p50/p95 latency and failure rate, grouped --by a dimension",
        "savings": "actual cost by intent against all-frontier and all-cheapest-tier",
        "breakeven": "dedicated endpoint ($/hr) against serverless ($/M tokens), and where your traffic stands",
        "shadow": "shadow calls beside the live calls of the same jobs: cost and latency",
    }
    for name, text in helps.items():
        r = rsub.add_parser(name, help=text, description=text)
        r.add_argument("--config", help="config file, for the price catalog (default: $PANELBOARD_CONFIG or examples/mock.yaml)")
        _database(r)
        r.add_argument("--days", type=float, default=30, help="the window: the last N days (default 30)")
        out = r.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print the report as one JSON object")
        out.add_argument("--csv", action="store_true", help="print the table as CSV")
        r.add_argument("--chart", metavar="FILE.html", help="also write a bar chart (HTML with inline SVG)")
        r.set_defaults(fn=cmd_report)
        if name == "usage":
            r.add_argument("--by", choices=DIMENSIONS, default="intent")
        if name == "breakeven":
            r.add_argument("--hourly", type=float, required=True, metavar="USD", help="the dedicated endpoint's price per hour")
            price = r.add_mutually_exclusive_group()
            price.add_argument("--per-million", type=float, metavar="USD", help="the serverless price per million tokens")
            price.add_argument("--model", metavar="M", help="price serverless at this catalog model (default: what your traffic paid)")
            r.add_argument("--capacity-tps", type=float, metavar="N", help="tokens/s one dedicated endpoint sustains, for its utilisation")

    p = sub.add_parser("submit", help="submit one job and print its result")
    _common(p)
    p.add_argument("prompt")
    p.add_argument("--intent", required=True)
    p.add_argument("--job-id")
    p.add_argument("--team", default="default")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--json", action="store_true", help="print the whole Result as JSON")
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("demo", help="run a realistic job mix through the embedded stack and report cost by tier")
    _common(p)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--mock-latency-ms", type=float, default=50)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("dead", help="list or replay dead letters")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("--nats-url")
    p.add_argument("--reason", help="only letters of this reason (chain_exhausted, invalid, ...)")
    p.add_argument("--job", action="append", help="replay this job id (repeatable)")
    p.add_argument("--all", action="store_true", help="replay every (matching) letter")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_dead)

    sub.add_parser("mock", help="run the mock provider (see `panelboard mock --help`)")

    a = ap.parse_args(argv)
    from panelboard.config import ConfigError

    try:
        return a.fn(a)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
