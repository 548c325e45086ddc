"""How reports are shown: an aligned table on a terminal, CSV, JSON, and an HTML page with an
inline SVG bar chart (opens in any browser; no plotting library in the gateway's install)."""

from __future__ import annotations

import csv
import html
import io
from typing import Any, Literal

import msgspec

from panelboard import reports as r

Kind = Literal["str", "int", "usd", "pct", "ms", "rate", "float"]


class Table(msgspec.Struct):
    title: str
    columns: list[tuple[str, Kind]]
    rows: list[list[Any]]
    notes: list[str]
    empty: str | None = None


def usage_table(rep: r.UsageReport) -> Table:
    cols: list[tuple[str, Kind]] = [(rep.by, "str"), ("requests", "int"), ("prompt tok", "int"), ("completion tok", "int"),
                                    ("cost USD", "usd"), ("p50 ms", "ms"), ("p95 ms", "ms"), ("failed", "rate"),
                                    ("cached tok", "int"), ("reasoning tok", "int"), ("ttft p50 ms", "ms"), ("ttft p95 ms", "ms")]
    rows = [[u.key, u.requests, u.prompt_tokens, u.completion_tokens, u.cost_usd, u.p50_ms, u.p95_ms, u.failure_rate,
             u.cached_tokens, u.reasoning_tokens, u.ttft_p50_ms, u.ttft_p95_ms]
            for u in rep.rows + ([rep.total] if rep.total else [])]
    return Table(f"usage by {rep.by}, last {rep.days:g} days", cols, rows, rep.notes, rep.empty)


def savings_table(rep: r.SavingsReport) -> Table:
    cols: list[tuple[str, Kind]] = [("intent", "str"), ("tier", "str"), ("requests", "int"), ("tokens", "int"), ("actual USD", "usd"),
                                    ("all-frontier USD", "usd"), ("all-cheapest USD", "usd"), ("saved USD", "usd"), ("saved", "pct")]
    rows = [[s.intent, s.tiers, s.requests, s.tokens, s.actual_usd, s.all_frontier_usd, s.all_cheapest_usd,
             s.saved_vs_frontier_usd, s.saved_vs_frontier_pct] for s in rep.rows + ([rep.total] if rep.total else [])]
    notes = list(rep.notes)
    if rep.below_frontier_share is not None:
        notes.insert(0, f"{100 * rep.below_frontier_share:.1f}% of requests ran below the frontier tier")
    for ln in rep.lanes:
        notes.append(f"lane {ln.lane}: {ln.requests} calls, ${ln.actual_usd:.6f} against ${ln.list_usd:.6f} at list price: "
                     f"saved ${ln.saved_usd:.6f}" + (f" ({ln.saved_pct:.1f}%)" if ln.saved_pct is not None else ""))
    return Table(f"savings by intent, last {rep.days:g} days", cols, rows, notes, rep.empty)


def breakeven_table(b: r.Breakeven) -> Table:
    rows: list[list[Any]] = [
        ["dedicated endpoint", f"${b.hourly_usd:,.2f}/hr = ${b.dedicated_monthly_usd:,.2f}/month"],
        ["serverless price", f"${b.per_million_usd:,.4f}/M tokens ({b.price_source})"],
        ["break-even volume", f"{b.breakeven_tokens_per_month / 1e9:,.2f} billion tokens/month"],
        ["break-even rate", f"{b.breakeven_tokens_per_s:,.0f} tokens/s, around the clock"],
    ]
    if b.traffic_tokens_per_s is not None:
        rows += [
            ["your traffic", f"{b.traffic_tokens:,} tokens over {b.traffic_days:g} days = {b.traffic_tokens_per_s:,.1f} tokens/s"],
            ["at the serverless price", f"${b.traffic_monthly_serverless_usd:,.2f}/month ({100 * (b.share_of_breakeven or 0):.2f}% of break-even)"],
        ]
    if b.utilisation is not None:
        rows.append(["utilisation", f"{100 * b.utilisation:.2f}% of {b.capacity_tokens_per_s:,.0f} tokens/s"])
    rows.append(["verdict", b.verdict])
    return Table("dedicated vs serverless break-even", [("", "str"), ("", "str")], rows, b.notes)


