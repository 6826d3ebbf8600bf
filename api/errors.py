"""The one table from error classes to HTTP statuses, and the handlers that turn every error into a JSON body.

Every error response, ours or FastAPI's own (validation, unknown route, wrong method), has the body
`{"error": {"type": "...", "message": "..."}}`. The API's own errors (auth, limits) sit beside the library's:

    ApiError
     ├── Unauthorized          401  no API key, or an unknown one
     ├── Forbidden             403  the key may not use that collection; a job path outside its root
     ├── BadRequest            400  a request the server cannot make sense of (bad job path)
     ├── UnsupportedMediaType  415  a body that is neither JSON nor multipart where either is accepted
     ├── RequestTooLarge       413  the request body is over MMRAG_API__MAX_REQUEST_BYTES
     └── ServiceUnavailable    503  a part the request needs is not loaded (no answerer)

The answer server's failures (mmrag.errors.AnswererError) map to gateway statuses: unreachable 503, timeout 504,
rejected or broken replies 502.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmrag.errors import (
    AnswererError,
    AnswererRejectedError,
    AnswererServerError,
    AnswererTimeoutError,
    AnswererUnreachableError,
    BackendUnavailableError,
    CaptionsUnavailableError,
    CollectionBusyError,
    ConfigError,
    CorruptFileError,
    EmptyFileError,
    EncryptedPdfError,
    IndexError_,
    InputError,
    MmragError,
    ModelMismatchError,
    ModelUnavailableError,
    NotFoundError,
    TooLargeError,
    UnsupportedTypeError,
    VectorBackendUnavailableError,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the HTTP layer raises itself; its status comes from STATUS_BY_ERROR like every other."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class BadRequest(ApiError):
    pass


class UnsupportedMediaType(ApiError):
    pass


class RequestTooLarge(ApiError):
    pass


class ServiceUnavailable(ApiError):
    pass


# Looked up along the exception's MRO, so a subclass takes its nearest listed ancestor's status.
STATUS_BY_ERROR: dict[type[Exception], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    BadRequest: 400,
    UnsupportedMediaType: 415,
    RequestTooLarge: 413,
    ServiceUnavailable: 503,
    NotFoundError: 404,
    UnsupportedTypeError: 415,
    TooLargeError: 413,
    EmptyFileError: 422,
    CorruptFileError: 422,
    EncryptedPdfError: 422,
    InputError: 422,
    ConfigError: 400,  # UnknownNameError too: a request named something that does not exist
    ModelUnavailableError: 503,
    CaptionsUnavailableError: 503,  # the answerer configured has no VLM: the service's configuration
    # The answer server (vLLM and the like) failed: a gateway's errors, since we stand in front of it.
    AnswererUnreachableError: 503,
    AnswererTimeoutError: 504,
    AnswererRejectedError: 502,
    AnswererServerError: 502,
    AnswererError: 502,
    BackendUnavailableError: 503,
    # The collection was indexed with another model than the service runs: its configuration, not the request.
    ModelMismatchError: 503,
    IndexError_: 500,  # the index disagrees with SQL: the server's fault
    VectorBackendUnavailableError: 503,  # the Qdrant server is down or refuses us: retry later
    CollectionBusyError: 409,  # another process is writing the collection: retry later
    MmragError: 500,
}

_REASON_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 422: "invalid"}


def status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def type_of(exc: Exception) -> str:
    """A stable snake_case name: NotFoundError → not_found, TooLargeError → too_large, Forbidden → forbidden."""
    name = type(exc).__name__.rstrip("_").removesuffix("Error") or "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def invalid(*location: str | int, message: str) -> RequestValidationError:
    """A validation error we find ourselves, reported like FastAPI's own (422, the field named)."""
    return RequestValidationError([{"loc": location, "msg": message, "type": "value_error"}])


def error_body(error_type: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": error_type, "message": message}}


def error_response(exc: Exception) -> JSONResponse:
    status = status_of(exc)
    if status >= 500 and status != 503:
        log.error("request failed: %s", exc, exc_info=exc)
    headers = exc.headers if isinstance(exc, ApiError) else None
    return JSONResponse(error_body(type_of(exc), str(exc)), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers: ours and the library's errors, FastAPI's validation errors, HTTP errors, the rest."""

    async def handle_known(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def handle_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid", describe_validation(exc.errors())), status_code=422)

    async def handle_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _REASON_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(error_type, message), status_code=exc.status_code, headers=exc.headers)

    async def handle_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal server error; the server log has the details"), 500)

    app.add_exception_handler(ApiError, handle_known)
    app.add_exception_handler(MmragError, handle_known)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(Exception, handle_unexpected)


def describe_validation(errors: object) -> str:
    """FastAPI/pydantic error list → one readable line: `body.k: Input should be less than or equal to 100; ...`."""
    parts = []
    for error in errors if isinstance(errors, (list, tuple)) else []:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body" or len(error["loc"]) == 1)
        parts.append(f"{location or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
