"""CPU cost per job of the routing decision: the rule-based classifier (default), the
logistic difficulty router and the knn one, over the same prompts (MMLU, held-out split).

    python -m panelboard.loadgen.router_bench --data ../shared/data/routellm-mmlu \\
        --logistic router.json --knn router.npz [--jobs 1000]

CPU time (time.process_time) per call, median and p95 over --jobs prompts, in one run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

from panelboard.broker import classify, difficulty
from panelboard.config import load as load_config
from panelboard.evals import mmlu
from panelboard.evals.replay import request_of
from panelboard.schemas.chat import ChatRequest


def measure(fn: Callable[[ChatRequest], object], requests: list[ChatRequest]) -> dict[str, float]:
    for r in requests[:20]:  # warm caches
        fn(r)
    cpu: list[float] = []
    for r in requests:
        t = time.process_time()
        fn(r)
        cpu.append((time.process_time() - t) * 1000)
    cpu.sort()
    return {"median_ms": round(cpu[len(cpu) // 2], 4), "p95_ms": round(cpu[int(len(cpu) * 0.95)], 4),
            "mean_ms": round(sum(cpu) / len(cpu), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--logistic")
    ap.add_argument("--knn")
    ap.add_argument("--jobs", type=int, default=1000)
    a = ap.parse_args()
    items = mmlu.split(mmlu.load(a.data), "held-out")[: a.jobs]
    requests = [request_of(it.prompt) for it in items]
    cfg = load_config(None)
    labels = list(cfg.intents)
    out = {"prompts": len(requests), "rules": measure(lambda r: classify.classify(r, labels), requests)}
    if a.logistic:
        lg = difficulty.load(a.logistic, "logistic")
        out["logistic"] = measure(lg.score, requests)
    if a.knn:
        kn = difficulty.load(a.knn, "knn")
        out["knn"] = measure(kn.score, requests)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
