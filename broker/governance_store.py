"""Keys, budgets, rate windows and reservations in SQL: the thin I/O around the pure decisions
of broker/keys.py, budgets.py and ratelimit.py, in three rooms along their seams:

    governance_tables.py   the tables, row readers, the engine (StoreBase)
    governance_admit.py    admission: a batch of one team's jobs in one transaction (hot path)
    governance_sqlite.py   the same admission on SQLite through plain sqlite3 (SQLite files)
    governance_settle.py   settlement of cost records and ended jobs, the sweep (hot path)
    governance_admin.py    keys and teams for the CLI

`Store` is all of them on one engine; callers import it (and the names below) from here.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from panelboard import db
from panelboard.broker.governance_admin import Admin
from panelboard.broker.governance_admit import Admission, AdmitOutcome, AdmitRequest, Admitted, Throttled
from panelboard.broker.governance_settle import Settlement, SettleStats
from panelboard.broker.governance_sqlite import SqliteAdmission
from panelboard.broker.governance_tables import (
    SCHEMA_ENV,
    admissions,
    metadata,
    rate_buckets,
    settled_calls,
    teams,
    virtual_keys,
)

__all__ = [
    "SCHEMA_ENV", "AdmitOutcome", "AdmitRequest", "Admitted", "SettleStats", "Store", "Throttled",
    "admissions", "metadata", "rate_buckets", "settled_calls", "teams", "virtual_keys",
]


class Store(Admission, Settlement, Admin):
    """The governance database: admission, settlement and administration on one engine."""

    def __init__(self, engine: AsyncEngine):
        super().__init__(engine)
        path = db.sqlite_path(str(engine.url)) if self.dialect == "sqlite" else None
        self.sqlite_admission = SqliteAdmission(path) if path is not None else None

    async def admit_many(self, reqs: Sequence[AdmitRequest], now: float) -> list[AdmitOutcome]:
        if self.sqlite_admission is not None:
            return await self.sqlite_admission.admit_many(list(reqs), now)
        return await super().admit_many(reqs, now)

    async def close(self) -> None:
        if self.sqlite_admission is not None:
            self.sqlite_admission.close()
        await super().close()
