"""GET /health (the process is alive), /ready (database reachable; which retrievers and answerer are loaded),
/metrics (Prometheus). None of them needs an API key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import mmrag
from api import schemas
from api.deps import get_metrics
from api.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["health"])


@router.get("/health", response_model=schemas.Health, summary="The process is alive")
def health() -> schemas.Health:
    return schemas.Health()


@router.get(
    "/ready",
    response_model=schemas.Ready,
    responses={503: {"model": schemas.Ready,
                     "description": "not ready: the database or the vector backend (a Qdrant server) is unreachable"}},
    summary="Ready to serve: database and vector backend reachable; the retrievers and answerer in use",
)
def ready(request: Request) -> JSONResponse:
    state = request.app.state
    services = state.services
    database, error = False, "the service is still starting"
    on: list[str] = []
    off: dict[str, str] = {}
    models: dict[str, schemas.ModelInUse] = {}
    meaningless = False
    backend, backend_error = None, None
    if services is not None:
        backend, backend_error = services.vector_backend()
        try:
            with services.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            database, error = True, None
        except SQLAlchemyError as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        embedders = services.embedders()  # loaded in the lifespan; this only reads them
        on = embedders.serving()  # BM25 and dates need no model
        off, meaningless = dict(embedders.off), embedders.meaningless
        models = {
            name: schemas.ModelInUse(model=choice.model, why=choice.why)
            for name, choice in mmrag.model_choices(services.settings.embedders).items()
        }
    serving = database and backend_error is None
    body = schemas.Ready(
        status="ready" if serving else "unavailable",
        database=database,
        database_error=error,
        vector_backend=backend,
        vector_backend_error=backend_error,
        retrievers_on=on,
        retrievers_off=off,
        models=models,
        answerer=state.answerer.name if state.answerer is not None else None,
        answerer_off=state.answerer_off,
        meaningless=meaningless,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if serving else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
def metrics(metrics: Metrics = Depends(get_metrics)) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
