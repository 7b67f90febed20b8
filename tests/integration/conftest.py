"""Fixtures shared by the integration tests: the store on both backends (SQLite, the embedded
default, and PostgreSQL at SECONDREADER_TEST_DATABASE_URL, each test in a schema of its own), and
the HTTP API in process (:func:`service_client`: the routes behind the API-key middleware, as
``secondreader serve`` mounts them, over a screening service on a SQLite store)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from secondreader.model.predictor import Predictor
from secondreader.service.auth import ApiKeyMiddleware
from secondreader.service.core import ScreeningService
from secondreader.service.http import build_app
from secondreader.store import Store

from ..conftest import require

#: The API key of :func:`service_client`, and the header that presents it.
API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

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




@contextmanager
def service_client(home: Path, predictors: Sequence[Predictor], *, workers: int = 2,
                   max_upload_bytes: int = 64 * 1024 * 1024, **service: Any) -> Iterator[tuple[Any, ScreeningService]]:
    """A Starlette test client of the HTTP API (base ``http://127.0.0.1``, key :data:`API_KEY`) over a
    :class:`ScreeningService` of ``predictors`` whose home and SQLite store are in ``home``; the
    service is closed after. ``service``: more of its keyword arguments."""
    from starlette.testclient import TestClient

    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, list(predictors), home=home, max_image_pixels=64_000_000, workers=workers,
                            **service)
    try:
        app = ApiKeyMiddleware(build_app(lambda: core, max_upload_bytes=lambda: max_upload_bytes), keys=[API_KEY])
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield client, core
    finally:
        core.close()
