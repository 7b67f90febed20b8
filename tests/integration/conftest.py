"""Fixtures shared by the integration tests: the store on both backends (SQLite, the embedded
default, and PostgreSQL at SECONDREADER_TEST_DATABASE_URL, each test in a schema of its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from secondreader.store import Store

from ..conftest import require

PG_URL = os.environ.get("SECONDREADER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_store() -> Store:
    store = Store(PG_URL)
    try:
        with store.engine.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not available here"
        require(False, f"PostgreSQL not reachable at SECONDREADER_TEST_DATABASE_URL ({type(exc).__name__})")
    store.engine.dispose()
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    else:
        postgres_store()
        s = Store(PG_URL)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with s.engine.begin() as c:
            c.execute(text(f"create schema {schema}"))
        s.engine.dispose()
        s = Store(PG_URL + f"?options=-csearch_path%3D{schema}")
        s.cleanup_schema = schema  # type: ignore[attr-defined]
    s.migrate()
    yield s
    schema = getattr(s, "cleanup_schema", None)
    s.engine.dispose()
    if schema:
        base = Store(PG_URL)
        with base.engine.begin() as c:
            c.execute(text(f"drop schema {schema} cascade"))
        base.engine.dispose()


