"""Alembic environment: runs on a connection handed in by mmrag.store.db.upgrade, or builds one from Settings."""

from __future__ import annotations

from alembic import context

from mmrag.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return

    from mmrag.config import Settings
    from mmrag.store.db import build_engine

    engine = build_engine(Settings().database_url())
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
