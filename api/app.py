"""The query service's FastAPI app: create_app (the factory `mmrag serve` runs), its lifespan and middleware.

Run it with `mmrag serve`, or any ASGI server: `uvicorn --factory api.app:create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from api import errors, routes
from api.limits import BodyLimit
from api.metrics import Metrics, RequestTimer
from api.routes.search import search_form_schema
from api.schemas import SearchRequest
from mmrag.config import Settings
from mmrag.jobs import JobRunner
from mmrag.protocols import Answerer
from mmrag.services import Services, build_services

log = logging.getLogger(__name__)

API_VERSION = "1"


def create_app(
    settings: Settings | None = None, *, services: Services | None = None, answerer: Answerer | None = None
) -> FastAPI:
    """The app. Settings come from the environment unless given; `services` and `answerer` let tests (and
    embedders of mmrag) pass theirs in, otherwise the lifespan builds them and loads every model before serving."""
    if settings is None:
        settings = services.settings if services is not None else Settings()
    app = FastAPI(
        title="mmrag",
        version=API_VERSION,
        summary="Multimodal RAG over images and PDFs: search pages, ask questions with citations.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.owns_services = services is None
    app.state.answerer = answerer
    app.state.answerer_off = None
    app.state.jobs = None
    app.state.metrics = Metrics(lambda: app.state.services)

    errors.install(app)
    app.include_router(routes.health.router)
    app.include_router(routes.ui.router)
    for module in (routes.search, routes.ask, routes.documents, routes.pages, routes.jobs):
        # The /v1 prefix is on each router, not given here, so a route's own path (the metrics label) carries it.
        app.include_router(module.router)

    # Added last = outermost: the body limit refuses before anything reads, the timer sees every response.
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_request_bytes)
    app.add_middleware(RequestTimer, metrics=app.state.metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: Settings = state.settings
    if state.jobs is not None:
        # Started already: a test client (schemathesis's, for one) entered the lifespan again. Share what is there.
        yield
        return
    if state.services is None:
        state.services = await run_in_threadpool(build_services, settings)
    services: Services = state.services
    if settings.api.job_roots:
        # This service runs index jobs: their workers' fork server imports torch beside the model loading below,
        # not at the first job.
        from mmrag.indexing import start_worker_server

        start_worker_server(services.settings)
    embedders = await run_in_threadpool(services.embedders)  # load every model now, not at the first request
    log.info("retrievers on: %s; off: %s", ", ".join(embedders.on()) or "none", embedders.off or "none")
    if state.answerer is None:
        state.answerer, state.answerer_off = await run_in_threadpool(_load_answerer, settings)
    state.jobs = JobRunner(services)
    try:
        yield
    finally:
        await run_in_threadpool(state.jobs.close)
        state.jobs = None
        if state.owns_services:
            await run_in_threadpool(services.close)
            state.services = None


def _load_answerer(settings: Settings) -> tuple[Answerer | None, str | None]:
    """The configured answerer, or the extractive one with the reason the configured one is off."""
    from mmrag.answer import build_answerer_or_extractive

    return build_answerer_or_extractive(settings.answerer)  # it logs why when it falls back


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the two request bodies of POST /v1/search that no signature declares."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, servers=app.servers
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        search = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(search.pop("$defs", {}))
        components["SearchRequest"] = search
        components["SearchForm"] = search_form_schema()
        app.openapi_schema = document
    return app.openapi_schema
