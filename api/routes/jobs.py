"""/v1/jobs: index a server-side folder (inside an allowlisted root) in the background; poll a job's progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from api import schemas
from api.auth import Principal, principal
from api.deps import get_jobs, get_services, get_settings, get_urls
from api.paths import resolve_job_path
from mmrag import jobs as job_library
from mmrag.config import Settings
from mmrag.jobs import JobRunner
from mmrag.services import Services

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/jobs",
    status_code=202,
    response_model=schemas.JobAccepted,
    responses=schemas.error_responses(400, 401, 403, 404, 422, 503),
    summary="Index a server-side file or folder as a background job",
)
def create_job(
    body: schemas.JobRequest,
    caller: Principal = Depends(principal),
    settings: Settings = Depends(get_settings),
    jobs: JobRunner = Depends(get_jobs),
    urls: schemas.Urls = Depends(get_urls),
) -> schemas.JobAccepted:
    collection = caller.writable(body.collection)
    target, root = resolve_job_path(settings.api.job_roots, body.root, body.path)
    job_id = jobs.submit([target], collection, confine_to=root)
    return schemas.JobAccepted(job_id=job_id, collection=collection, status_url=urls.job(job_id))


@router.get(
    "/jobs/{job_id}",
    response_model=schemas.JobOut,
    responses=schemas.error_responses(401, 404, 422),
    summary="A job's state, counts, failures and items",
)
def get_job(
    job_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    items_limit: Annotated[int, Query(ge=0, le=1000)] = 100,
    items_offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
) -> schemas.JobOut:
    status = job_library.job_status(
        services, job_id, caller.scope(), items_limit=items_limit, items_offset=items_offset
    )
    return schemas.job(status)
