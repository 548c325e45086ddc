"""The cost/quality curve as a standalone SVG (any browser or image viewer opens it; no
plotting library in the install): share sent to the strong model against accuracy."""

from __future__ import annotations

import math
from html import escape

from panelboard.evals import curve as cv
from panelboard.evals.quality import QualityReport
from panelboard.evals.replay import Report

W, H = 720, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 40, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]


def svg(rep: Report) -> str:
    lo = min(rep.all_cheap.accuracy, rep.all_strong.accuracy, *(p.accuracy for c in rep.curves for p in c.points)) - 0.02
    hi = max(rep.oracle.accuracy, rep.all_strong.accuracy) + 0.02

    def x(share: float) -> float:
        return LEFT + share * (W - LEFT - RIGHT)

    def y(acc: float) -> float:
        return TOP + (hi - acc) / (hi - lo) * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{LEFT}" y="22" font-size="14">{escape(f"Router cost/quality, {rep.split} split ({rep.prompts} prompts)")}</text>']
    for i in range(11):  # axes and grid
        s = i / 10
        out.append(f'<line x1="{x(s):.1f}" y1="{TOP}" x2="{x(s):.1f}" y2="{H - BOTTOM}" stroke="#eee"/>')
        out.append(f'<text x="{x(s):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{i * 10}%</text>')
    first = math.ceil(lo * 50)  # ticks at whole multiples of 2 points, inside [lo, hi]
    for t in range(first, math.floor(hi * 50) + 1):
        a = t / 50
        out.append(f'<line x1="{LEFT}" y1="{y(a):.1f}" x2="{W - RIGHT}" y2="{y(a):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(a) + 4:.1f}" text-anchor="end">{a:.0%}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 20}" text-anchor="middle">share of prompts sent to the strong model '
               f'({escape(rep.strong.model)})</text>')
    out.append(f'<text transform="translate(18 {(TOP + H - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">accuracy</text>')
    goal = rep.all_strong.accuracy - rep.goal_margin
    legend: list[tuple[str, str, str]] = []
    out.append(f'<line x1="{x(0)}" y1="{y(goal):.1f}" x2="{x(1)}" y2="{y(goal):.1f}" stroke="#999" stroke-dasharray="2 3"/>')
    legend.append(("#999", "2 3", f"all-strong - {rep.goal_margin * 100:g} pts"))
    out.append(f'<line x1="{x(0)}" y1="{y(rep.all_cheap.accuracy):.1f}" x2="{x(1)}" y2="{y(rep.all_strong.accuracy):.1f}" '
               f'stroke="#555" stroke-dasharray="6 4"/>')
    legend.append(("#555", "6 4", "random (expected)"))
    for c, colour in zip(rep.curves, COLOURS):
        pts = _thin(c.points)
        path = " ".join(f"{x(p.share):.1f},{y(p.accuracy):.1f}" for p in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        legend.append((colour, "", c.name))
        if c.operating is not None:
            out.append(f'<circle cx="{x(c.operating.share):.1f}" cy="{y(c.operating.accuracy):.1f}" r="4" fill="{colour}"/>')
    marks = [(rep.all_cheap, "all-cheap"), (rep.all_strong, "all-strong"), (rep.oracle, "oracle"), (rep.rules.point, "rules (default)")]
    for p, name in marks:
        below = p.share < 0.05  # all-cheap sits in the corner: its label goes under the point
        out.append(f'<rect x="{x(p.share) - 4:.1f}" y="{y(p.accuracy) - 4:.1f}" width="8" height="8" fill="black"/>')
        out.append(f'<text x="{x(p.share) + 7:.1f}" y="{y(p.accuracy) + (16 if below else -6):.1f}">{escape(name)} {p.accuracy:.1%}</text>')
    for i, (colour, dash, name) in enumerate(legend):
        ly = TOP + 10 + i * 20
        out.append(f'<line x1="{W - RIGHT + 12}" y1="{ly}" x2="{W - RIGHT + 36}" y2="{ly}" stroke="{colour}" stroke-width="2"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        out.append(f'<text x="{W - RIGHT + 42}" y="{ly + 4}">{escape(name[:24])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _thin(points: list[cv.Point], most: int = 400) -> list[cv.Point]:
    """At most `most` corners: a chart has no room for more, the JSON keeps them all."""
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


def quality_svg(rep: QualityReport) -> str:
    """Agreement per intent and tier pair, with its 95% interval, as horizontal bars."""
    bar, gap, label_w, plot_w = 22, 10, 300, 360
    h = TOP + len(rep.rows) * (bar + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 80}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="22" font-size="14">Shadow agreement with the live tier, last {rep.days:g} days</text>']
    for i, row in enumerate(rep.rows):
        y0 = TOP + i * (bar + gap)
        w = row.agreement * plot_w
        lo, hi = max(0.0, row.agreement - row.margin_95), min(1.0, row.agreement + row.margin_95)
        out.append(f'<text x="{label_w - 8}" y="{y0 + bar * 0.7:.1f}" text-anchor="end">'
                   f'{escape(f"{row.intent}: {row.shadow_tier} vs {row.live_tier} ({row.jobs})")}</text>')
        out.append(f'<rect x="{label_w}" y="{y0}" width="{w:.1f}" height="{bar}" fill="{COLOURS[0]}"/>')
        out.append(f'<line x1="{label_w + lo * plot_w:.1f}" y1="{y0 + bar / 2}" x2="{label_w + hi * plot_w:.1f}" y2="{y0 + bar / 2}" '
                   f'stroke="black"/>')
        out.append(f'<text x="{label_w + plot_w + 6}" y="{y0 + bar * 0.7:.1f}">{row.agreement:.1%}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
