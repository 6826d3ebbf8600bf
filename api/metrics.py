"""Prometheus metrics, in a registry per app: request latency by route, retrieval and generation time, index sizes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrag.documents import IndexSizes, index_sizes
from mmrag.qa import Observer
from mmrag.services import Services

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; answers from a VLM take seconds to minutes, searches milliseconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, services: Callable[[], Services | None]) -> None:
        # A registry of its own, not prometheus_client's global one: several apps (tests) live in one process.
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "mmrag_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route", "status"], buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.retrieval_seconds = Histogram(
            "mmrag_retrieval_seconds", "Time to retrieve pages (search and ask)", buckets=BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.generation_seconds = Histogram(
            "mmrag_generation_seconds", "Time to generate an answer", ["answerer"], buckets=BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_IndexSizes(services))

    def observer(self, answerer: str) -> Observer:
        def observe(stage: str, seconds: float) -> None:
            if stage == "retrieval":
                self.retrieval_seconds.observe(seconds)
            elif stage == "generation":
                self.generation_seconds.labels(answerer).observe(seconds)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _IndexSizes:
    """Read from SQL at scrape time (SQL is the source of truth for what each store holds), at most every
    api.metrics_sizes_seconds: in between, a scrape reports the sizes last read."""

    def __init__(self, services: Callable[[], Services | None], clock: Callable[[], float] = time.monotonic) -> None:
        self.services = services
        self.clock = clock
        self._last: tuple[float, IndexSizes] | None = None

    def describe(self) -> list[Metric]:
        return []  # sizes are read at scrape time only, never at registration

    def collect(self) -> Iterator[Metric]:
        services = self.services()
        if services is None:
            return
        now = self.clock()
        if self._last is not None and now - self._last[0] < services.settings.api.metrics_sizes_seconds:
            sizes = self._last[1]
        else:
            try:
                sizes = index_sizes(services)
            except SQLAlchemyError as exc:
                log.warning("index sizes unavailable for /metrics: %s", exc)
                return
            self._last = (now, sizes)
        documents = GaugeMetricFamily("mmrag_index_documents", "Documents by collection and status",
                                      labels=["collection", "status"])  # fmt: skip
        for (collection, status), n in sorted(sizes.documents.items()):
            documents.add_metric([collection, status], n)
        pages = GaugeMetricFamily("mmrag_index_pages", "Pages by collection", labels=["collection"])
        for collection, n in sorted(sizes.pages.items()):
            pages.add_metric([collection], n)
        vectors = GaugeMetricFamily("mmrag_index_vectors", "Pages with vectors, by collection and retriever",
                                    labels=["collection", "retriever"])  # fmt: skip
        for (collection, retriever), n in sorted(sizes.vectors.items()):
            vectors.add_metric([collection, retriever], n)
        failed_pages = GaugeMetricFamily("mmrag_index_failed_pages", "Pages documents could not have, by collection",
                                         labels=["collection"])  # fmt: skip
        for collection, n in sorted(sizes.failed_pages.items()):
            failed_pages.add_metric([collection], n)
        without_text = GaugeMetricFamily("mmrag_index_pages_without_text",
                                         "Pages with no text (photos, pages OCR read nothing on), by collection",
                                         labels=["collection"])  # fmt: skip
        for collection, n in sorted(sizes.pages_without_text.items()):
            without_text.add_metric([collection], n)
        yield from (documents, pages, vectors, failed_pages, without_text)


class RequestTimer:
    """ASGI middleware: each request's latency under its route template (bounded label values, not raw paths)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - began
            )
