"""The CLI's side of governance: create, list, revoke and rotate keys; set and list teams.
Not on the job path: plain SQLAlchemy Core, one short transaction per command."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select, update

from panelboard.broker import budgets, keys
from panelboard.broker.governance_tables import StoreBase, budget_defaults, budget_of, teams, virtual_keys


class Admin(StoreBase):
    async def create_key(self, team: str, *, models: list[str] | None = None, tiers: list[str] | None = None,
                         expires_at: float | None = None, rpm: int | None = None, tpm: int | None = None,
                         max_parallel: int | None = None, on_limit: str = "fail", budget_nano: int | None = None,
                         soft_nano: int | None = None, period: str = "none", note: str | None = None,
                         spent_nano: int = 0, now: float | None = None) -> tuple[str, str]:
        """A new key for `team`: returns (key, prefix). The key is shown once and not kept."""
        now = time.time() if now is None else now
        await self.create()
        for _ in range(20):
            key, prefix = keys.generate()
            row = {
                "prefix": prefix, "hash": keys.digest(key), "team": team, "models": json.dumps(sorted(models)) if models is not None else None,
                "tiers": json.dumps(sorted(tiers)) if tiers is not None else None, "created_at": now, "expires_at": expires_at,
                "revoked_at": None, "rpm": rpm, "tpm": tpm, "max_parallel": max_parallel, "on_limit": on_limit, "inflight": 0,
                "note": note, "rotated_to": None, **budget_defaults(now),
                "budget_nano": budget_nano, "soft_nano": soft_nano, "period": period, "period_key": budgets.period_key(period, now),  # type: ignore[arg-type]
                "spent_nano": spent_nano,
            }
            async with self.engine.begin() as conn:
                res = await conn.execute(self._insert(virtual_keys).on_conflict_do_nothing(), row)
                if res.rowcount == 1:
                    # Every key's team has a row (no budget, no limits until `teams set`), so that
                    # admission reads and locks both in one statement.
                    await conn.execute(self._insert(teams).on_conflict_do_nothing(), {
                        "name": team, **budget_defaults(now), "rpm": None, "tpm": None, "updated_at": now})
                    return key, prefix
        raise RuntimeError("could not draw an unused key prefix")

    async def list_keys(self, team: str | None = None) -> list[dict[str, Any]]:
        await self.create()
        q = select(virtual_keys).order_by(virtual_keys.c.team, virtual_keys.c.created_at)
        if team is not None:
            q = q.where(virtual_keys.c.team == team)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d.pop("hash")  # never shown, not even hashed
            d["models"], d["tiers"] = (json.loads(d["models"]) if d["models"] else d["models"]), (json.loads(d["tiers"]) if d["tiers"] else d["tiers"])
            out.append(d)
        return out

    async def get_key(self, prefix: str) -> dict[str, Any] | None:
        rows = [k for k in await self.list_keys() if k["prefix"] == prefix]
        return rows[0] if rows else None

    async def revoke_key(self, prefix: str, at: float | None = None) -> bool:
        at = time.time() if at is None else at
        await self.create()
        async with self.engine.begin() as conn:
            res = await conn.execute(update(virtual_keys).where(virtual_keys.c.prefix == prefix, virtual_keys.c.revoked_at.is_(None)).values(revoked_at=at))
            return res.rowcount == 1

    async def rotate_key(self, prefix: str, grace_s: float = 0.0, now: float | None = None) -> tuple[str, str] | None:
        """A new key with the same team, limits and budget (its spend carried over); the old one
        stops working after `grace_s`."""
        now = time.time() if now is None else now
        old = await self.get_key(prefix)
        if old is None:
            return None
        key, new_prefix = await self.create_key(
            old["team"], models=old["models"], tiers=old["tiers"], expires_at=old["expires_at"], rpm=old["rpm"], tpm=old["tpm"],
            max_parallel=old["max_parallel"], on_limit=old["on_limit"], budget_nano=old["budget_nano"], soft_nano=old["soft_nano"],
            period=old["period"], note=old["note"], spent_nano=old["spent_nano"] if old["period_key"] == budgets.period_key(old["period"], now) else 0,
            now=now)
        async with self.engine.begin() as conn:
            await conn.execute(update(virtual_keys).where(virtual_keys.c.prefix == prefix).values(
                rotated_to=new_prefix, revoked_at=func.coalesce(virtual_keys.c.revoked_at, now + grace_s)))
        return key, new_prefix

    async def set_team(self, name: str, now: float | None = None, **fields: Any) -> None:
        """Create or change a team's budget and limits. Only the given fields change; spend
        and reservations are kept (a new period keeps the spend of the current one)."""
        now = time.time() if now is None else now
        await self.create()
        allowed = {"budget_nano", "soft_nano", "period", "rpm", "tpm"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown team fields {sorted(unknown)}")
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(teams).where(teams.c.name == name).with_for_update())).first()
            if row is None:
                values = {"name": name, **budget_defaults(now), "rpm": None, "tpm": None, "updated_at": now, **fields}
                values["period_key"] = budgets.period_key(values["period"], now)
                await conn.execute(teams.insert().values(**values))
                return
            values = {**fields, "updated_at": now}
            if "period" in fields and fields["period"] != row.period:
                current = budgets.period_key(row.period, now)
                values["spent_nano"] = row.spent_nano if row.period_key == current else 0
                values["shadow_spent_nano"] = row.shadow_spent_nano if row.period_key == current else 0
                values["period_key"] = budgets.period_key(fields["period"], now)
            await conn.execute(update(teams).where(teams.c.name == name).values(**values))

    async def list_teams(self) -> list[dict[str, Any]]:
        await self.create()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(teams).order_by(teams.c.name))).all()
        now = time.time()
        out = []
        for r in rows:
            d = dict(r._mapping)
            b = budget_of(f"team {r.name}", r).rolled(now)
            d["spent_nano"] = b.spent_nano  # live and shadow calls
            d["shadow_spent_nano"] = d["shadow_spent_nano"] if b.period_key == r.period_key else 0
            d["live_spent_nano"] = b.spent_nano - d["shadow_spent_nano"]
            d["remaining_nano"] = b.remaining_nano()
            out.append(d)
        return out
