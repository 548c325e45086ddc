"""The ledger at 10 million rows: bulk-generate synthetic cost records, then time each report.

    nice -n 10 python -m panelboard.loadgen.ledger_bench --rows 10000000 --sqlite /tmp/ledger10m.db \\
        [--postgres postgresql+asyncpg://postgres@127.0.0.1/test] [--out loadgen/out/ledger_bench.json]

Rows follow the article's traffic mix (loadgen.mix) over the config's tiers and prices: some
calls fail and are retried or fall back, 1% of jobs are mirrored to a shadow model. They are
loaded the bulk way (sqlite3 executemany in big transactions; COPY for Postgres) into the
ledger's own schema and indexes, then every report runs through the same code as
`panelboard report`, once over the whole window and once over its last day.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sqlite3
import sys
from typing import Any
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from panelboard.schemas.pricing import call_cost
from panelboard.loadgen.mix import MIX
from panelboard import queries, reports
from panelboard.transport import db
from panelboard.config import load
from panelboard.schemas.config import Config
from panelboard.schemas.job import CallOutcome, CostRecord

TEAMS = ("search", "support", "billing", "growth", "platform")
FEATURES = ("invoices", "tickets", "digest", "agent", "onboarding", "export")
FAILURES: tuple[tuple[CallOutcome, float], ...] = (("RateLimited", 0.02), ("ServerError", 0.012), ("Timeout", 0.005))
TIER_LATENCY_MS = {"cheap-fast": 450.0, "workhorse": 1600.0, "frontier": 4200.0}
PROMPT_MU = {"extraction": 5.8, "classification": 5.0, "summarisation": 7.2, "reasoning": 6.2, "planning": 6.6}


def synthetic(n: int, cfg: Config, end_ts: float, days: float = 30.0, seed: int = 1) -> Iterator[CostRecord]:
    """`n` cost records, one per provider call, in time order over `days` ending at `end_ts`."""
    rng = random.Random(seed)
    intents = [m[0] for m in MIX]
    weights = [m[1] for m in MIX]
    max_tokens = {m[0]: m[2] for m in MIX}
    shadow_model = cfg.tiers["workhorse"].fallbacks[0].model if "workhorse" in cfg.tiers else None
    start, step = end_ts - days * 86_400, days * 86_400 / n
    made = job = 0
    while made < n:
        intent = rng.choices(intents, weights)[0]
        tier_name = cfg.intents[intent]
        tier = cfg.tiers[tier_name]
        team = TEAMS[job % len(TEAMS)]
        feature = rng.choice(FEATURES)
        job_id = f"job-{job:09d}"
        job += 1
        pt = max(8, int(rng.lognormvariate(PROMPT_MU.get(intent, 6.0), 0.5)))
        ct = max(1, min(max_tokens[intent], int(rng.lognormvariate(math.log(max_tokens[intent] / 3), 0.6))))
        hop = attempt = 0
        while made < n:
            link = tier.fallbacks[hop]
            model = cfg.models[link.model]
            ts = start + made * step
            latency = rng.lognormvariate(math.log(TIER_LATENCY_MS.get(tier_name, 1000.0)), 0.4)
            failed = next((name for name, p in FAILURES if rng.random() < p), None)
            common: dict[str, Any] = dict(job_id=job_id, team=team, key_prefix=f"pb_{team[:4]}", feature=feature, intent=intent, tier=tier_name,
                          hop=hop, attempt=attempt, queue_ms=round(rng.expovariate(1 / 40), 2), ts=ts)
            if failed:
                yield CostRecord(**common, provider=model.provider, model=link.model, quantization=model.quantization,
                                 prompt_tokens=0, completion_tokens=0, cost_usd=0.0,
                                 latency_ms=round(latency if failed != "Timeout" else 30_000.0, 2), outcome=failed)
                made += 1
                attempt += 1
                if attempt > tier.retry_policy.max_retries and hop + 1 < len(tier.fallbacks):
                    hop, attempt = hop + 1, 0
                elif attempt > tier.retry_policy.max_retries:
                    break
                continue
            yield CostRecord(**common, provider=model.provider, model=link.model, quantization=model.quantization,
                             prompt_tokens=pt, completion_tokens=ct, cost_usd=call_cost(model, pt, ct),
                             latency_ms=round(latency, 2), outcome="ok")
            made += 1
            if shadow_model and tier_name == "frontier" and made < n and rng.random() < 0.01:
                sm = cfg.models[shadow_model]
                sct = max(1, int(ct * rng.uniform(0.7, 1.3)))
                yield CostRecord(**common, provider=sm.provider, model=shadow_model, quantization=sm.quantization,
                                 prompt_tokens=pt, completion_tokens=sct, cost_usd=call_cost(sm, pt, sct),
                                 latency_ms=round(rng.lognormvariate(math.log(1600.0), 0.4), 2), outcome="ok", shadow=True)
                made += 1
            break


def _tuples(records: Iterator[CostRecord]) -> Iterator[tuple]:
    for rec in records:
        row = db.row(rec)
        yield tuple(row[k] for k in db.COLUMNS)


def load_sqlite(path: Path, rows: Iterator[tuple], chunk: int = 200_000) -> int:
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")  # a benchmark load: a crash means regenerate
    sql = f"INSERT INTO {db.costs.name} ({', '.join(db.COLUMNS)}) VALUES ({', '.join('?' * len(db.COLUMNS))})"
    total = 0
    while batch := [r for _, r in zip(range(chunk), rows)]:
        con.executemany(sql, batch)
        con.commit()
        total += len(batch)
        print(f"  sqlite: {total:,} rows", file=sys.stderr, flush=True)
    con.execute("ANALYZE")
    con.commit()
    con.close()
    return total


async def load_postgres(url: str, schema: str, rows: Iterator[tuple], chunk: int = 200_000) -> int:
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    con = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database)
    total = 0
    try:
        while batch := [r for _, r in zip(range(chunk), rows)]:
            await con.copy_records_to_table(db.costs.name, records=batch, columns=db.COLUMNS, schema_name=schema)
            total += len(batch)
            print(f"  postgres: {total:,} rows", file=sys.stderr, flush=True)
        await con.execute(f'ANALYZE "{schema}".{db.costs.name}')
    finally:
        await con.close()
    return total


async def time_reports(engine: AsyncEngine, cfg: Config, now: float, days: float) -> dict[str, float]:
    out: dict[str, float] = {}

    async def timed(name: str, coro) -> None:
        t = time.perf_counter()
        await coro
        out[name] = round(time.perf_counter() - t, 2)
        print(f"  {name} --days {days:g}: {out[name]:.2f}s", file=sys.stderr, flush=True)

    for by in reports.DIMENSIONS:
        await timed(f"usage --by {by}", queries.usage(engine, by, days, now))
    await timed("savings", queries.savings(engine, cfg, days, now))
    await timed("breakeven", queries.traffic(engine, days, now))
    await timed("shadow", queries.shadow(engine, days, now))
    return out


async def bench(engine: AsyncEngine, cfg: Config, now: float, days: float) -> dict:
    return {"rows": await db.count_rows(engine), f"last {days:g} days": await time_reports(engine, cfg, now, days),
            "last 1 day": await time_reports(engine, cfg, now, 1)}


async def main_async(a: argparse.Namespace) -> dict:
    cfg = load(a.config)
    now = a.now or time.time()
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                               f"SQLite {sqlite3.sqlite_version}", "rows": a.rows, "days": a.days}
    if a.sqlite:
        path = Path(a.sqlite)
        engine = db.open_engine(f"sqlite+aiosqlite:///{path}")
        if not path.exists():
            await db.create_schema(engine)
            t = time.perf_counter()
            load_sqlite(path, _tuples(synthetic(a.rows, cfg, now, a.days)))
            result["sqlite_load_s"] = round(time.perf_counter() - t, 1)
        result["sqlite_bytes"] = path.stat().st_size
        result["sqlite"] = await bench(engine, cfg, now, a.days)
        await engine.dispose()
    if a.postgres:
        engine = db.open_engine(a.postgres, schema=a.pg_schema)
        async with engine.begin() as conn:
            fresh = not (await conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": a.pg_schema})).first()
            if fresh:
                await conn.execute(text(f'CREATE SCHEMA "{a.pg_schema}"'))
        if fresh:
            await db.create_schema(engine)
            t = time.perf_counter()
            await load_postgres(a.postgres, a.pg_schema, _tuples(synthetic(a.rows, cfg, now, a.days)))
            result["postgres_load_s"] = round(time.perf_counter() - t, 1)
        async with engine.connect() as conn:
            result["postgres_version"] = (await conn.execute(text("SHOW server_version"))).scalar_one()
            result["postgres_bytes"] = (await conn.execute(text(f"SELECT pg_total_relation_size('\"{a.pg_schema}\".{db.costs.name}')"))).scalar_one()
        result["postgres"] = await bench(engine, cfg, now, a.days)
        await engine.dispose()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m panelboard.loadgen.ledger_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=float, default=30.0, help="the rows span this many days, ending now")
    ap.add_argument("--now", type=float, help="end of the span, unix seconds (default: now); reuse it to re-time an existing file")
    ap.add_argument("--config", help="the price catalog (default: examples/mock.yaml)")
    ap.add_argument("--sqlite", help="SQLite file: generated if missing, then timed")
    ap.add_argument("--postgres", help="Postgres URL (postgresql+asyncpg://...): schema --pg-schema is generated if missing")
    ap.add_argument("--pg-schema", default="pb_ledger_bench")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args(argv)
    if not (a.sqlite or a.postgres):
        ap.error("say where: --sqlite PATH and/or --postgres URL")
    result = asyncio.run(main_async(a))
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
