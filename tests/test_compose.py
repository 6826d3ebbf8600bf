"""docker-compose.yml, checked without a Docker engine: structure, references, that its MMRAG_* settings parse, and
that the API, the indexer job and the vLLM server fit together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from api.schemas import AskRequest
from indexer.cli import app
from mmrag.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_are_buildable_and_references_resolve(compose: dict) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = ROOT / (service["build"] if isinstance(service["build"], str) else service["build"]["context"])
            assert (context / "Dockerfile").is_file(), name
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"


def test_indexer_environment_is_valid_settings(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        mmrag_vars = {key: str(value) for key, value in environment.items() if key.startswith("MMRAG_")}
        if not mmrag_vars:
            continue
        for key, value in mmrag_vars.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert str(settings.data_dir) == mmrag_vars.get("MMRAG_DATA_DIR", str(settings.data_dir))
        if "MMRAG_DATABASE__URL" in mmrag_vars:
            assert settings.database_url() == mmrag_vars["MMRAG_DATABASE__URL"], name


def test_indexer_command_is_a_cli_command(compose: dict) -> None:
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    for name, service in compose["services"].items():
        if service.get("build"):
            assert service["command"][0] in commands, name
    gpu = compose["services"]["indexer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


# --- the query service and the vLLM answer server ------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's ${NAME} and ${NAME:-default}, as `docker compose config` would resolve them."""

    def resolve(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if environment.get(name):
            return environment[name]
        assert default is not None, f"${{{name}}} has no default and is not set"
        return default

    return _VARIABLE.sub(resolve, value)


def api_settings(compose: dict, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> Settings:
    for key, value in (compose["services"]["api"].get("environment") or {}).items():
        if key.startswith("MMRAG_"):
            monkeypatch.setenv(key, interpolate(str(value), environment))
    return Settings()


def test_api_serves_with_keys_on_and_asks_the_vllm_server(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    api, vllm = services["api"], services["vllm"]
    command = api["command"]
    assert command[0] == "serve"
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"  # reachable from outside its container
    assert any(str(mapping).endswith(f":{port}") for mapping in api["ports"])
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "vllm" in api["depends_on"]

    settings = api_settings(compose, monkeypatch, {})
    assert settings.api.keys == {"change-me": ["*"]}  # keys on, even with nothing set
    assert api_settings(compose, monkeypatch, {"MMRAG_API_KEY": "s3cret"}).api.keys == {"s3cret": ["*"]}

    # Every job root is a folder mounted into the container.
    mounts = {mount.split(":")[1] for mount in api["volumes"]}
    assert settings.api.job_roots and all(str(root) in mounts for root in settings.api.job_roots.values())
    assert str(settings.data_dir) in mounts

    # The answerer asks the vLLM service, on vLLM's port, for the model vLLM serves.
    assert settings.answerer.kind == "openai"
    url = urlsplit(settings.answerer.base_url)
    assert (url.hostname, url.port, url.path) == ("vllm", 8000, "/v1")
    assert settings.answerer.model == vllm["command"][0]
    assert vllm["image"].startswith("vllm/vllm-openai:") and not vllm["image"].endswith(":latest")
    # vLLM takes as many page images in one prompt as an ask may retrieve.
    largest_k = AskRequest.model_fields["k"].metadata[-1].le
    images = json.loads(vllm["command"][vllm["command"].index("--limit-mm-per-prompt") + 1])["image"]
    assert images >= largest_k
    gpu = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "1"  # weights from ./models, never downloaded
    for name in ("api", "vllm", "postgres"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    health = " ".join(api["healthcheck"]["test"])
    assert f":{port}/ready" in health


def test_indexer_stays_a_one_off_job(compose: dict) -> None:
    services = compose["services"]
    assert services["indexer"]["profiles"] == ["jobs"]  # not started by `docker compose up`
    assert "profiles" not in services["api"] and "profiles" not in services["vllm"]
    assert services["indexer"]["volumes"][0] == services["api"]["volumes"][0]  # one data volume, shared


def test_services_that_run_index_jobs_have_room_in_dev_shm(compose: dict) -> None:
    """Bulk jobs' workers hand pages back through /dev/shm; Docker's default 64 MB would send them to the pipe."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    for name in ("indexer", "indexer-gpu", "api"):
        size = str(compose["services"][name].get("shm_size", "64m")).lower().removesuffix("b")
        assert int(size[:-1]) * units[size[-1]] >= 2**30, name
