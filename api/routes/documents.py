"""/v1/documents: list (paginated, filtered), read, delete, and upload files to index."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import ValidationError

from api import schemas
from api.auth import Principal, principal
from api.deps import get_jobs, get_services, get_settings, get_urls
from api.errors import BadRequest, invalid
from mmrag import documents
from mmrag.config import Settings
from mmrag.jobs import JobRunner
from mmrag.services import Services

router = APIRouter(prefix="/v1", tags=["documents"])

DocumentId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get(
    "/documents",
    response_model=schemas.DocumentList,
    responses=schemas.error_responses(401, 403, 404, 422),
    summary="List documents, with filters, a page at a time",
)
def list_documents(
    collection: Annotated[list[schemas.CollectionName] | None, Query(max_length=20)] = None,
    status: Literal["pending", "indexed", "failed"] | None = None,
    kind: schemas.Kind | None = None,
    path_prefix: Annotated[schemas.Text | None, Query(max_length=4096)] = None,
    metadata: Annotated[
        list[schemas.Text] | None, Query(max_length=20, description="key=value; repeat for several (all must match)")
    ] = None,
    indexed_after: schemas.UtcDatetime | None = None,
    indexed_before: schemas.UtcDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
) -> schemas.DocumentList:
    filters = _filters(kind, path_prefix, metadata, indexed_after, indexed_before)
    collections = caller.readable(services, collection)
    listing = documents.list_documents(
        services, collections, status=status, filters=filters.to_library(), limit=limit, offset=offset
    )
    return schemas.DocumentList(
        items=[schemas.document(item) for item in listing.items], total=listing.total, limit=limit, offset=offset
    )


def _filters(
    kind: str | None,
    path_prefix: str | None,
    metadata: list[str] | None,
    indexed_after: datetime | None,
    indexed_before: datetime | None,
) -> schemas.Filters:
    pairs = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise invalid("query", "metadata", message=f"{item!r} is not key=value")
        pairs[key] = value
    try:
        return schemas.Filters(
            kind=kind,
            path_prefix=path_prefix,
            metadata=pairs,
            indexed_after=indexed_after,
            indexed_before=indexed_before,
        )
    except ValidationError as exc:
        raise invalid("query", "metadata", message=exc.errors(include_url=False)[0]["msg"]) from None


@router.get(
    "/documents/{document_id}",
    response_model=schemas.DocumentDetail,
    responses=schemas.error_responses(401, 404, 422),
    summary="One document, with its pages and the pages it could not have",
)
def get_document(
    document_id: DocumentId,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    urls: schemas.Urls = Depends(get_urls),
) -> schemas.DocumentDetail:
    return schemas.document_detail(documents.get_document(services, document_id, caller.scope()), urls)


@router.get(
    "/documents/{document_id}/file",
    response_class=FileResponse,
    responses={
        200: {"description": "the file as it was indexed", "content": {"application/octet-stream": {}}},
        **schemas.error_responses(401, 404, 422),
    },
    summary="The original file of a document, as it was indexed",
)
def document_file(
    document_id: DocumentId,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
) -> FileResponse:
    found = documents.original_file(services, document_id, caller.scope())
    return FileResponse(
        found.path, media_type=found.mime, filename=found.name, content_disposition_type="inline",
        headers={"Cache-Control": "private, no-cache"},
    )


@router.delete(
    "/documents/{document_id}",
    response_model=schemas.Deleted,
    responses=schemas.error_responses(401, 404, 422),
    summary="Delete a document, its pages and their vectors",
)
def delete_document(
    document_id: DocumentId,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
) -> schemas.Deleted:
    documents.delete_document(services, document_id, caller.scope())
    return schemas.Deleted(document_id=document_id)


@router.post(
    "/documents",
    status_code=202,
    response_model=schemas.UploadAccepted,
    responses=schemas.error_responses(400, 401, 403, 413, 415, 422, 503),
    summary="Upload images or PDFs to index; returns the job that indexes them",
)
def upload_documents(
    files: Annotated[list[UploadFile], File(description="images or PDFs; the type is sniffed from the bytes")],
    collection: Annotated[schemas.CollectionName, Form()] = "default",
    metadata: Annotated[
        schemas.Text | None, Form(description="a JSON object of string fields set on every uploaded document")
    ] = None,
    password: Annotated[
        schemas.Password | None,
        Form(
            description="opens the uploaded PDFs that are encrypted (422 when it does not); kept in memory for the "
            "job only, never stored or logged",
            json_schema_extra={"format": "password", "writeOnly": True},
        ),
    ] = None,
    caller: Principal = Depends(principal),
    services: Services = Depends(get_services),
    settings: Settings = Depends(get_settings),
    jobs: JobRunner = Depends(get_jobs),
    urls: schemas.Urls = Depends(get_urls),
) -> schemas.UploadAccepted:
    caller.writable(collection)
    fields = _metadata(metadata)
    if len(files) > settings.api.max_upload_files:
        raise BadRequest(f"{len(files)} files is over the limit of {settings.api.max_upload_files} per request")
    stored = [
        documents.store_upload(
            services,
            upload.file,
            name=upload.filename or "upload",
            max_bytes=settings.api.max_upload_bytes,
            max_pixels=settings.api.max_upload_pixels,
            password=password,
        )
        for upload in files
    ]
    per_path = {str(s.path): {**fields, "filename": s.name} for s in stored}
    passwords = documents.upload_passwords(stored, password)
    job_id = jobs.submit([s.path for s in stored], collection, metadata=per_path, passwords=passwords)
    return schemas.UploadAccepted(
        job_id=job_id,
        collection=collection,
        files=[
            schemas.UploadedFile(name=s.name, sha256=s.sha256, size_bytes=s.size_bytes, kind=s.kind, mime=s.mime)
            for s in stored
        ],
        status_url=urls.job(job_id),
    )


def _metadata(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        return schemas.METADATA.validate_json(raw)
    except ValidationError:
        message = "must be a JSON object of up to 20 string fields, keys of letters, digits, _ and -"
        raise invalid("body", "metadata", message=message) from None
