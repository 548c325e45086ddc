"""`panelboard drill break-primary TIER`: the article's step 4 as a command. Break the first
hop of a tier's chain on the running stack's mock provider (429s, 500s, or calls that hang
past the timeout), send jobs through the tier, print what happened at each hop, and mend the
hop again, whatever happens in between.

Drills need the mock provider (`panelboard up` starts it): a real provider cannot be told to
fail. The mock is found from --mock-url, $PANELBOARD_MOCK_URL, or the mock.url file that
`panelboard up` writes in the stack's home.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from typing import Callable, Literal

import httpx
import msgspec

from panelboard.schemas.config import Config
from panelboard.schemas.job import Attempt, Completed, Failed, Result

Mode = Literal["429", "500", "hang"]
HANG_PAST_MS = 5_000  # a hang outlasts the provider's timeout by this much


class HopSummary(msgspec.Struct):
    hop: int
    provider: str
    model: str
    attempts: int
    statuses: dict[str, int]  # HTTP status (0: no answer, e.g. a timeout) -> calls
    decisions: dict[str, int]  # what the worker did next: retry / forward / succeed / fail
    answered: int  # jobs whose answer came from this hop


class Drill(msgspec.Struct):
    tier: str
    intent: str
    mode: str
    broken: str  # provider/model of the broken hop
    jobs: int
    completed: int
    failed: dict[str, int]  # error type -> jobs
    hops: list[HopSummary]
    p50_s: float | None
    verdict: str


def summarise(tier: str, intent: str, mode: str, chain: list[tuple[str, str]], results: list[Result], seconds: list[float]) -> Drill:
    """Pure: per hop of the chain, the calls made, their statuses and what followed."""
    attempts: list[Attempt] = []
    answered: Counter[int] = Counter()
    failed: Counter[str] = Counter()
    for r in results:
        attempts.extend(r.attempts)
        if isinstance(r, Completed):
            answered[r.attempts[-1].hop if r.attempts else 0] += 1  # the last attempt is the one that answered
        elif isinstance(r, Failed):
            failed[r.error.kind] += 1
    hops = []
    for i, (provider, model) in enumerate(chain):
        mine = [a for a in attempts if a.hop == i]
        hops.append(HopSummary(i, provider, model, len(mine), dict(Counter(str(a.status) for a in mine)),
                               dict(Counter(a.decision or "?" for a in mine)), answered[i]))
    done = sum(isinstance(r, Completed) for r in results)
    rescued = sum(h.answered for h in hops[1:])
    if done == len(results) and rescued == done:
        verdict = f"the chain held: all {done} jobs answered past the broken {chain[0][0]} hop"
    elif done == len(results):
        verdict = f"all {done} jobs answered, {rescued} by a fallback hop ({done - rescued} by the broken hop itself: its probe share or a retry that got through)"
    else:
        verdict = f"the chain did NOT hold: {len(results) - done} of {len(results)} jobs failed ({dict(failed)})"
    return Drill(tier=tier, intent=intent, mode=mode, broken=f"{chain[0][0]}/{chain[0][1]}", jobs=len(results), completed=done,
                 failed=dict(failed), hops=hops, p50_s=round(statistics.median(seconds), 3) if seconds else None, verdict=verdict)


def intent_for_tier(cfg: Config, tier: str) -> str | None:
    return next((i for i, t in cfg.intents.items() if t == tier), None)


def mock_provider_name(base_url: str, mock_url: str) -> str | None:
    """The mock plays a provider per first path segment: .../novita/v1 -> novita."""
    if not base_url.startswith(mock_url.rstrip("/") + "/"):
        return None
    return base_url[len(mock_url.rstrip("/")) + 1:].split("/")[0] or None


def find_mock_url(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("PANELBOARD_MOCK_URL"):
        return os.environ["PANELBOARD_MOCK_URL"]
    from panelboard.transport.connection import home

    f = home() / "mock.url"
    return f.read_text().strip() if f.exists() else None


def fault_body(provider: str, mode: Mode, timeout_ms: int) -> dict[str, object]:
    if mode == "hang":
        return {"provider": provider, "fault": "timeout", "every": 1, "hang_ms": timeout_ms + HANG_PAST_MS}
    return {"provider": provider, "fault": mode, "every": 1, "retry_after_s": 0.2} if mode == "429" else {"provider": provider, "fault": mode, "every": 1}


async def run(cfg: Config, nats_url: str, mock_url: str, tier: str, mode: Mode, jobs: int, key: str | None, team: str,
              timeout_s: float) -> Drill:
    from panelboard.broker.routing import tier_route
    from panelboard.clients import Client

    route = tier_route(cfg, tier)
    if len(route.chain) < 2:
        raise ValueError(f"tier {tier!r} has one hop: there is nothing to fall back to, so nothing to drill")
    intent = intent_for_tier(cfg, tier)
    if intent is None:
        raise ValueError(f"no intent maps to tier {tier!r}; add one under intents so jobs can be sent to it")
    primary = route.chain[0]
    base_url = cfg.providers[primary.provider].base_url
    name = mock_provider_name(base_url, mock_url)
    if name is None:
        raise ValueError(f"the primary hop {primary.provider} ({base_url}) is not served by the mock at {mock_url}; "
                         "drills break mock providers only (run the stack with `panelboard up`)")
    results: list[Result] = []
    seconds: list[float] = []
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{mock_url}/_mock/control", json=fault_body(name, mode, cfg.providers[primary.provider].timeout_ms))
        r.raise_for_status()
        try:
            async with Client(nats_url, key=key, team=team) as c:
                async def one(i: int) -> None:
                    t = time.monotonic()
                    h = await c.submit(f"drill {i}: say ok", intent=intent, max_tokens=8, feature="drill")
                    results.append(await h.result(timeout=timeout_s))
                    seconds.append(time.monotonic() - t)

                await asyncio.gather(*(one(i) for i in range(jobs)))
        finally:  # mend the hop even when the drill itself fails or is interrupted
            await http.post(f"{mock_url}/_mock/control", json={"provider": name, "fault": None, "hang_ms": None})
    return summarise(tier, intent, mode, [(h.provider, h.model) for h in route.chain], results, seconds)


def text(d: Drill) -> str:
    lines = [f"drill: break-primary {d.tier} (intent {d.intent}), mode {d.mode}, {d.jobs} jobs; broke {d.broken}", ""]
    lines.append(f"{'hop':<5}{'provider/model':<40}{'calls':>7}{'answered':>10}  statuses / next steps")
    for h in d.hops:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(h.statuses.items())) or "-"
        decisions = ", ".join(f"{s}: {n}" for s, n in sorted(h.decisions.items())) or "-"
        lines.append(f"{h.hop:<5}{(h.provider + '/' + h.model)[:39]:<40}{h.attempts:>7}{h.answered:>10}  {statuses} / {decisions}")
    lines.append("")
    if d.failed:
        lines.append(f"failed jobs: {d.failed}")
    if d.p50_s is not None:
        lines.append(f"median time to answer: {d.p50_s:.2f} s")
    lines.append(f"verdict: {d.verdict}")
    lines.append("the broken hop is mended again (mock fault cleared)")
    return "\n".join(lines)


def cmd_break_primary(a: argparse.Namespace) -> int:
    from panelboard.cli_common import resolve_key
    from panelboard.config import load
    from panelboard.transport.connection import require_url

    cfg = load(a.config)
    if a.tier not in cfg.tiers:
        print(f"unknown tier {a.tier!r} (known: {', '.join(cfg.tiers)})", file=sys.stderr)
        return 2
    mock = find_mock_url(a.mock_url)
    if mock is None:
        print("no mock provider found: pass --mock-url, set PANELBOARD_MOCK_URL, or start the stack with `panelboard up`", file=sys.stderr)
        return 2
    url = require_url(a.nats_url, cfg)
    try:
        d = asyncio.run(run(cfg, url, mock, a.tier, a.mode, a.jobs, resolve_key(a), a.team, a.timeout))
    except (ValueError, httpx.HTTPError) as e:
        print(f"drill: {e}", file=sys.stderr)
        return 2
    print(msgspec.json.encode(d).decode() if a.json else text(d))
    return 0 if d.completed == d.jobs else 1


def add_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None],
               key_options: Callable[[argparse.ArgumentParser, str], None]) -> None:
    p = sub.add_parser("drill", help="fallback drills against the running stack: `drill break-primary TIER`")
    dsub = p.add_subparsers(dest="drill", required=True)
    r = dsub.add_parser("break-primary", help="make a tier's first hop fail on the mock provider, send jobs, print what each hop did")
    common(r)
    r.add_argument("tier")
    r.add_argument("--mode", choices=["429", "500", "hang"], default="500", help="how the primary fails (default 500; hang: past its timeout)")
    r.add_argument("--jobs", type=int, default=20, help="jobs to send through the tier (default 20)")
    r.add_argument("--mock-url", help="the mock provider (default: $PANELBOARD_MOCK_URL, else the stack's mock.url)")
    r.add_argument("--team", default="default")
    r.add_argument("--timeout", type=float, default=180, help="seconds to wait for each job's result (default 180)")
    r.add_argument("--json", action="store_true", help="print the drill as one JSON object")
    key_options(r, "the drill's jobs run under")
    r.set_defaults(fn=cmd_break_primary)
