"""Rounds of c=64 jobs on a fresh stack each, governance on or off, with every process's CPU a
job: for A/B comparisons inside one run (alternate the trees between rounds). Optionally
samples one process with py-spy while the measured round runs.

    python -m panelboard.loadgen.gov_rounds --jobs 6000 [--off] [--spy broker --py-spy PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys

from panelboard.loadgen.bench import CpuMeter, Scenario, open_stack, run_panelboard


def one_round(jobs: int, governance: bool, spy: str | None, py_spy: str, spy_out: str) -> dict[str, object]:
    with open_stack(0.0, governance=governance) as (stack, key, _):
        assert stack.nats_url is not None
        pids = {"nats-server": stack.nats.proc.pid, **{n: p.pid for n, p in stack.procs.items()}}
        if spy is not None and spy not in pids:
            raise SystemExit(f"--spy {spy!r}: no such process; pick one of {', '.join(sorted(pids))}")

        async def go() -> dict[str, object]:
            meter = CpuMeter(pids)
            warm = Scenario(name="warm", concurrency=64, latency_ms=0.0, jobs=1000, warmup=200, governance=governance)
            await run_panelboard(stack.nats_url, warm, meter, 120, key=key)
            sampler = None
            if spy is not None:
                sampler = subprocess.Popen([py_spy, "record", "-p", str(pids[spy]), "-o", spy_out, "-f", "raw", "-r", "200", "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(1)  # let it attach before the round starts
            try:
                s = Scenario(name="round", concurrency=64, latency_ms=0.0, jobs=jobs, warmup=500, governance=governance)
                return await run_panelboard(stack.nats_url, s, meter, 300, key=key)
            finally:
                if sampler is not None:
                    sampler.send_signal(2)
                    sampler.wait(30)

        r = asyncio.run(go())
        return {k: r[k] for k in ("jobs_per_s", "p50_ms", "cpu_ms_per_job", "cpu_ms_per_job_total", "errors") if k in r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.gov_rounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=6000, help="jobs in the measured round (default %(default)s)")
    p.add_argument("--off", action="store_true", help="governance off (default: on, a key with a budget and an RPM limit)")
    p.add_argument("--spy", metavar="PROC", help="sample this process with py-spy during the round: broker, worker-0, ledger, nats-server")
    p.add_argument("--py-spy", default="py-spy", help="the py-spy executable (default %(default)s)")
    p.add_argument("--spy-out", default="spy.txt", help="where py-spy writes its raw stacks (default %(default)s)")
    a = p.parse_args(argv)
    print(json.dumps(one_round(a.jobs, not a.off, a.spy, a.py_spy, a.spy_out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
