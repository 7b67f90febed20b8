"""Alembic environment: run with the connection the Store passes in (``config.attributes``)."""

from __future__ import annotations

from alembic import context

from secondreader.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables instead
    transaction_per_migration=True,
    # The Store hands over a connection whose transaction includes DDL on every backend (for SQLite
    # see Store.ddl_engine), so a failed upgrade leaves nothing half-applied.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