def shadow_table(rep: r.ShadowReport) -> Table:
    cols: list[tuple[str, Kind]] = [("live model", "str"), ("shadow model", "str"), ("jobs", "int"), ("live USD", "usd"),
                                    ("shadow USD", "usd"), ("cost change", "pct"), ("live p50", "ms"), ("live p95", "ms"),
                                    ("shadow p50", "ms"), ("shadow p95", "ms"), ("shadow failed", "rate")]
    rows = [[s.live_model, s.shadow_model, s.jobs, s.live_usd, s.shadow_usd, s.cost_change_pct, s.live_p50_ms, s.live_p95_ms,
             s.shadow_p50_ms, s.shadow_p95_ms, s.shadow_failure_rate] for s in rep.rows]
    return Table(f"shadow vs live, last {rep.days:g} days", cols, rows, rep.notes, rep.empty)


def _cell(v: Any, kind: Kind) -> str:
    if v is None:
        return "-"
    match kind:
        case "int":
            return f"{v:,}"
        case "usd":
            return f"{v:,.6f}"
        case "pct":
            return f"{v:.1f}%"
        case "rate":
            return f"{100 * v:.1f}%"
        case "ms":
            return str(v)
    return str(v)


def text(t: Table) -> str:
    if t.empty:
        return f"{t.title}: {t.empty}"
    cells = [[_cell(v, kind) for v, (_, kind) in zip(row, t.columns)] for row in t.rows]
    heads = [name for name, _ in t.columns]
    widths = [max(len(x) for x in col) for col in zip(heads, *cells)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if kind == "str" else v.rjust(w) for v, w, (_, kind) in zip(values, widths, t.columns)).rstrip()

    out = [t.title, ""]
    if any(heads):
        out.append(line(heads))
    out += [line(c) for c in cells]
    if t.notes:
        out += [""] + [f"note: {n}" for n in t.notes]
    return "\n".join(out)


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([name or f"col{i}" for i, (name, _) in enumerate(t.columns)])
    w.writerows(t.rows)
    return buf.getvalue()


def to_json(report: msgspec.Struct) -> str:
    return msgspec.json.encode(report).decode()


# -- chart -------------------------------------------------------------------------------------
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0")


def chart_series(report: msgspec.Struct) -> tuple[str, list[str], dict[str, list[float]]]:
    """What a picture of each report shows: (unit, categories, {series: values})."""
    match report:
        case r.UsageReport(rows=rows):
            return "USD", [u.key for u in rows], {"cost": [u.cost_usd for u in rows]}
        case r.SavingsReport(rows=rows):
            return "USD", [s.intent for s in rows], {
                "actual": [s.actual_usd for s in rows], "all on the frontier tier": [s.all_frontier_usd for s in rows],
                "all on the cheapest tier": [s.all_cheapest_usd for s in rows]}
        case r.ShadowReport(rows=rows):
            cats = [f"{s.live_model} → {s.shadow_model}" for s in rows]
            return "USD", cats, {"live": [s.live_usd for s in rows], "shadow": [s.shadow_usd for s in rows]}
        case r.Breakeven() as b:
            return "tokens/s", ["break-even", "your traffic"], {"tokens/s": [b.breakeven_tokens_per_s, b.traffic_tokens_per_s or 0.0]}
    raise TypeError(f"no chart for {type(report).__name__}")


def chart_html(title: str, report: msgspec.Struct) -> str:
    unit, cats, series = chart_series(report)
    bar_h, gap, label_w, plot_w = 16, 10, 260, 560
    top = max((v for vals in series.values() for v in vals), default=0.0) or 1.0
    group_h = bar_h * len(series) + gap
    height = 40 + group_h * len(cats) + 20 * len(series)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 140}" height="{height}" font-family="sans-serif" font-size="12">']
    for i, cat in enumerate(cats):
        y0 = 20 + i * group_h
        parts.append(f'<text x="{label_w - 8}" y="{y0 + group_h / 2}" text-anchor="end">{html.escape(cat)}</text>')
        for j, (name, vals) in enumerate(series.items()):
            w = plot_w * vals[i] / top
            y = y0 + j * bar_h
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{PALETTE[j % len(PALETTE)]}">'
                         f'<title>{html.escape(name)}: {vals[i]:,.6g} {unit}</title></rect>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 4}">{vals[i]:,.6g}</text>')
    legend_y = 30 + group_h * len(cats)
    for j, name in enumerate(series):
        y = legend_y + 20 * j
        parts.append(f'<rect x="{label_w}" y="{y}" width="12" height="12" fill="{PALETTE[j % len(PALETTE)]}"/>')
        parts.append(f'<text x="{label_w + 18}" y="{y + 10}">{html.escape(name)} ({unit})</text>')
    parts.append("</svg>")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body><h2 style=\"font-family:sans-serif\">{html.escape(title)}</h2>\n{''.join(parts)}\n</body></html>\n")
