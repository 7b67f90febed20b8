"""The result and job store: SQLAlchemy 2 on SQLite (embedded default) or PostgreSQL, Alembic migrations."""

from .store import JobRecord, Store

__all__ = ["JobRecord", "Store"]
