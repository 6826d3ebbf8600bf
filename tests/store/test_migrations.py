"""The Alembic migrations create exactly the ORM's schema, migrate data, and downgrade cleanly, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from mmrag.store import repository
from mmrag.store.db import build_engine, downgrade, upgrade
from mmrag.store.models import Base, Collection, Document, Job, JobItem, Page


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


def test_upgrading_settles_the_jobs_that_are_done(database_url: str) -> None:
    """0002 moves a done job's counts onto its row and deletes its unchanged items, as settle_job now does when a
    job finishes; a job still running keeps every item (it resumes from them)."""
    engine = build_engine(database_url)
    upgrade(engine, "0001")
    now = datetime.now(UTC)
    items = {
        1: [("a", "indexed", 2), ("b", "unchanged", 0), ("c", "unchanged", 0), ("d", "failed", 0)],
        2: [("a", "unchanged", 0), ("e", "pending", 0)],
    }
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO collections (id, name, created_at) VALUES (1, 'default', :now)"), {"now": now})
        for job_id, state in ((1, "done"), (2, "running")):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, collection_id, state, roots, retrievers, created_at) "
                    "VALUES (:id, 1, :state, '{}', '{}', :now)"
                ),
                {"id": job_id, "state": state, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO job_items (job_id, path, state, attempts, pages, updated_at) "
                    "VALUES (:job, :path, :state, 0, :pages, :now)"
                ),
                [{"job": job_id, "path": p, "state": s, "pages": n, "now": now} for p, s, n in items[job_id]],
            )
    upgrade(engine)
    with Session(engine) as session:
        assert repository.job_counts(session, 1) == {  # settled before pages could fail: none did
            "pending": 0, "indexed": 1, "unchanged": 2, "duplicate": 0, "failed": 1, "pages": 2, "failed_pages": 0,
            "pages_without_text": 0,
        }
        assert session.get(Job, 2).counts is None
        left = session.execute(select(JobItem.job_id, JobItem.path).order_by(JobItem.job_id, JobItem.path)).all()
        assert [tuple(row) for row in left] == [(1, "a"), (1, "d"), (2, "a"), (2, "e")]
        assert repository.job_counts(session, 2)["unchanged"] == 1  # counted from its items
    downgrade(engine)
    engine.dispose()


def test_a_pages_ocr_path_fits_its_column_and_a_downgrade_cuts_it_to_the_old_one(database_url: str) -> None:
    engine = build_engine(database_url)
    upgrade(engine)
    with Session(engine) as session, session.begin():
        collection = Collection(name="c")
        session.add(collection)
        session.flush()
        document = Document(collection_id=collection.id, sha256="x", kind="image", mime="image/png", size_bytes=1)
        session.add(Page(document=document, page_number=1, width=10, height=10, text="GIN KEE",
                         text_source="ocr_smooth+block+rapid"))
    downgrade(engine, "0005")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT text_source FROM pages")).scalar_one() == "ocr_smooth+block"
    downgrade(engine)
    engine.dispose()
