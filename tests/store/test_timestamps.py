"""Timestamp columns: the bind processing that remembers its last value never hands one row another's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from mmrag.store.models import Collection, Document


def test_rows_of_one_bulk_insert_keep_their_own_timestamps(engine: Engine) -> None:
    start = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    shared = start + timedelta(hours=1)
    # The same object in runs (what the bulk writes bind), other values between them, and None-free rows.
    stamps = [shared, shared, start, shared, start + timedelta(microseconds=1), shared, shared]
    with engine.begin() as connection:
        [collection_id] = connection.execute(
            insert(Collection.__table__).returning(Collection.__table__.c.id), [{"name": "c", "created_at": start}]
        ).scalars()
        connection.execute(
            insert(Document.__table__),
            [
                {"collection_id": collection_id, "sha256": f"{i:064d}", "kind": "image", "mime": "", "size_bytes": 1,
                 "status": "pending", "user_metadata": {}, "created_at": stamp, "updated_at": stamps[-1 - i]}
                for i, stamp in enumerate(stamps)
            ],
        )
    with engine.connect() as connection:
        rows = connection.execute(
            select(Document.created_at, Document.updated_at).order_by(Document.sha256)
        ).all()
    assert [_utc(created) for created, _ in rows] == stamps
    assert [_utc(updated) for _, updated in rows] == stamps[::-1]


def _utc(value: datetime) -> datetime:
    # SQLite hands back the stored UTC time without its zone; PostgreSQL an aware one
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
