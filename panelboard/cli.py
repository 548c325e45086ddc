"""The `panelboard` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from panelboard.cli_common import CliError, add_key_options, resolve_key
from panelboard.transport import logs


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: $PANELBOARD_CONFIG or examples/mock.yaml)")
    p.add_argument("--nats-url", help="join this NATS server or cluster (default: $PANELBOARD_NATS_URL, else the embedded one)")


def cmd_up(a: argparse.Namespace) -> int:
    import signal
    import threading

    from panelboard.transport.connection import home
    from panelboard.stack import Stack

    stack = Stack(home(), config=a.config, nats_url=a.nats_url, mock=not a.no_mock, mock_args=["--latency-ms", str(a.mock_latency_ms)],
                  metrics_port=a.metrics_port)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with stack:
        stack.start(workers=a.workers, ingress=True)
        print(f"panelboard is up: NATS {stack.nats_url}" + (f", mock provider {stack.mock_url}" if stack.mock_url else ""))
        print(f"HTTP ingress {stack.ingress_url}: OpenAI(base_url=\"{stack.ingress_url}/v1\"), Anthropic(base_url=\"{stack.ingress_url}\")")
        for name, port in stack.metrics_ports.items():
            print(f"metrics of {name}: http://127.0.0.1:{port}/metrics" + (f"; dashboard: http://127.0.0.1:{port}/" if name == "ledger" else ""))
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
    from panelboard.transport.connection import require_url
    from panelboard.runtime import run, serve

    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)
    providers = [] if broker else (a.provider or list(cfg.providers))
    unknown = [p for p in providers if p not in cfg.providers]
    if unknown:
        print(f"unknown provider(s) {unknown}; the config has {list(cfg.providers)}", file=sys.stderr)
        return 2
    from panelboard import dashboard, teams_view
    from panelboard.transport import meters, metrics

    metrics.dashboard_page = dashboard.page

    async def follow_teams() -> None:  # budget and headroom gauges, once this process runs a broker (workers never load SQL)
        while not meters.STATE.brokers:
            await asyncio.sleep(1.0)
        await teams_view.follow()

    run(metrics.alongside(a.metrics_port, url, serve(url, cfg, broker=broker, providers=providers), host=a.metrics_host, cfg=cfg,
                          follower=follow_teams))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from panelboard.config import load
    from panelboard.ingress.app import Settings
    from panelboard.ingress.serve import run
    from panelboard.transport.connection import home, require_url

    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)
    settings = Settings(cfg=cfg, nats_url=url, max_body_bytes=a.max_body_bytes or cfg.governance.max_job_bytes,
                        database_url=a.database_url, files_dir=a.files_dir or str(home() / "files"))
    argv = sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "serve" else []
    return run(settings, a.host, a.port, max(1, a.workers), home(), a.child, argv)


def _database(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="the cost ledger (default: $PANELBOARD_DATABASE_URL, the config's database.url, "
                                          "else sqlite under .panelboard/ledger.db)")


def _metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port at /metrics (0 picks one; default: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="the address the metrics port binds (default 127.0.0.1; 0.0.0.0 for every interface)")


def cmd_ledger(a: argparse.Namespace) -> int:
    from panelboard.broker.ledger import serve
    from panelboard.transport import db
    from panelboard.config import load
    from panelboard.transport.connection import home, require_url
    from panelboard.runtime import run

    from panelboard import dashboard
    from panelboard.transport import metrics

    metrics.dashboard_page = dashboard.page  # the page at / of the ledger's metrics port
    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)
    try:
        run(serve(url, cfg, db.resolve_url(a.database_url, cfg, home()), a.metrics_port, a.metrics_host))
    except db.DatabaseError as e:
        print(f"ledger: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    import time

    from sqlalchemy.exc import SQLAlchemyError

    from panelboard import queries, render, reports
    from panelboard.transport import db
    from panelboard.config import load
    from panelboard.transport.connection import home

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
    from panelboard.clients import Client
    from panelboard.transport.connection import require_url
    from panelboard.schemas.codec import encode
    from panelboard.schemas.job import Completed, Failed

    url = require_url(a.nats_url)
    key = resolve_key(a)

    async def go() -> int:
        async with Client(url, key=key, team=a.team or "default") as c:
            h = await c.submit([{"role": "user", "content": a.prompt}], intent=a.intent, job_id=a.job_id, max_tokens=a.max_tokens)
            r = await h.result(timeout=a.timeout)
        if a.json:
            print(encode(r).decode())
        elif isinstance(r, Completed):
            print(r.response.text)
            print(f"-- {r.provider} {r.model} tier={r.tier} cost=${r.cost_usd:.6f} tokens={r.response.usage.total_tokens} job={r.job_id}", file=sys.stderr)
        elif isinstance(r, Failed):
            print(f"failed: {r.error.message}\nhint: {r.error.hint}", file=sys.stderr)
        else:  # embeddings
            print(encode(r.response).decode())
        return 0 if not isinstance(r, Failed) else 1

    return asyncio.run(go())


def cmd_demo(a: argparse.Namespace) -> int:
    from panelboard.demo import run_demo

    return run_demo(a.jobs, a.concurrency, a.config, a.nats_url, a.mock_latency_ms, a.json, a.deferrable)


def cmd_dead(a: argparse.Namespace) -> int:
    from panelboard import dead
    from panelboard.transport.connection import connect, require_url

    url = require_url(a.nats_url)
    try:
        key = dead.key_for_replay(a.key_env, a.key_file, os.environ) if a.action == "replay" else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
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
            replayed, skipped = await dead.replay(js, rows, key)
            print(f"replayed {replayed} job(s)" + (f" under key {key[:8]}" if key else "")
                  + (f"; {skipped} undecodable letter(s) kept for inspection" if skipped else ""))
            return 0
        finally:
            await nc.drain()

    from panelboard.schemas.codec import encode

    return asyncio.run(go())


async def _quick_connect(url: str):
    """A short-lived connection for a read-only command: fails fast instead of waiting for a
    server that is not there."""
    from nats.aio.client import Client as NATS

    async def quiet(_e: Exception) -> None:  # the caller reports the failure once
        pass

    nc = NATS()
    await asyncio.wait_for(nc.connect(servers=[u.strip() for u in url.split(",")], name="panelboard-cli", connect_timeout=2,
                                      allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=quiet), 6)  # type: ignore[arg-type]  # nats-py types reconnect_time_wait int; it sleeps on a float
    return nc


def _load_job(path: str):
    """A Job as JSON; lenient for hand-written files: a bare request, or a job with no id."""
    import msgspec

    from panelboard.schemas.job import Job

    with (sys.stdin if path == "-" else open(path)) as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object: a Job, or a chat request with messages")
    if "request" not in raw and "messages" in raw:
        raw = {"request": raw}
    raw = {"id": "explain", "client": "cli", **raw}
    return msgspec.convert(raw, Job)


def cmd_route_explain(a: argparse.Namespace) -> int:
    import msgspec

    from panelboard.broker.explain import explain, render
    from panelboard.config import load
    from panelboard.transport.connection import find_url

    cfg = load(a.config)
    try:
        job = _load_job(a.job)
    except (OSError, ValueError, msgspec.ValidationError) as e:
        print(f"cannot read the job {a.job}: {e}\nhint: a Job as in the README's wire contract, or {{\"messages\": [...]}}", file=sys.stderr)
        return 2
    health = load_ = None
    url = None if a.no_health else find_url(a.nats_url, cfg)
    if url:
        from panelboard.broker.health_view import pool_load, read_health

        async def read():
            nc = await _quick_connect(url)
            try:
                js = nc.jetstream()
                return await read_health(js), await pool_load(js)
            finally:
                await nc.close()

        try:
            health, load_ = asyncio.run(read())
        except Exception as e:  # no server there: explain without health
            print(f"(health not read from {url}: {type(e).__name__})", file=sys.stderr)
    # As the broker would plan it now: deadline checked, max_tokens bounded where governance is on.
    ex = explain(job, cfg, health, load_, now=time.time(), bound=cfg.governance.require_keys is not False)
    print(msgspec.json.format(msgspec.json.encode(ex)).decode() if a.json else render(ex))
    return 0 if ex.error is None else 1


def cmd_status(a: argparse.Namespace) -> int:
    import time

    import msgspec

    from panelboard import capacity
    from panelboard.broker.health_status import render_status, status
    from panelboard.config import load
    from panelboard.transport import pacing_kv
    from panelboard.transport.connection import require_url

    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)

    async def go() -> int:
        nc = await _quick_connect(url)
        try:
            js = nc.jetstream()
            before = await capacity.sample(js, cfg)
            await asyncio.sleep(a.sample_s)  # the drain rate is the change over this interval
            while True:
                st = await status(js, cfg)
                now = await capacity.sample(js, cfg)
                pools = capacity.rows(cfg, now, before, await pacing_kv.read_pools(js))
                teams = await _team_figures(a, cfg)
                if a.json:
                    print(json.dumps({**msgspec.to_builtins(st), "pools": msgspec.to_builtins(pools),
                                      "teams": msgspec.to_builtins(teams)}, indent=2))
                else:
                    if a.watch:
                        print("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S"), end="\n")
                    print(render_status(st) + "\n\n" + "\n".join(capacity.render(pools)) + "\n\n" + _render_teams(teams))
                sys.stdout.flush()
                if not a.watch:
                    return 0
                before = now
                await asyncio.sleep(a.watch)
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        print(f"cannot read status from {url}: {type(e).__name__}: {e}\nhint: is the stack up (`panelboard up`)?", file=sys.stderr)
        return 2


async def _team_figures(a: argparse.Namespace, cfg) -> list | None:
    """Spend against budget and rate-limit headroom per team, from the governance database;
    None when there is none to read (a SQLite ledger that does not exist is not created)."""
    from panelboard.transport import db
    from panelboard.transport.connection import home

    url = db.resolve_url(a.database_url, cfg, home())
    path = db.sqlite_path(url)
    if path is not None and not path.exists():
        return None
    from panelboard import teams_view
    from panelboard.broker.governance_store import Store

    store = Store.open(url)
    try:
        return await teams_view.read(store)
    except Exception as e:  # the database is away: the rest of status still shows
        print(f"(teams not read from {db.display(url)}: {type(e).__name__})", file=sys.stderr)
        return None
    finally:
        await store.close()


def _render_teams(teams: list | None) -> str:
    out = ["teams (spend in the budget's period; rate-limit use over the last 60 s)"]
    if not teams:
        return "\n".join(out + ["  (none: no governance database, or no team set with `panelboard teams set`)"])
    money = lambda v: f"${v:,.2f}" if v is not None else "-"  # noqa: E731
    for t in teams:
        limits = "  ".join(f"{name} {used:,}/{cap:,}" for name, used, cap in (("rpm", t.rpm_used, t.rpm), ("tpm", t.tpm_used, t.tpm)) if cap)
        out.append(f"  {t.team}: {money(t.spent_usd)} of {money(t.budget_usd)} ({t.period}), {money(t.remaining_usd)} left"
                   + (f"; {limits}" if limits else ""))
    return "\n".join(out)


def cmd_drain(a: argparse.Namespace) -> int:
    from panelboard import drain
    from panelboard.config import load
    from panelboard.transport.connection import require_url

    cfg = load(a.config)
    if a.provider and a.provider not in cfg.providers:
        print(f"unknown provider {a.provider!r}; the config has {list(cfg.providers)}", file=sys.stderr)
        return 2
    url = require_url(a.nats_url, cfg)

    async def go() -> int:
        nc = await _quick_connect(url)
        try:
            return await drain.order(nc, a.provider, a.answer_s, a.timeout, sys.stdout)
        finally:
            await nc.close()

    return asyncio.run(go())


def cmd_health(a: argparse.Namespace) -> int:
    from panelboard.broker.health_aggregator import serve
    from panelboard.config import load
    from panelboard.transport.connection import require_url
    from panelboard.runtime import run

    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)
    run(serve(url, cfg))
    return 0


def cmd_import_litellm(a: argparse.Namespace) -> int:
    import os

    from panelboard.litellm_import import ImportError_, convert

    try:
        with open(a.file) as f:
            text = f.read()
        conv = convert(text, a.file)
    except OSError as e:
        print(f"cannot read {a.file}: {e.strerror}", file=sys.stderr)
        return 2
    except ImportError_ as e:
        print(f"import-litellm: {e}", file=sys.stderr)
        return 2
    for w in conv.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.output:
        if os.path.exists(a.output) and not a.force:
            print(f"{a.output} exists; pass --force to overwrite it", file=sys.stderr)
            return 2
        with open(a.output, "w") as f:
            f.write(conv.yaml)
        print(f"wrote {a.output}; try: panelboard route explain JOB.json --config {a.output}", file=sys.stderr)
    else:
        print(conv.yaml, end="")
    return 0


def cmd_mock(a: argparse.Namespace, rest: list[str]) -> int:
    from panelboard.loadgen.mock_provider import main as mock_main

    return mock_main(rest)


class _Parser(argparse.ArgumentParser):
    """An unknown option is reported by the (sub)command that was given it, with that
    command's usage, not the top level's: argparse passes a subcommand's leftovers up."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        if extra and not self._subparsers:  # a leaf command: nothing below it can use them
            self.error("unrecognized arguments: " + " ".join(extra))
        return ns, extra


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other tools do. Point stdout at
        # /dev/null so that the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the broken pipe


