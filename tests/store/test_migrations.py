"""The Alembic migration creates exactly the ORM's schema, and downgrades cleanly, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from mmrag.store.db import build_engine, downgrade, upgrade
from mmrag.store.models import Base


def test_migration_matches_models(database_url: str) -> None:
    engine = build_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert {"collections", "documents", "document_paths", "pages", "page_embeddings", "jobs", "job_items"} <= set(
        inspect(engine).get_table_names()
    )
    downgrade(engine)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
