"""docker-compose.yml, checked without a Docker engine: structure, references, and that its MMRAG_* settings parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
