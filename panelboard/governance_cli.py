"""`panelboard keys ...` and `panelboard teams ...`: virtual keys, budgets, limits, NATS users."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from panelboard.schemas.job import ID_RE


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: $PANELBOARD_CONFIG or examples/mock.yaml)")
    p.add_argument("--database-url", help="where keys and budgets live: the ledger's database (default: $PANELBOARD_DATABASE_URL, "
                                          "the config's database.url, else sqlite under .panelboard/ledger.db)")


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "off", "-") else int(text)


def _opt_usd(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "-") else float(text)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("keys", help="virtual keys: create, list, revoke, rotate")
    ks = p.add_subparsers(dest="keys_cmd", required=True)

    c = ks.add_parser("create", help="create a key for a team; it is printed once, only its hash is kept")
    _db(c)
    c.add_argument("--team", required=True)
    c.add_argument("--models", type=_csv, help="allow only these catalog models (comma-separated)")
    c.add_argument("--tiers", type=_csv, help="allow only these tiers (comma-separated)")
    c.add_argument("--expires", help="a duration (30d, 12h) or an ISO date (2026-12-31)")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute (prompt + max output, settled to real usage)")
    c.add_argument("--max-parallel", type=int, help="jobs in flight at once")
    c.add_argument("--on-limit", choices=["wait", "fail"], default="fail", help="over a limit: wait in the queue, or fail with RateLimited")
    c.add_argument("--budget-usd", type=float, help="a budget for this key alone (the team's applies too)")
    c.add_argument("--soft-usd", type=float, help="log and count an alert when the key's spend crosses this")
    c.add_argument("--period", choices=["none", "daily", "monthly"], default="none", help="when the key's budget resets")
    c.add_argument("--note")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_keys_create)

    c = ks.add_parser("list", help="keys with their prefix, team, limits, spend; never the key")
    _db(c)
    c.add_argument("--team")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_keys_list)

    c = ks.add_parser("revoke", help="stop a key at once")
    _db(c)
    c.add_argument("prefix", help="the key's prefix, as `keys list` shows it (pb_xxxxx)")
    c.set_defaults(fn=cmd_keys_revoke)

    c = ks.add_parser("rotate", help="a new key with the same team, limits and budget; the old one stops after --grace")
    _db(c)
    c.add_argument("prefix")
    c.add_argument("--grace", default="0s", help="how long the old key keeps working (e.g. 1h; default: not at all)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_keys_rotate)

    p = sub.add_parser("teams", help="team budgets and limits; NATS users for a multi-team deployment")
    ts = p.add_subparsers(dest="teams_cmd", required=True)
    c = ts.add_parser("set", help="create or change a team's budget and limits (only the options given change)")
    _db(c)
    c.add_argument("team")
    c.add_argument("--budget-usd", type=_opt_usd, default=argparse.SUPPRESS, help="USD per period; `none` removes the budget")
    c.add_argument("--period", choices=["none", "daily", "monthly"], default=argparse.SUPPRESS, help="when spend resets (UTC)")
    c.add_argument("--soft-usd", type=_opt_usd, default=argparse.SUPPRESS, help="log and count an alert when spend crosses this")
    c.add_argument("--rpm", type=_opt_int, default=argparse.SUPPRESS, help="requests per minute for the whole team; `none` removes it")
    c.add_argument("--tpm", type=_opt_int, default=argparse.SUPPRESS, help="tokens per minute for the whole team")
    c.set_defaults(fn=cmd_teams_set)

    c = ts.add_parser("list", help="teams with budget, spend, reservations and limits")
    _db(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_teams_list)

    c = ts.add_parser("nats-config", help="a nats-server config with one user per team in governance.tenants")
    c.add_argument("--config")
    c.add_argument("--out", help="write it here (mode 0600) instead of stdout")
    c.add_argument("--store-dir", help="JetStream's store_dir")
    c.add_argument("--port", type=int, default=4222)
    c.add_argument("--host", default="0.0.0.0")
    c.set_defaults(fn=cmd_teams_nats_config)


def _run(a: argparse.Namespace, body: Callable[[Any, Any], Any]) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from panelboard.broker.governance_store import Store
    from panelboard.transport import db
    from panelboard.config import load
    from panelboard.transport.connection import home

    cfg = load(a.config)
    url = db.resolve_url(a.database_url, cfg, home())

    async def go() -> int:
        store = Store.open(url)
        try:
            return await body(store, cfg)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except db.DatabaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as e:
        print(f"cannot use the key database at {db.display(url)}: {str(e).splitlines()[0]}\n"
              f"hint: pass --database-url or set {db.URL_ENV}; is the database up?", file=sys.stderr)
        return 2


def _bad_team(team: str) -> bool:
    if not ID_RE.match(team):
        print(f"error: team {team[:64]!r} is not a valid name; use 1-128 characters from A-Z a-z 0-9 _ -", file=sys.stderr)
        return True
    return False


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _usd(nano: int | None) -> str:
    return "-" if nano is None else f"{nano / 1e9:.4f}"


def cmd_keys_create(a: argparse.Namespace) -> int:
    from panelboard.broker.budgets import to_nano
    from panelboard.broker.keys import parse_expiry

    if _bad_team(a.team):
        return 2
    try:
        expires = parse_expiry(a.expires) if a.expires else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    async def body(store, cfg) -> int:
        unknown = [m for m in a.models or [] if m not in cfg.models] + [t for t in a.tiers or [] if t not in cfg.tiers]
        if unknown:
            print(f"error: not in the config: {', '.join(unknown)} (models: {', '.join(cfg.models)}; tiers: {', '.join(cfg.tiers)})", file=sys.stderr)
            return 2
        key, prefix = await store.create_key(
            a.team, models=a.models, tiers=a.tiers, expires_at=expires, rpm=a.rpm, tpm=a.tpm, max_parallel=a.max_parallel,
            on_limit=a.on_limit, budget_nano=to_nano(a.budget_usd) if a.budget_usd is not None else None,
            soft_nano=to_nano(a.soft_usd) if a.soft_usd is not None else None, period=a.period, note=a.note)
        if a.json:
            print(json.dumps({"key": key, "prefix": prefix, "team": a.team}))
        else:
            print(key)
            print(f"key {prefix} for team {a.team}: shown once, only its hash is kept. Clients pass it as Client(key=...).", file=sys.stderr)
        return 0

    return _run(a, body)


def cmd_keys_list(a: argparse.Namespace) -> int:
    async def body(store, cfg) -> int:
        rows = await store.list_keys(a.team)
        now = time.time()
        if a.json:
            print(json.dumps(rows))
            return 0
        if not rows:
            print("no keys" + (f" for team {a.team}" if a.team else "") + "; create one: panelboard keys create --team <team>")
            return 0
        head = f"{'prefix':<10}{'team':<16}{'state':<9}{'created':<18}{'expires':<18}{'rpm':>6}{'tpm':>9}{'par':>5}{'limit':>6}{'budget':>10}{'spent':>10}{'inflight':>9}"
        print(head)
        for r in rows:
            state = "revoked" if r["revoked_at"] is not None and r["revoked_at"] <= now else (
                "expired" if r["expires_at"] is not None and r["expires_at"] <= now else
                "rotating" if r["revoked_at"] is not None else "active")
            print(f"{r['prefix']:<10}{r['team'][:15]:<16}{state:<9}{_when(r['created_at']):<18}{_when(r['expires_at']):<18}"
                  f"{r['rpm'] if r['rpm'] is not None else '-':>6}{r['tpm'] if r['tpm'] is not None else '-':>9}"
                  f"{r['max_parallel'] if r['max_parallel'] is not None else '-':>5}{r['on_limit']:>6}"
                  f"{_usd(r['budget_nano']):>10}{_usd(r['spent_nano']):>10}{r['inflight']:>9}")
        return 0

    return _run(a, body)


def cmd_keys_revoke(a: argparse.Namespace) -> int:
    async def body(store, cfg) -> int:
        if await store.revoke_key(a.prefix):
            print(f"revoked {a.prefix}; jobs carrying it now fail with BadKey")
            return 0
        print(f"error: no active key {a.prefix!r}; see panelboard keys list", file=sys.stderr)
        return 1

    return _run(a, body)


def cmd_keys_rotate(a: argparse.Namespace) -> int:
    from panelboard.broker.keys import parse_expiry

    try:
        grace = parse_expiry(a.grace, now=0.0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    async def body(store, cfg) -> int:
        out = await store.rotate_key(a.prefix, grace)
        if out is None:
            print(f"error: no key {a.prefix!r}; see panelboard keys list", file=sys.stderr)
            return 1
        key, prefix = out
        if a.json:
            print(json.dumps({"key": key, "prefix": prefix, "replaces": a.prefix}))
        else:
            print(key)
            print(f"key {prefix} replaces {a.prefix}" + (f", which keeps working for {a.grace}" if grace else ", revoked now")
                  + ": shown once, only its hash is kept.", file=sys.stderr)
        return 0

    return _run(a, body)


def cmd_teams_set(a: argparse.Namespace) -> int:
    from panelboard.broker.budgets import to_nano

    if _bad_team(a.team):
        return 2
    fields: dict[str, Any] = {}
    if "budget_usd" in a:
        fields["budget_nano"] = to_nano(a.budget_usd) if a.budget_usd is not None else None
    if "soft_usd" in a:
        fields["soft_nano"] = to_nano(a.soft_usd) if a.soft_usd is not None else None
    for name in ("period", "rpm", "tpm"):
        if name in a:
            fields[name] = getattr(a, name)
    if not fields:
        print("error: say what to set: --budget-usd, --period, --soft-usd, --rpm or --tpm", file=sys.stderr)
        return 2

    async def body(store, cfg) -> int:
        await store.set_team(a.team, **fields)
        row = next(r for r in await store.list_teams() if r["name"] == a.team)
        print(f"team {a.team}: budget {_usd(row['budget_nano'])} USD ({row['period']}), soft {_usd(row['soft_nano'])}, "
              f"spent {_usd(row['spent_nano'])}, rpm {row['rpm'] or '-'}, tpm {row['tpm'] or '-'}")
        return 0

    return _run(a, body)


def cmd_teams_list(a: argparse.Namespace) -> int:
    async def body(store, cfg) -> int:
        rows = await store.list_teams()
        if a.json:
            print(json.dumps(rows))
            return 0
        if not rows:
            print("no teams with budgets or limits; set one: panelboard teams set <team> --budget-usd 100 --period monthly")
            return 0
        # spent = live + shadow: the budget covers both (shadow calls reserve with their jobs)
        print(f"{'team':<20}{'period':<9}{'budget':>11}{'soft':>11}{'spent':>11}{'live':>11}{'shadow':>11}{'reserved':>11}{'remaining':>11}"
              f"{'alerts':>7}{'rpm':>7}{'tpm':>10}")
        for r in rows:
            print(f"{r['name'][:19]:<20}{r['period']:<9}{_usd(r['budget_nano']):>11}{_usd(r['soft_nano']):>11}{_usd(r['spent_nano']):>11}"
                  f"{_usd(r['live_spent_nano']):>11}{_usd(r['shadow_spent_nano']):>11}"
                  f"{_usd(r['reserved_nano']):>11}{_usd(r['remaining_nano']):>11}{r['soft_alerts']:>7}"
                  f"{r['rpm'] if r['rpm'] is not None else '-':>7}{r['tpm'] if r['tpm'] is not None else '-':>10}")
        return 0

    return _run(a, body)


def cmd_teams_nats_config(a: argparse.Namespace) -> int:
    import os

    from panelboard import tenants
    from panelboard.config import load

    cfg = load(a.config)
    if not cfg.governance.tenants:
        print("error: the config lists no governance.tenants (team: {password: env:NAME, clients: [...]})", file=sys.stderr)
        return 2
    try:
        text = tenants.server_config(cfg, service_password="$PANELBOARD_NATS_PASSWORD", store_dir=a.store_dir, host=a.host, port=a.port)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.out:
        fd = os.open(a.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"wrote {a.out}: start nats-server -c {a.out} with PANELBOARD_NATS_PASSWORD and each team's password variable set", file=sys.stderr)
    else:
        print(text, end="")
    return 0
