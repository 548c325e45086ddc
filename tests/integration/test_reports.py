"""Cost reports: the pure computations from tables, the SQL on SQLite and Postgres (same
records, same reports), and `panelboard report ...` as a user runs it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time

import msgspec
import pytest

from panelboard.loadgen.ledger_bench import synthetic
from panelboard import queries, reports
from panelboard.transport import db
from panelboard.cli import main
from panelboard.config import load
from panelboard.reports import NOT_OK, TokenGroup, Traffic, UsageGroup
from panelboard.schemas.job import CostRecord
from tests.support.ledger_dbs import postgres_db, sqlite_db  # noqa: F401 - fixtures

CFG = load()  # examples/mock.yaml: the article's catalog
NOW = 1_780_000_000.0
NO_TRAFFIC = Traffic(0, 0, 0, 0, None)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# -- breakeven ---------------------------------------------------------------------------------
def test_breakeven_reproduces_the_articles_arithmetic():
    # Given a dedicated endpoint at $6.49/hr and serverless at Fireworks' $0.90/M
    b = reports.breakeven(6.49, 0.90, "--per-million", 30, NO_TRAFFIC, NOW)
    # Then: about $4,740 a month, about 5.2 billion tokens, about 2,000 tokens/s
    assert round(b.dedicated_monthly_usd, -1) == 4740
    assert 5.2e9 <= b.breakeven_tokens_per_month < 5.3e9
    assert round(b.breakeven_tokens_per_s, -2) == 2000
    assert b.traffic_tokens_per_s is None and "no traffic" in b.verdict


def test_breakeven_command_with_the_articles_figures_on_an_empty_ledger(capsys, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"
    rc, out, _ = cli(capsys, "report", "breakeven", "--hourly", "6.49", "--per-million", "0.90", "--database-url", url)
    assert rc == 0
    assert "$4,737.70/month" in out and "5.26 billion tokens/month" in out and "2,003 tokens/s" in out
    assert "no traffic in the ledger" in out
    # Fireworks' Llama 3.3 70B is $0.90 flat in the catalog: the same figures by model name.
    rc, out, _ = cli(capsys, "report", "breakeven", "--hourly", "6.49", "--model", "fireworks/llama-3.3-70b", "--database-url", url, "--json")
    b = json.loads(out)
    assert rc == 0 and b["per_million_usd"] == pytest.approx(0.90) and b["breakeven_tokens_per_s"] == pytest.approx(2003.1, abs=0.1)
    assert not (tmp_path / "none.db").exists(), "a report must not create a ledger"


@pytest.mark.parametrize("tps, capacity, verdict, note", [
    (1000.0, None, "stay serverless", "pass --capacity-tps"),
    (1000.0, 2500.0, "stay serverless", "under 50%"),
    (3000.0, 4000.0, "dedicated is cheaper", None),
    (1000.0, 1500.0, "stay serverless", "can never reach"),
])
def test_breakeven_places_the_real_traffic(tps, capacity, verdict, note):
    # Given 30 days of traffic at a steady rate
    tokens = int(tps * 30 * 86_400)
    traffic = Traffic(requests=10, prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, cost_nano_usd=0, first_ts=NOW - 40 * 86_400)
    b = reports.breakeven(6.49, 0.90, "--per-million", 30, traffic, NOW, capacity)
    assert b.traffic_days == 30 and b.traffic_tokens_per_s == pytest.approx(tps, rel=1e-6)
    assert b.share_of_breakeven == pytest.approx(tps / 2003.08, rel=1e-3)
    assert b.verdict.startswith(verdict)
    if capacity:
        assert b.utilisation == pytest.approx(tps / capacity)
    if note:
        assert any(note in n for n in b.notes), b.notes


def test_serverless_price_defaults_to_what_the_traffic_paid():
    traffic = Traffic(requests=2, prompt_tokens=600_000, completion_tokens=400_000, cost_nano_usd=2 * reports.NANO, first_ts=NOW)
    assert reports.serverless_price(CFG, traffic, None, None) == (pytest.approx(2.0), "what your traffic paid on average")
    price, _ = reports.serverless_price(CFG, traffic, None, "together/llama-3.3-70b")
    assert price == pytest.approx(1.04)  # $1.04 each way, whatever the mix
    price, _ = reports.serverless_price(CFG, traffic, None, "anthropic/claude-fable-5")
    assert price == pytest.approx(0.6 * 10 + 0.4 * 50)  # blended on the traffic's 60/40 mix
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        reports.serverless_price(CFG, traffic, None, "nope")
    with pytest.raises(ValueError, match="pass --per-million"):
        reports.serverless_price(CFG, NO_TRAFFIC, None, None)


# -- usage -------------------------------------------------------------------------------------
@pytest.mark.parametrize("hist, q, expected", [
    ({}, 0.5, None),
    ({100: 1}, 0.95, 100),
    ({100: 50, 200: 50}, 0.5, 100),
    ({100: 50, 200: 50}, 0.51, 200),
    ({10: 94, 900: 5, 5000: 1}, 0.95, 900),
    ({10: 95, 900: 4, 5000: 1}, 0.95, 10),
])
def test_percentile_is_nearest_rank_over_the_histogram(hist, q, expected):
    assert reports.percentile(hist, q) == expected


def test_usage_rows_total_latency_and_failure_rate():
    groups = [
        UsageGroup("extraction", 120, 90, 9000, 900, 1_000),
        UsageGroup("extraction", 450, 10, 1000, 100, 100),
        UsageGroup("extraction", NOT_OK, 5, 0, 0, 0),
        UsageGroup("reasoning", 3000, 19, 19000, 38000, 2_400_000),
        UsageGroup("reasoning", 120, 1, 1000, 2000, 100_000),  # the total merges buckets across keys
        UsageGroup(None, 80, 1, 10, 1, 1),
    ]
    rep = reports.usage("intent", 30, groups, shadow_calls=2, shadow_nano_usd=7_000)
    assert [r.key for r in rep.rows] == ["reasoning", "extraction", "(none)"]  # dearest first
    ext = rep.rows[1]
    assert (ext.requests, ext.prompt_tokens, ext.completion_tokens, ext.p50_ms, ext.p95_ms) == (105, 10000, 1000, 120, 450)
    assert ext.failure_rate == round(5 / 105, 4) and ext.cost_usd == pytest.approx(1.1e-6)
    assert rep.total is not None and rep.total.requests == 126 and rep.total.cost_usd == pytest.approx(0.002501101)
    assert (rep.total.p50_ms, rep.total.p95_ms) == (120, 3000)  # 91 of 121 timed calls at 120 ms
    assert any("2 shadow call(s)" in n for n in rep.notes)


def test_usage_by_day_is_chronological_with_dates():
    groups = [UsageGroup(20_500, 100, 1, 1, 1, 5), UsageGroup(20_499, 100, 1, 1, 1, 9)]
    assert [r.key for r in reports.usage("day", 30, groups).rows] == ["2026-02-15", "2026-02-16"]


# -- savings -----------------------------------------------------------------------------------
def test_savings_reprices_the_same_tokens_on_the_frontier_and_the_cheapest_tier():
    # Given 70% of requests on cheap-fast and 30% on the frontier tier (the article's split)
    groups = [
        TokenGroup("extraction", "cheap-fast", 70, 70_000, 7_000, round((70_000 * 0.13 + 7_000 * 0.39) * 1000)),
        TokenGroup("reasoning", "frontier", 30, 30_000, 30_000, round((30_000 * 10 + 30_000 * 50) * 1000)),
    ]
    rep = reports.savings(30, groups, reports.tier_prices(CFG))
    assert rep.frontier is not None and rep.cheapest is not None
    assert (rep.frontier.model, rep.cheapest.model) == ("anthropic/claude-fable-5", "novita/llama-3.3-70b")
    ext = next(r for r in rep.rows if r.intent == "extraction")
    assert ext.all_frontier_usd == pytest.approx((70_000 * 10 + 7_000 * 50) / 1e6)
    assert ext.saved_vs_frontier_pct == pytest.approx(100 * (1 - ext.actual_usd / ext.all_frontier_usd), abs=0.05)
    rea = next(r for r in rep.rows if r.intent == "reasoning")
    assert rea.saved_vs_frontier_usd == pytest.approx(0.0) and rea.all_cheapest_usd == pytest.approx((30_000 * 0.13 + 30_000 * 0.39) / 1e6)
    assert rep.below_frontier_share == 0.7


# -- the SQL, on both databases ----------------------------------------------------------------
def _records(n: int = 3000, end: float = NOW) -> list[CostRecord]:
    return list(synthetic(n, CFG, end_ts=end, days=10, seed=5))


async def _all_reports(engine, now: float) -> dict[str, object]:
    out: dict[str, object] = {f"usage-{by}": await queries.usage(engine, by, 7, now) for by in reports.DIMENSIONS}
    out["savings"] = await queries.savings(engine, CFG, 7, now)
    out["traffic"] = await queries.traffic(engine, 7, now)
    out["shadow"] = await queries.shadow(engine, 7, now)
    return out


async def test_sqlite_and_postgres_give_identical_reports(sqlite_db, postgres_db):
    # Given the same records in both ledgers (retries, shadow calls, ten days)
    records = _records()
    assert any(r.shadow for r in records) and any(r.outcome != "ok" for r in records)
    for engine in (sqlite_db, postgres_db):
        await db.insert_costs(engine, map(db.row, records))
    # When every report runs on each
    lite, pg = await _all_reports(sqlite_db, NOW), await _all_reports(postgres_db, NOW)
    # Then they agree to the last digit
    for name in lite:
        assert msgspec.json.encode(lite[name]) == msgspec.json.encode(pg[name]), name
    # and they add up to the records of the window
    window = [r for r in records if r.ts >= NOW - 7 * 86_400]
    live = [r for r in window if not r.shadow]
    usage = lite["usage-intent"]
    assert usage.total.requests == len(live)
    assert usage.total.cost_usd == pytest.approx(sum(round(r.cost_usd * 1e9) for r in live) / 1e9, abs=1e-9)
    assert usage.total.failure_rate == round(sum(r.outcome != "ok" for r in live) / len(live), 4)
    assert sum(r.jobs for r in lite["shadow"].rows) == sum(r.shadow for r in window)


async def test_shadow_report_sets_shadow_calls_beside_the_live_calls(sqlite_db):
    def rec(job: str, model: str, cost: float, latency: float, shadow: bool, outcome: str = "ok") -> CostRecord:
        return CostRecord(job_id=job, team="t", key_prefix=None, feature=None, intent="reasoning", tier="frontier", provider="x",
                          model=model, quantization=None, hop=0, attempt=0, prompt_tokens=10, completion_tokens=10, cost_usd=cost,
                          latency_ms=latency, queue_ms=0, outcome=outcome, ts=NOW - 60, shadow=shadow)

    # Given no shadow rows, the report says so
    await db.insert_costs(sqlite_db, [db.row(rec("a", "frontier-m", 0.01, 4000, False))])
    empty = await queries.shadow(sqlite_db, 30, NOW)
    assert empty.rows == [] and "no shadow rows" in (empty.empty or "")
    # Given two jobs mirrored to a cheaper model, one of whose shadow calls failed
    await db.insert_costs(sqlite_db, map(db.row, [
        rec("a", "cheap-m", 0.002, 900, True), rec("b", "frontier-m", 0.03, 5000, False), rec("b", "cheap-m", 0, 1200, True, "ServerError"),
    ]))
    rep = await queries.shadow(sqlite_db, 30, NOW)
    (row,) = rep.rows
    assert (row.live_model, row.shadow_model, row.jobs) == ("frontier-m", "cheap-m", 2)
    assert (row.live_usd, row.shadow_usd, row.cost_change_pct) == (0.04, 0.002, -95.0)
    assert (row.live_p50_ms, row.live_p95_ms, row.shadow_p50_ms, row.shadow_failure_rate) == (4000, 5000, 900, 0.5)


# -- the command -------------------------------------------------------------------------------
async def _fill(url: str, records: list[CostRecord]) -> None:
    engine = db.open_engine(url)
    await db.create_schema(engine)
    await db.insert_costs(engine, map(db.row, records))
    await engine.dispose()


@pytest.mark.parametrize("args, says", [
    (["usage"], "no cost records in the last 30 days"),
    (["usage", "--by", "day", "--days", "7"], "no cost records in the last 7 days"),
    (["savings"], "no cost records"),
    (["shadow"], "no shadow rows"),
    (["breakeven", "--hourly", "6.49", "--per-million", "0.9"], "no traffic in the ledger"),
])
@pytest.mark.parametrize("ledger", ["missing", "empty"])
def test_reports_on_an_empty_ledger_say_so(capsys, tmp_path, args, says, ledger):
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    if ledger == "empty":
        asyncio.run(_fill(url, []))
    rc, out, err = cli(capsys, "report", *args, "--database-url", url)
    assert rc == 0 and says in out, (out, err)
    rc, out, _ = cli(capsys, "report", *args, "--database-url", url, "--json")
    assert rc == 0 and says in out and json.loads(out)


def test_report_command_prints_table_csv_json_and_a_chart(capsys, tmp_path):
    # Given a ledger with the last ten days of traffic
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    asyncio.run(_fill(url, _records(600, end=time.time())))
    # Then a table on the terminal
    rc, out, _ = cli(capsys, "report", "usage", "--by", "provider", "--database-url", url)
    assert rc == 0 and out.startswith("usage by provider, last 30 days")
    assert "p95 ms" in out and "novita" in out and "\ntotal " in out
    # CSV with a header and one row per provider plus the total
    rc, out, _ = cli(capsys, "report", "usage", "--by", "team", "--csv", "--database-url", url)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and rows[-1]["team"] == "total" and int(rows[-1]["requests"]) == sum(int(r["requests"]) for r in rows[:-1])
    # JSON, and an HTML chart of actual vs all-frontier vs all-cheapest by intent
    chart = tmp_path / "savings.html"
    rc, out, err = cli(capsys, "report", "savings", "--json", "--chart", str(chart), "--database-url", url)
    rep = json.loads(out)
    assert rc == 0 and rep["total"]["actual_usd"] < rep["total"]["all_frontier_usd"] and rep["frontier"]["tier"] == "frontier"
    page = chart.read_text()
    assert "<svg" in page and "extraction" in page and "all on the frontier tier" in page and f"chart written to {chart}" in err


def test_report_errors_say_what_to_do(capsys, tmp_path):
    rc, _, err = cli(capsys, "report", "usage", "--database-url", "mysql+nodriver://x/y")
    assert rc == 2 and "use sqlite+aiosqlite:///" in err
    rc, _, err = cli(capsys, "report", "breakeven", "--hourly", "6.49", "--database-url", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert rc == 2 and "pass --per-million USD or --model NAME" in err


async def test_usage_reports_cached_and_reasoning_tokens_and_time_to_first_token(sqlite_db, postgres_db):
    for engine in (sqlite_db, postgres_db):
        await _ttft_case(engine)


async def _ttft_case(engine) -> None:
    def rec(job: str, ttft: float | None, cached: int, reasoning: int) -> CostRecord:
        return CostRecord(job_id=job, team="t", key_prefix=None, feature=None, intent="agent", tier="frontier", provider="x",
                          model="m", quantization=None, hop=0, attempt=0, prompt_tokens=100, completion_tokens=50, cost_usd=0.001,
                          latency_ms=900, queue_ms=0, outcome="ok", ts=NOW - 60, cached_tokens=cached, reasoning_tokens=reasoning,
                          ttft_ms=ttft)

    # Given three streamed calls (first chunks after 40, 60 and 2,345 ms) and one plain call
    await db.insert_costs(engine, map(db.row, [rec("a", 40.2, 64, 10), rec("b", 60, 0, 0), rec("c", 2345, 32, 5), rec("d", None, 0, 0)]))
    rep = await queries.usage(engine, "intent", 30, NOW)
    [row] = rep.rows
    # Then the tokens add up and the percentiles are over the streamed calls only
    assert (row.cached_tokens, row.reasoning_tokens, row.streamed) == (96, 15, 3)
    assert (row.ttft_p50_ms, row.ttft_p95_ms) == (60, 2340)
    assert "ttft" in " ".join(rep.notes)
