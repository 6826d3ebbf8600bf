"""/metrics' index sizes: counts over every document, page and vector, so read from SQL at most every
api.metrics_sizes_seconds, and right again after that."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event

from api.metrics import _IndexSizes
from bench.query import fill_collection
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from tests.api.conftest import make_settings


def test_index_sizes_are_read_at_most_every_metrics_sizes_seconds(tmp_path: Path) -> None:
    services = build_services(make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'm.db'}"), embedders=Embedders())
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    now = [100.0]
    sizes = _IndexSizes(lambda: services, clock=lambda: now[0])

    def pages() -> float:
        [family] = [metric for metric in sizes.collect() if metric.name == "mmrag_index_pages"]
        return family.samples[0].value

    try:
        fill_collection(services, 5, 10, 50)
        statements.clear()
        assert pages() == 5 and statements  # the first scrape reads SQL
        statements.clear()
        now[0] += services.settings.api.metrics_sizes_seconds - 1
        assert pages() == 5 and not statements  # within the interval: the sizes last read
        now[0] += 1
        assert pages() == 5 and statements  # then read again
        services.settings.api.metrics_sizes_seconds = 0
        statements.clear()
        pages()
        pages()
        assert sum("count" in sql.lower() for sql in statements) == 8  # 0: four counting queries every scrape
    finally:
        services.close()