def cmd_asyncapi(a: argparse.Namespace) -> int:
    from panelboard import asyncapi  # faststream and the broker: only this command loads them

    if a.write or a.check:
        return asyncapi.write(check_only=a.check)
    print(asyncapi.render(), end="")
    return 0


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mock"]:
        return cmd_mock(argparse.Namespace(), argv[1:])
    logs.configure()
    ap = _Parser(prog="panelboard", description="An AI gateway built as a NATS JetStream inference broker.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="embedded NATS + broker + worker pools + mock provider, in one command")
    _common(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each runs every pool)")
    p.add_argument("--no-mock", action="store_true", help="do not start the mock provider")
    p.add_argument("--mock-latency-ms", type=float, default=200)
    p.add_argument("--metrics-port", type=int, metavar="BASE", help="serve each process's Prometheus metrics on 127.0.0.1: "
                   "the broker on BASE, then the workers and the ledger on the ports after it (default: off)")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("serve", help="the OpenAI- and Anthropic-compatible HTTP endpoint in front of the queue")
    _common(p)
    _database(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed and written to .panelboard/ingress.url)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port with SO_REUSEPORT")
    p.add_argument("--max-body-bytes", type=int, help="refuse larger request bodies with 413 (default: governance.max_job_bytes)")
    p.add_argument("--files-dir", help="where uploaded batch files are kept (default .panelboard/files)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_serve)

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

    from panelboard.evals import cli as evals_cli

    evals_cli.add_quality_report(rsub)  # report quality: shadow answers against live ones, from NATS

    p = sub.add_parser("submit", help="submit one job and print its result")
    _common(p)
    p.add_argument("prompt")
    p.add_argument("--intent", help="the job's intent; omit it and the classifier picks one from the prompt")
    add_key_options(p, "the job runs under (needed once governance is on)")
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
    p.add_argument("--deferrable", type=float, default=0.4, metavar="SHARE",
                   help="share of jobs with a 24 h deadline, which may ride a provider's batch lane (default 0.4; 0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("dead", help="list or replay dead letters")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("--nats-url")
    p.add_argument("--reason", help="only letters of this reason (chain_exhausted, invalid, ...)")
    p.add_argument("--job", action="append", help="replay this job id (repeatable)")
    p.add_argument("--all", action="store_true", help="replay every (matching) letter")
    p.add_argument("--key-env", metavar="VAR", help="replay under the virtual key in this environment variable (letters keep only "
                                                    "the key's prefix, so governed jobs need it supplied again; its team pays)")
    p.add_argument("--key-file", metavar="PATH", help="the same, the key read from a file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_dead)

    from panelboard import batch as batch_cli

    batch_cli.add_parser(sub, _common)

    from panelboard import governance_cli

    governance_cli.add_parsers(sub)  # keys, teams

    p = sub.add_parser("asyncapi", help="the wire contract as an AsyncAPI 3 document, generated from the code (docs/asyncapi.json)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite docs/asyncapi.json")
    g.add_argument("--check", action="store_true", help="exit 1 if docs/asyncapi.json differs from the code")
    p.set_defaults(fn=cmd_asyncapi)
    evals_cli.add_parsers(sub)  # eval router, eval train

    from panelboard import drill

    drill.add_parser(sub, _common, add_key_options)  # drill break-primary

    p = sub.add_parser("route", help="routing decisions: `route explain JOB.json`")
    rsub = p.add_subparsers(dest="route", required=True)
    r = rsub.add_parser("explain", help="print the route a job would take and why (intent, tier, chain, exclusions, health)")
    _common(r)
    r.add_argument("job", metavar="JOB.json", help="a Job as JSON (or a chat request with messages); - reads stdin")
    r.add_argument("--json", action="store_true", help="print the explanation as one JSON object")
    r.add_argument("--no-health", action="store_true", help="do not read PB_HEALTH and pool load from NATS")
    r.set_defaults(fn=cmd_route_explain)

    p = sub.add_parser("drain", help="running processes stop taking jobs, finish their in-flight calls (no time cut), hand back the rest and stop")
    _common(p)
    p.add_argument("--provider", help="drain only this provider's pools (default: every broker and pool)")
    p.add_argument("--timeout", type=float, help="give up waiting after S seconds (exit 3; the processes keep draining); default: wait")
    p.add_argument("--answer-s", type=float, default=2.0, help="how long running processes have to answer the order (default 2 s)")
    p.set_defaults(fn=cmd_drain)

    p = sub.add_parser("status", help="health per provider/model; per pool: depth, oldest job, in flight vs cap, drain rate, "
                                      "time to empty, a scale hint")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="S", help="refresh every S seconds (default 2) until Ctrl-C")
    p.add_argument("--sample-s", type=float, default=1.0, help="the interval the drain rate is measured over (default 1 s)")
    _database(p)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("health", help="run the health aggregator: PB_COSTS -> PB_HEALTH (rolling P95 and errors per provider/model)")
    _common(p)
    p.set_defaults(fn=cmd_health)

    p = sub.add_parser("config", help="config tools: `config import-litellm`")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    r = csub.add_parser("import-litellm", help="convert a LiteLLM proxy config (model_list, router_settings, fallbacks) into a panelboard config")
    r.add_argument("file", metavar="config.yaml")
    r.add_argument("-o", "--output", help="write here instead of stdout")
    r.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    r.set_defaults(fn=cmd_import_litellm)

    sub.add_parser("mock", help="run the mock provider (see `panelboard mock --help`)")

    a = ap.parse_args(argv)
    from panelboard.clients.errors import PanelboardError
    from panelboard.config import ConfigError
    from panelboard.transport.connection import NoServerError

    try:
        return a.fn(a)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (NoServerError, CliError, PanelboardError) as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
