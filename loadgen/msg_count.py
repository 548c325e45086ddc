"""Messages a job costs nats-server, by subject family: one c=64 round on a fresh stack, counted
by a `>` subscriber (which sees every publish, pull request, delivery and ack). Counts are
deterministic where timings on this box are not, so they show what a change saves.

    python -m panelboard.loadgen.msg_count [--off] [--jobs 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys

import nats
from nats.aio.msg import Msg

from panelboard.loadgen.bench import CpuMeter, Scenario, open_stack, run_panelboard


def family(subject: str) -> str:
    t = subject.split(".")
    if t[0] == "_INBOX":
        return "_INBOX"
    return ".".join(t[:3]) if t[0] == "$JS" else ".".join(t[:2])


def count(jobs: int, governance: bool) -> list[tuple[str, float, float]]:
    with open_stack(0.0, governance=governance) as (stack, key, _):
        assert stack.nats_url is not None and stack.nats is not None and stack.nats.proc is not None
        url = stack.nats_url
        pids = {"nats-server": stack.nats.proc.pid, **{n: p.pid for n, p in stack.procs.items()}}

        async def go() -> list[tuple[str, float, float]]:
            meter = CpuMeter(pids)
            await run_panelboard(url, Scenario("warm", 64, 0.0, 1000, 200, governance=governance), meter, 120, key=key)
            nc = await nats.connect(url)
            n: collections.Counter[str] = collections.Counter()
            size: collections.Counter[str] = collections.Counter()

            async def seen(m: Msg) -> None:
                f = family(m.subject)
                n[f] += 1
                size[f] += len(m.data)

            await nc.subscribe(">", cb=seen, pending_msgs_limit=-1, pending_bytes_limit=-1)
            await nc.flush()
            await run_panelboard(url, Scenario("round", 64, 0.0, jobs, 0, governance=governance), meter, 300, key=key)
            await nc.flush()
            await nc.close()
            return [(f, c / jobs, size[f] / jobs) for f, c in n.most_common()]

        return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m panelboard.loadgen.msg_count", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3000, help="jobs in the counted round (default %(default)s)")
    p.add_argument("--off", action="store_true", help="governance off (default: on, a key with a budget and an RPM limit)")
    a = p.parse_args(argv)
    rows = count(a.jobs, not a.off)
    for f, per_job, b in rows:
        print(f"{f:32s} {per_job:7.2f} a job {b:8.0f} B a job")
    print(f"{'total':32s} {sum(r[1] for r in rows):7.2f} a job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
