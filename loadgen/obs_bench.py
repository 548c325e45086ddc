"""What the observability hooks cost per job on the hot path, in one run: the metric calls a
pool makes per provider call and the tracing hooks with tracing off, against an empty loop.

    python -m panelboard.loadgen.obs_bench [--n 200000]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Counter, Histogram

from panelboard.transport import meters, tracing
from panelboard.workers.decide import Forward
from panelboard.workers.outcome import Ok, ServerError


def _per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    n = ap.parse_args(argv).n
    ok = Ok(response=None, latency_ms=120.0)  # type: ignore[arg-type]  # the meters read its type and latency only
    err = ServerError(status=503, latency_ms=80.0, message="x")
    cost = SimpleNamespace(provider="novita", model="novita/llama", tier="cheap-fast", team="default", cost_usd=1e-5,
                           prompt_tokens=120, completion_tokens=40)
    d = SimpleNamespace(route=SimpleNamespace(chain=[SimpleNamespace(provider="novita"), SimpleNamespace(provider="deepinfra")]))
    fwd = Forward(hop=1)
    msg = SimpleNamespace(headers={"Nats-Msg-Id": "x"}, subject="pb.dispatch.novita")
    now = time.time()

    def empty() -> None:
        pass

    def metrics_ok() -> None:  # a pool's calls for one answered job
        meters.called("novita", "novita/llama", ok, now, now)
        meters.decided(d, None, ok, cost)

    def metrics_fallback() -> None:
        meters.called("novita", "novita/llama", err, now, now)
        meters.decided(d, fwd, err, cost)

    def tracing_off() -> None:  # every tracing hook of one job's hop, tracing not configured
        with tracing.hop(msg, "novita"):
            tracing.called("novita", "novita/llama", ok)
            tracing.inject({})
            tracing.mark("result")

    # The same updates through prometheus_client's own instruments, for the ratio.
    reg = CollectorRegistry()
    c_calls = Counter("c_calls", "", ["provider", "model", "outcome"], registry=reg)
    c_spend = Counter("c_spend", "", ["provider", "tier", "team"], registry=reg)
    c_tokens = Counter("c_tokens", "", ["provider", "team", "kind"], registry=reg)
    h = [Histogram(f"h{i}", "", ["provider", "model"], buckets=meters.SECONDS, registry=reg) for i in range(3)]

    def client_ok() -> None:
        c_calls.labels("novita", "novita/llama", "ok").inc()
        for x in h:
            x.labels("novita", "novita/llama").observe(0.12)
        c_spend.labels("novita", "cheap-fast", "default").inc(1e-5)
        c_tokens.labels("novita", "default", "prompt").inc(120)
        c_tokens.labels("novita", "default", "completion").inc(40)

    base = _per_call_us(empty, n)
    for name, fn in (("prometheus_client instruments", client_ok), ("metrics, answered call", metrics_ok),
                     ("metrics, call that falls back", metrics_fallback),
                     ("tracing hooks, tracing off", tracing_off)):
        print(f"{name:32s} {_per_call_us(fn, n) - base:7.2f} us per job (empty loop {base:.3f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
