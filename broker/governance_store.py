"""Keys, budgets, rate windows and reservations in SQL: the thin I/O around the pure decisions
of broker/keys.py, budgets.py and ratelimit.py, in three rooms along their seams:

    governance_tables.py   the tables, row readers, the engine (StoreBase)
    governance_admit.py    admission: a batch of one team's jobs in one transaction (hot path)
    governance_sqlite.py   the same admission and settlement on SQLite through plain sqlite3
    governance_settle.py   settlement of cost records and ended jobs, the sweep (hot path)
    governance_admin.py    keys and teams for the CLI

`Store` is all of them on one engine; callers import it (and the names below) from here.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from panelboard.transport import db
from panelboard.broker.governance_admin import Admin
from panelboard.broker.governance_admit import Admission, AdmitOutcome, AdmitRequest, Admitted, Throttled
from panelboard.broker.governance_settle import Settlement, SettleStats
from panelboard.broker.governance_sqlite import SqliteHotPath
from panelboard.schemas.job import CostRecord
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

    def __init__(self, engine: AsyncEngine, durable: bool = True):
        super().__init__(engine, durable)
        path = db.sqlite_path(str(engine.url)) if self.dialect == "sqlite" else None
        # A SQLite file: the hot path skips SQLAlchemy; `durable`: see db.durable_for.
        self.hot = SqliteHotPath(path, self.durable) if path is not None else None

    async def admit_many(self, reqs: Sequence[AdmitRequest], now: float) -> list[AdmitOutcome]:
        if self.hot is not None:
            return await self.hot.admit_many(list(reqs), now)
        return await super().admit_many(reqs, now)

    async def _settle(self, costs: list[CostRecord], ended: list[tuple[str, int]], now: float,
                      shadow_ended: list[tuple[str, int]]) -> SettleStats:
        if self.hot is not None:
            return await self.hot.settle(costs, ended, now, shadow_ended)
        return await super()._settle(costs, ended, now, shadow_ended)

    async def close(self) -> None:
        if self.hot is not None:
            self.hot.close()
        await super().close()
