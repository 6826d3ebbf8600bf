"""GET /v1/pages/{page_id}/image: a page's stored image or its thumbnail, by id only; GET /v1/pages/{page_id}/similar:
its near-duplicates; POST /v1/pages/{page_id}/describe: its caption (alt text)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, Response

from api import schemas
from api.auth import Principal, principal
from api.deps import get_answerer, get_services, get_settings, get_urls
from api.errors import invalid
from mmrag import captions, documents, near_duplicates
from mmrag.config import Settings
from mmrag.protocols import Answerer
from mmrag.services import Services

router = APIRouter(prefix="/v1", tags=["pages"])


MAX_REGIONS = 100


@router.get(
    "/pages/{page_id}/image",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "JPEG"},
        **schemas.error_responses(401, 404, 422),
    },
    summary="A page's image (full size or a thumbnail), optionally with evidence drawn on it",
)
def page_image(
    page_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    size: Annotated[Literal["full", "thumbnail"], Query()] = "full",
    regions: Annotated[
        str | None,
        Query(max_length=4000, description="boxes to draw (orange), as a citation's regions give them: "
              "'x0,y0,x1,y1;x0,y0,x1,y1', each 0-1 of the page image, at most 100"),
    ] = None,
    highlight: Annotated[
        str | None,
        Query(min_length=1, max_length=500, description="a query: the page's words that match it, and where "
              "a similarity map for it points, are drawn (blue)"),
    ] = None,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    settings: Settings = Depends(get_settings),
) -> Response:
    side = settings.api.thumbnail_side if size == "thumbnail" else None
    if regions is not None or highlight is not None:
        boxes = parse_regions(regions) if regions is not None else []
        data = documents.marked_page_image(
            services, page_id, caller.scope(), regions=boxes, highlight=highlight, thumbnail_side=side
        )
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
    path = documents.page_image(services, page_id, caller.scope(), thumbnail_side=side)
    # Stored images are content-addressed and never rewritten in place, so clients may cache them.
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get(
    "/pages/{page_id}/similar",
    response_model=schemas.SimilarPagesOut,
    responses=schemas.error_responses(400, 401, 404, 422, 503),
    summary="A page's near-duplicates: the pages of its collection whose CLIP image vectors are closest to its own",
)
def similar_pages(
    page_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    threshold: Annotated[
        float | None,
        Query(gt=0, le=1, description="the least cosine similarity listed (default: MMRAG_RETRIEVAL__"
              "NEAR_DUPLICATE_THRESHOLD)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    urls: schemas.Urls = Depends(get_urls),
) -> schemas.SimilarPagesOut:
    found = near_duplicates.similar_pages(services, page_id, caller.scope(), threshold=threshold, limit=limit)
    return schemas.similar_pages(found, urls, meaningless=services.embedders().meaningless)


@router.post(
    "/pages/{page_id}/describe",
    response_model=schemas.CaptionOut,
    responses=schemas.error_responses(401, 404, 422, 502, 503, 504),
    summary="A page's caption (alt text) by the VLM answerer, cached by the page's content; captions are searchable",
)
def describe_page(
    page_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    force: Annotated[bool, Query(description="describe it again even when its content has a caption")] = False,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    answerer: Answerer = Depends(get_answerer),
) -> schemas.CaptionOut:
    found = captions.describe_page(services, answerer, page_id, caller.scope(), force=force)
    return schemas.CaptionOut(page_id=found.page_id, caption=found.caption, model=found.model, cached=found.cached)


def parse_regions(text: str) -> list[tuple[float, float, float, float]]:
    """'x0,y0,x1,y1;...' as boxes; a 422 naming the parameter for anything else."""
    parts = [part for part in text.split(";") if part.strip()]
    if not parts or len(parts) > MAX_REGIONS:
        raise invalid("query", "regions", message=f"give 1 to {MAX_REGIONS} boxes 'x0,y0,x1,y1' separated by ';'")
    boxes = []
    for part in parts:
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
            raise invalid("query", "regions", message=f"{part.strip()!r} is not four numbers 0-1 'x0,y0,x1,y1'")
        x0, y0, x1, y1 = values
        if not (x0 < x1 and y0 < y1):
            raise invalid("query", "regions", message=f"{part.strip()!r}: a box needs x0 < x1 and y0 < y1")
        boxes.append((x0, y0, x1, y1))
    return boxes
