"""What routes get through Depends: the services, settings, answerer, job runner and metrics held by the app."""

from __future__ import annotations

from fastapi import Request

from api.errors import ServiceUnavailable
from api.metrics import Metrics
from api.schemas import Urls
from mmrag.config import Settings
from mmrag.jobs import JobRunner
from mmrag.protocols import Answerer
from mmrag.services import Services


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_services(request: Request) -> Services:
    services = request.app.state.services
    if services is None:
        raise ServiceUnavailable("the service is still starting")
    return services


def get_answerer(request: Request) -> Answerer:
    answerer = request.app.state.answerer
    if answerer is None:
        raise ServiceUnavailable(f"no answerer is loaded: {request.app.state.answerer_off or 'not configured'}")
    return answerer


def get_jobs(request: Request) -> JobRunner:
    jobs = request.app.state.jobs
    if jobs is None:
        raise ServiceUnavailable("the job runner is not started")
    return jobs


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_urls(request: Request) -> Urls:
    return Urls(request.scope.get("root_path", ""))
