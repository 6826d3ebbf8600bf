"""Shared fixtures: every SQL test runs on migrated SQLite and, when MMRAG_TEST_DATABASE_URL is set, on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from sqlalchemy import Engine, create_engine, text

from mmrag.config import EmbedderSettings, Settings
from mmrag.retrievers import Embedders, load_embedders
from mmrag.store.db import build_engine, upgrade

PG_URL = os.environ.get("MMRAG_TEST_DATABASE_URL", "")

# No test may reach a model hub; a test that tries fails instead of hanging or downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Without a GPU, Triton kernels run only in Triton's CPU interpreter, which must be chosen before anything imports
# triton (colpali-engine does). Only an explicit kernel="triton" uses it; "auto" picks Triton on CUDA alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _postgres_schema_url(base_url: str, schema: str) -> str:
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def database(kind: str, directory: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file in `directory`, or a private PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'mmrag.db'}"
        return
    if not PG_URL:
        pytest.skip("PostgreSQL run needs MMRAG_TEST_DATABASE_URL (scripts/test sets it; CI requires it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _postgres_schema_url(PG_URL, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every SQL test runs on both databases."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = build_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def tiny_embedders() -> Embedders:
    """Built once per run: the tiny-random profile's real model code with seeded random weights."""
    return load_embedders(Settings(embedders=EmbedderSettings(profile="tiny-random")))


def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    """Point the `mmrag` CLI at tmp_path and this database, with tiny models, inline workers, no OCR."""
    from indexer import cli

    monkeypatch.setenv("MMRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MMRAG_DATABASE__URL", database_url)
    monkeypatch.setenv("MMRAG_EMBEDDERS__PROFILE", "tiny-random")
    monkeypatch.setenv("MMRAG_INGEST__WORKERS", "0")
    monkeypatch.setenv("MMRAG_INGEST__OCR", "never")
    # wide enough that tables never shorten a path
    monkeypatch.setattr(cli.console, "width", 300)
    monkeypatch.setattr(cli.err_console, "width", 300)
    return tmp_path
