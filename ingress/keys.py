"""Which team a virtual key belongs to, so its jobs are published under that team.

The broker still authenticates every job (hash, expiry, allow-lists, budget): this only reads
the key's team from the ledger's database, cached by prefix. A key the database does not know
is published under the default team, where the broker answers `bad_key` (401) once keys are on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from panelboard.broker.keys import prefix_of
from panelboard.schemas.config import Config
from panelboard.transport import logs

if TYPE_CHECKING:
    from panelboard.broker.governance_store import Store

log = logs.get("ingress.keys")

TTL_S = 10.0
DEFAULT_TEAM = "default"


class KeyTeams:
    def __init__(self, cfg: Config, database_url: str | None):
        self.cfg = cfg
        self.database_url = database_url
        self.store: Store | None = None
        self.cache: dict[str, tuple[str | None, float]] = {}  # prefix -> (team, read at)

    def _open(self) -> "Store | None":
        if self.store is None and self.cfg.governance.require_keys is not False:
            from panelboard.transport import db
            from panelboard.broker.governance_store import Store
            from panelboard.transport.connection import home

            self.store = Store.open(db.resolve_url(self.database_url, self.cfg, home()))
        return self.store

    async def team_of(self, key: str | None) -> str:
        prefix = prefix_of(key)
        if prefix is None:
            return DEFAULT_TEAM
        now = time.monotonic()
        hit = self.cache.get(prefix)
        if hit is None or now - hit[1] > TTL_S:
            store = self._open()
            row = await store.get_key(prefix) if store is not None else None
            hit = (row["team"] if row else None, now)
            self.cache[prefix] = hit
        return hit[0] or DEFAULT_TEAM

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
