"""POST /v1/ask: a question answered from the retrieved pages, with checked citations; optionally streamed (SSE)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from itertools import chain

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from api import schemas
from api.auth import Principal, principal
from api.deps import get_answerer, get_metrics, get_services, get_urls
from api.errors import error_body, status_of, type_of
from api.metrics import Metrics
from mmrag import qa
from mmrag.protocols import Answerer
from mmrag.services import Services

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["ask"])

STREAM_DESCRIPTION = (
    "With `stream: true`, Server-Sent Events: one `retrieved` event (`{\"pages\": [...]}`), `token` events "
    "(`{\"text\": \"...\"}`) as the answer is written, then one `answer` event holding the whole AskResponse with "
    "its checked citations. An error after the stream began arrives as an `error` event with an ErrorBody."
)

# One event of the stream (OpenAPI 3.1 has no stream schema; tools such as schemathesis check each event with it).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["retrieved", "token", "answer", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


@router.post(
    "/ask",
    response_model=schemas.AskResponse,
    responses={
        200: {"description": STREAM_DESCRIPTION, "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **schemas.error_responses(400, 401, 403, 404, 413, 422, 503),
    },
    summary="Answer a question from the indexed pages, citing them",
)
def ask(
    body: schemas.AskRequest,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    answerer: Answerer = Depends(get_answerer),
    metrics: Metrics = Depends(get_metrics),
    urls: schemas.Urls = Depends(get_urls),
) -> schemas.AskResponse | StreamingResponse:
    # A plain `def`: FastAPI runs it in its thread pool, so retrieval and generation stay off the event loop.
    collections = caller.readable(services, body.collections)
    options = {
        "k": body.k,
        "filters": body.filters.to_library(),
        "retrievers": body.retrievers,
        "observe": metrics.observer(answerer.name),
    }
    meaningless = services.embedders().meaningless
    if not body.stream:
        answer, pages = qa.ask(services, answerer, body.question, collections, **options)
        return schemas.ask_response(answer, pages, urls, meaningless=meaningless)
    events = qa.ask_stream(services, answerer, body.question, collections, **options)
    first = next(events)  # retrieval runs now: its errors are still ordinary error responses
    return StreamingResponse(
        _server_sent(chain([first], events), urls, meaningless),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _server_sent(events: Iterator[qa.AskEvent], urls: schemas.Urls, meaningless: bool) -> Iterator[str]:
    """Events as SSE frames; a sync generator, so Starlette iterates it in a worker thread."""
    pages = []
    try:
        for event in events:
            if isinstance(event, qa.Retrieved):
                pages = event.pages
                data = {"pages": [schemas.retrieved_page(p, urls).model_dump(mode="json") for p in pages]}
                yield _frame("retrieved", data)
            elif isinstance(event, qa.Token):
                yield _frame("token", {"text": event.text})
            else:
                response = schemas.ask_response(event.answer, pages, urls, meaningless=meaningless)
                yield _frame("answer", response.model_dump(mode="json"))
    except Exception as exc:  # noqa: BLE001 - the 200 and its headers are sent; the error can only go in the stream
        if status_of(exc) >= 500:
            log.exception("streamed answer failed")
        yield _frame("error", error_body(type_of(exc), str(exc)))


def _frame(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
