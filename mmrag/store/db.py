"""Engine and session construction, and schema migration (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

# The migrations ship inside the package (package data), so an installed wheel finds them wherever it runs from;
# Alembic resolves "package:path" through importlib.resources. alembic.ini names the same location.
MIGRATIONS = "mmrag:migrations"


def build_engine(url: str, *, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API connection
            cur = dbapi_conn.cursor()
            # WAL lets readers (status, search) run beside the indexer; foreign keys are off by default.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def refresh_statistics(engine: Engine) -> None:
    """Let the query planner see the tables as they are now: ANALYZE (SQLite: sampling at most 1000 rows an index;
    PostgreSQL: this schema's tables only, its default sample). A bulk job calls this when it ends.

    Without statistics both planners drove a search's page lookup from the documents' status index, a hash or scan
    over every document, instead of from the hits' page ids, a cost that grows with the collection.
    PostgreSQL's autovacuum analyzes on its own, late, and not where it is off.
    """
    from mmrag.store.models import Base

    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA analysis_limit=1000")
            connection.exec_driver_sql("ANALYZE")
        else:
            tables = ", ".join(engine.dialect.identifier_preparer.quote(name) for name in Base.metadata.tables)
            connection.exec_driver_sql(f"ANALYZE {tables}")
        connection.commit()


def build_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (the only place tables are created)."""
    from alembic import command

    with _migrating(engine) as connection:
        command.upgrade(_alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Take the schema back to `revision` (tests; a rollback by hand)."""
    from alembic import command

    with _migrating(engine) as connection:
        command.downgrade(_alembic_config(connection), revision)


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction for Alembic. On SQLite, with foreign keys off meanwhile: a batch migration
    rebuilds a table (copy, drop, rename), and dropping a table that others reference ON DELETE CASCADE would
    delete their rows with it (a collection's documents, a page's vectors' records). The keys are checked after."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:  # outside any transaction: SQLite ignores the pragma inside one
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()  # ends SQLAlchemy's autobegun transaction; pysqlite sent no BEGIN for a pragma
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left {len(broken)} rows that break a foreign key")
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
