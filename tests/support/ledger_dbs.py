"""The two ledger databases the tests run against: a SQLite file per test, and a schema of its
own in the local Postgres. A missing Postgres skips on a laptop and fails when CI=true."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from panelboard.transport import db
from tests.conftest import IN_CI

PG_URL = os.environ.get("PANELBOARD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


async def sqlite_engine(tmp_path: Path) -> AsyncEngine:
    engine = db.open_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await db.create_schema(engine)
    return engine


async def new_pg_schema(prefix: str) -> str:
    """A fresh schema in the local Postgres, so tests never collide. A missing Postgres
    skips on a laptop and fails when CI=true."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = db.open_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except (SQLAlchemyError, OSError) as e:
        why = f"Postgres unreachable at {db.display(PG_URL)} ({type(e).__name__}: {str(e).splitlines()[0]})"
        if IN_CI:
            pytest.fail(f"{why}; CI must run the Postgres tests: start Postgres or set PANELBOARD_TEST_POSTGRES_URL", pytrace=False)
        pytest.skip(why)
    finally:
        await engine.dispose()
    return schema


async def drop_pg_schema(schema: str) -> None:
    engine = db.open_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


async def postgres_engine() -> tuple[AsyncEngine, str]:
    schema = await new_pg_schema("pb_test")
    engine = db.open_engine(PG_URL, schema=schema)
    await db.create_schema(engine)
    return engine, schema


async def drop(engine: AsyncEngine, schema: str) -> None:
    await engine.dispose()
    await drop_pg_schema(schema)


@pytest.fixture
async def sqlite_db(tmp_path):
    engine = await sqlite_engine(tmp_path)
    yield engine
    await engine.dispose()


@pytest.fixture
async def postgres_db():
    engine, schema = await postgres_engine()
    yield engine
    await drop(engine, schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def either_db(request, tmp_path):
    """The test runs once on each database."""
    if request.param == "sqlite":
        engine = await sqlite_engine(tmp_path)
        yield engine
        await engine.dispose()
    else:
        engine, schema = await postgres_engine()
        yield engine
        await drop(engine, schema)
