"""`panelboard demo`: a realistic mix through the embedded stack, and what routing saved."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from panelboard.schemas.pricing import call_cost
from panelboard.clients import Client
from panelboard.loadgen.mix import sample
from panelboard.config import load
from panelboard.progress import Progress
from panelboard.stack import Stack
from panelboard.schemas.job import Completed, Failed


async def drive(url: str, n: int, concurrency: int, cfg_path: str | None) -> dict:
    cfg = load(cfg_path)
    frontier = cfg.models[cfg.tiers["frontier"].fallbacks[0].model] if "frontier" in cfg.tiers else None
    jobs = sample(n)
    by_tier: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "cost_usd": 0.0})
    totals = {"submitted": 0, "completed": 0, "failed": 0, "cost_usd": 0.0, "all_frontier_cost_usd": 0.0}
    errors: dict[str, int] = defaultdict(int)
    progress = Progress(n, "jobs")
    sem = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async with Client(url) as c:
        async def one(intent, req) -> None:
            async with sem:
                h = await c.submit(req, intent=intent, feature="demo")
                totals["submitted"] += 1
                r = await h.result(timeout=300)
            if isinstance(r, Completed):
                totals["completed"] += 1
                totals["cost_usd"] += r.cost_usd
                by_tier[r.tier]["jobs"] += 1
                by_tier[r.tier]["cost_usd"] += r.cost_usd
                if frontier is not None:
                    u = r.response.usage
                    totals["all_frontier_cost_usd"] += call_cost(frontier, u.prompt_tokens, u.completion_tokens)
            else:
                assert isinstance(r, Failed)
                totals["failed"] += 1
                errors[r.error.kind] += 1
            progress.advance()

        await asyncio.gather(*(one(i, r) for i, r in jobs))
    progress.close()
    elapsed = time.perf_counter() - started
    return {
        **totals,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(n / elapsed, 1),
        "by_tier": {k: {"jobs": int(v["jobs"]), "cost_usd": round(v["cost_usd"], 6)} for k, v in sorted(by_tier.items())},
        "errors": dict(errors),
        "cost_usd": round(totals["cost_usd"], 6),
        "all_frontier_cost_usd": round(totals["all_frontier_cost_usd"], 6),
        "frontier_model": frontier.model if frontier else None,
    }


async def http_probe(url: str) -> dict:
    """One request through the HTTP ingress, as an OpenAI app would send it."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/chat/completions", json={"model": "extraction", "max_tokens": 16,
                                                                 "messages": [{"role": "user", "content": "Extract the date: due 2026-12-01"}]}) as r:
            body = await r.json()
            return {"url": url, "status": r.status, "tier": r.headers.get("x-pb-tier"), "model": body.get("model")}


def render(s: dict) -> str:
    lines = [
        f"jobs: {s['submitted']} submitted, {s['completed']} completed, {s['failed']} failed in {s['elapsed_s']}s ({s['jobs_per_s']} jobs/s)",
        "",
        f"{'tier':<12}{'jobs':>8}{'cost USD':>14}",
    ]
    for tier, v in s["by_tier"].items():
        lines.append(f"{tier:<12}{v['jobs']:>8}{v['cost_usd']:>14.6f}")
    lines.append(f"{'total':<12}{s['completed']:>8}{s['cost_usd']:>14.6f}")
    lines.append("")
    saved = s["all_frontier_cost_usd"] - s["cost_usd"]
    pct = 100 * saved / s["all_frontier_cost_usd"] if s["all_frontier_cost_usd"] else 0.0
    lines.append(f"all on the frontier tier ({s['frontier_model']}): ${s['all_frontier_cost_usd']:.6f}")
    lines.append(f"routing by intent saved ${saved:.6f} ({pct:.1f}%) on the same token counts")
    if s["errors"]:
        lines.append(f"errors: {s['errors']}")
    if s.get("http"):
        h = s["http"]
        lines.append(f"HTTP ingress {h['url']}: POST /v1/chat/completions -> {h['status']} (tier {h['tier']}, model {h['model']})")
    return "\n".join(lines)


def run_demo(jobs: int, concurrency: int, config: str | None, nats_url: str | None, latency_ms: float, as_json: bool) -> int:
    import json

    with tempfile.TemporaryDirectory(prefix="panelboard-demo-") as tmp:
        stack = Stack(Path(tmp), config=config, nats_url=nats_url, mock_args=["--latency-ms", str(latency_ms), "--jitter-ms", str(latency_ms / 2)])
        print(f"starting the embedded stack in {tmp} ...", file=sys.stderr)
        with stack:
            stack.start(ingress=True)
            print(f"HTTP ingress (OpenAI/Anthropic compatible) at {stack.ingress_url}", file=sys.stderr)
            summary = asyncio.run(drive(stack.nats_url, jobs, concurrency, config))
            summary["http"] = asyncio.run(http_probe(stack.ingress_url or ""))
    print(json.dumps(summary) if as_json else render(summary))
    return 0 if summary["failed"] == 0 else 1
