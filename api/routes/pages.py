"""GET /v1/pages/{page_id}/image: a page's stored image or its thumbnail, by id only."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse

from api import schemas
from api.auth import Principal, principal
from api.deps import get_services, get_settings
from mmrag import documents
from mmrag.config import Settings
from mmrag.services import Services

router = APIRouter(prefix="/v1", tags=["pages"])


@router.get(
    "/pages/{page_id}/image",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "JPEG"},
        **schemas.error_responses(401, 404, 422),
    },
    summary="A page's image (full size or a thumbnail)",
)
def page_image(
    page_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    size: Annotated[Literal["full", "thumbnail"], Query()] = "full",
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    settings: Settings = Depends(get_settings),
) -> FileResponse:
    side = settings.api.thumbnail_side if size == "thumbnail" else None
    path = documents.page_image(services, page_id, caller.scope(), thumbnail_side=side)
    # Stored images are content-addressed and never rewritten in place, so clients may cache them.
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
