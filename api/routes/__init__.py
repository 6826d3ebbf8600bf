"""The /v1 routers and the unversioned health routes; each route parses, makes one library call, maps the result."""

from __future__ import annotations

from api.routes import ask, documents, health, jobs, pages, search, ui

__all__ = ["ask", "documents", "health", "jobs", "pages", "search", "ui"]
