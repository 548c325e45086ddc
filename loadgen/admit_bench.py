"""What one admission costs the broker, by path and batch size: the same batches of a governed
team's jobs (a key with a budget and an RPM limit) through SQLAlchemy on aiosqlite (the path
Postgres takes, and SQLite took before) and through plain sqlite3 (the SQLite path).

    python -m panelboard.loadgen.admit_bench

CPU is this process's (getrusage, both threads), per admitted job; a fresh SQLite file.
"""

import asyncio
import resource
import tempfile
import time

from panelboard.broker import budgets
from panelboard.broker.governance_store import Store, AdmitRequest
from panelboard.broker.governance_admit import Admission
from panelboard.schemas.job import Hop, Route

ROUTE = Route(tier="fast", chain=(Hop("oa/small", "oa"),))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime


async def main() -> None:
    d = tempfile.mkdtemp()
    s = Store.open(f"sqlite+aiosqlite:///{d}/g.db"); await s.create()
    await s.set_team("t", budget_nano=10**18, period="monthly", rpm=10**8)
    key, _ = await s.create_key("t", rpm=10**8, budget_nano=10**18, period="monthly")
    e = budgets.Estimate(cost_nano=1000, tokens=100, prompt_tokens=10, output_tokens=90, model="oa/small")
    i = 0
    for size in (1, 8, 32):
        for name, fn in (("sqlalchemy", lambda b, now: Admission.admit_many(s, b, now)), ("sqlite3", s.admit_many)):
            n = 0; t0 = cpu(); w0 = time.perf_counter()
            for _ in range(max(200 // size, 10)):
                b = [AdmitRequest(f"j{(i := i + 1)}", 0, key, ROUTE, e, redelivered=False, team="t") for _ in range(size)]
                outs = await fn(b, time.time()); n += len(b)
            print(f"batch {size:3d} {name:10s}: {(cpu() - t0) * 1e3 / n:.3f} ms CPU/job, {(time.perf_counter() - w0) * 1e3 / n:.3f} ms wall/job")
    await s.close()
if __name__ == "__main__":
    asyncio.run(main())
