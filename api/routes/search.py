"""POST /v1/search: a text query (JSON or a form field) or an image (multipart upload)."""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import schemas
from api.auth import Principal, principal
from api.deps import get_metrics, get_services, get_settings, get_urls
from api.errors import UnsupportedMediaType, invalid
from api.metrics import Metrics
from mmrag import documents, tags
from mmrag.config import Settings
from mmrag.errors import TooLargeError
from mmrag.retrievers import RETRIEVERS
from mmrag.services import Services

router = APIRouter(prefix="/v1", tags=["search"])

# Two bodies for one operation, which FastAPI cannot declare from a signature; the schemas are added to the
# document's components by api.app.openapi_with_extras.
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SearchForm"}},
        },
    }
}

SEARCH_FORM_SCHEMA: dict[str, Any] = {
    "title": "SearchForm",
    "type": "object",
    "description": "An image query (or a text one) as a form; give exactly one of `image` and `query`.",
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "an image file (sniffed, pixel-bounded)"},
        "query": {"type": "string"},
        "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "offset": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0},
        "collections": {"type": "array", "items": {"type": "string"}},
        "retrievers": {"type": "array", "items": {"type": "string", "enum": []}},  # filled by search_form_schema
        "filters": {"type": "string", "description": "a JSON object, as SearchRequest.filters"},
        "highlight": {"type": "boolean", "default": True},
    },
}


def search_form_schema() -> dict[str, Any]:
    """SEARCH_FORM_SCHEMA with the registered retrievers' names (mmrag.retrievers) as they are now."""
    schema = copy.deepcopy(SEARCH_FORM_SCHEMA)
    schema["properties"]["retrievers"]["items"]["enum"] = RETRIEVERS.names()
    return schema


@router.post(
    "/search",
    response_model=schemas.SearchResponse,
    openapi_extra=REQUEST_BODY,
    responses=schemas.error_responses(400, 401, 403, 404, 413, 415, 422, 503),
    summary="Search pages by text or by image",
)
async def search(
    request: Request,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    settings: Settings = Depends(get_settings),
    metrics: Metrics = Depends(get_metrics),
    urls: schemas.Urls = Depends(get_urls),
) -> schemas.SearchResponse:
    body, image = await _parse(request, settings)
    collections = await run_in_threadpool(caller.readable, services, body.collections)
    with metrics.retrieval_seconds.time():
        hits = await run_in_threadpool(
            documents.search_hits,
            services,
            collections,
            text=None if image is not None else body.query,
            image=image,
            max_image_pixels=settings.api.max_upload_pixels,
            k=body.k,
            offset=body.offset,
            retrievers=body.retrievers,
            filters=body.filters.to_library(),
            highlight=body.highlight,
        )
    meaningless = services.embedders().meaningless
    return schemas.SearchResponse(
        hits=[schemas.search_hit(hit, urls) for hit in hits], k=body.k, offset=body.offset, meaningless=meaningless
    )


@router.get(
    "/tags",
    response_model=schemas.TagCounts,
    responses=schemas.error_responses(401, 403, 404, 422),
    summary="Count the zero-shot tags of photos, among the pages the filters keep",
)
def tag_counts(
    collection: Annotated[list[schemas.CollectionName] | None, Query(max_length=20)] = None,
    tag: Annotated[
        list[schemas.TagName] | None,
        Query(max_length=20, description="only pages holding every one of these (as the search filter `tags`): "
              "the counts of the tags found with them"),
    ] = None,
    kind: schemas.Kind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
) -> schemas.TagCounts:
    collections = caller.readable(services, collection)
    filters = schemas.Filters(kind=kind, tags=tag or []).to_library()
    counts = tags.tag_counts(services, collections, filters, limit=limit)
    return schemas.TagCounts(
        tags=[schemas.TagCountOut(tag=c.tag, count=c.count) for c in counts],
        meaningless=services.embedders().meaningless,
    )


async def _parse(request: Request, settings: Settings) -> tuple[schemas.SearchRequest, bytes | None]:
    """The body as a SearchRequest, plus the query image's bytes for a multipart image search."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return _validated(await request.body()), None
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=40)
        fields: dict[str, Any] = {}
        image: bytes | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise _invalid(name, "only the `image` field may be a file")
                image = await value.read(settings.api.max_upload_bytes + 1)
                if len(image) > settings.api.max_upload_bytes:
                    raise TooLargeError(f"query image: over the upload limit of {settings.api.max_upload_bytes} bytes")
            elif name in ("collections", "retrievers"):
                fields.setdefault(name, []).append(value)
            elif name == "filters":
                try:
                    fields[name] = json.loads(value)
                except ValueError:
                    raise _invalid("filters", "must be a JSON object") from None
            else:
                fields[name] = value
        if (image is None) == ("query" not in fields):
            raise _invalid("image", "give exactly one of an `image` file and a `query` field")
        if image is not None:
            fields["query"] = "(image)"  # validated like a text request; the text is not used
        return _validated(fields), image
    raise UnsupportedMediaType(
        f"send the search as application/json or multipart/form-data, not {content_type or 'no content type'!r}"
    )


def _validated(data: bytes | dict[str, Any]) -> schemas.SearchRequest:
    try:
        if isinstance(data, bytes):
            return schemas.SearchRequest.model_validate_json(data)
        return schemas.SearchRequest.model_validate(data)
    except ValidationError as exc:
        # Into FastAPI's own validation error, so it gets the same 422 body as every other invalid request.
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


def _invalid(field: str, message: str) -> RequestValidationError:
    return invalid("body", field, message=message)
