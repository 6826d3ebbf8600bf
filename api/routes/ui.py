"""The web UI: `/` and its three files, served from the package (api/ui); no build step, nothing fetched at run time.

The page itself needs no key: everything it shows comes from the /v1 API, which checks the key the page sends."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from mmrag.errors import NotFoundError

router = APIRouter(include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
FILES = {"app.js": "text/javascript", "app.css": "text/css"}
# The files change with the installed version only; a reload after an upgrade revalidates them.
CACHING = {"Cache-Control": "no-cache"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=CACHING)


@router.get("/ui/{name}")
def asset(name: str) -> FileResponse:
    if name not in FILES:  # a fixed list: no path from the request ever reaches the filesystem
        raise NotFoundError(f"no UI file {name!r}")
    return FileResponse(UI_DIR / name, media_type=FILES[name], headers=CACHING)
