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
        if service.get("build") and "entrypoint" not in service:  # the Ray nodes run `ray start` (test below)
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
    assert str(settings.storage_dir()) in mounts

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


# --- past one machine: Qdrant, stateless replicas, the cluster file ----------------------------------------------


def merged(base: dict, override: dict) -> dict:
    """What `docker compose -f base -f override` makes of the two, for what these files use: mappings merge key by
    key (services, environment, depends_on, volumes), anything else in the override replaces the base's."""
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def service_settings(service: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in (service.get("environment") or {}).items():
        if key.startswith("MMRAG_"):
            monkeypatch.setenv(key, interpolate(str(value), {}))
    return Settings()


def test_api_replicas_share_nothing_but_postgres_qdrant_and_the_shared_volume(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    api, indexer, qdrant = services["api"], services["indexer"], services["qdrant"]
    assert api["deploy"]["replicas"] >= 2
    low, high = str(api["ports"][0]).split(":")[0].split("-")  # one host port per replica
    assert int(high) - int(low) + 1 == api["deploy"]["replicas"]
    assert qdrant["image"].startswith("qdrant/qdrant:v") and qdrant["healthcheck"]["test"]
    for name, service in (("api", api), ("indexer", indexer)):
        settings = service_settings(service, monkeypatch)
        assert settings.index.backend == "qdrant", name
        url = urlsplit(settings.index.qdrant.url)
        assert (url.hostname, url.port) == ("qdrant", 6333), name
        assert service["depends_on"]["qdrant"]["condition"] == "service_healthy", name
        mounts = {mount.split(":")[1]: mount.split(":")[0] for mount in service["volumes"]}
        # the shared directory is the one named volume both mount; the data dir is the container's own
        assert mounts.get(str(settings.shared_dir)) == "shared", name
        assert str(settings.data_dir) not in mounts, name
        assert settings.database_url().startswith("postgresql"), name
    assert "shared" in compose["volumes"] and "qdrant" in compose["volumes"]


def test_the_cluster_file_makes_three_qdrant_nodes_with_two_replicas(compose: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = merged(compose, yaml.safe_load((ROOT / "docker-compose.qdrant-cluster.yml").read_text()))
    services = cluster["services"]
    nodes = [name for name, service in services.items() if str(service.get("image", "")).startswith("qdrant/")]
    assert sorted(nodes) == ["qdrant", "qdrant-1", "qdrant-2"]
    assert {services[name]["image"] for name in nodes} == {compose["services"]["qdrant"]["image"]}
    first = services["qdrant"]["command"]
    assert first[first.index("--uri") + 1] == "http://qdrant:6335"
    for name in ("qdrant-1", "qdrant-2"):
        node = services[name]
        assert node["command"][node["command"].index("--bootstrap") + 1] == "http://qdrant:6335"
        assert node["depends_on"]["qdrant"]["condition"] == "service_healthy"
        assert node["volumes"][0].split(":")[0] in cluster["volumes"]  # each node its own storage
    for name in nodes:
        assert services[name]["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
    for name in ("api", "indexer"):
        settings = service_settings(services[name], monkeypatch)
        assert settings.index.qdrant.replication_factor == 2 and settings.index.qdrant.shard_number == 3, name
        assert settings.index.backend == "qdrant" and settings.shared_dir is not None, name
        assert {"qdrant", "qdrant-1", "qdrant-2", "postgres"} <= set(services[name]["depends_on"]), name
    # everything the base file checks still holds for the merged one
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown service {dependency}"


# --- past one machine: bulk jobs on a Ray cluster -----------------------------------------------------------------


def test_the_ray_profile_makes_a_head_gpu_workers_and_a_job_that_drives_them(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    services = compose["services"]
    head, worker, job = services["ray-head"], services["ray-gpu-worker"], services["indexer-ray"]
    assert head["profiles"] == worker["profiles"] == job["profiles"] == ["ray"]  # not started by a plain `up`
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in head["entrypoint"][2:] if "=" in arg)
    assert head["entrypoint"][:3] == ["ray", "start", "--head"] and "--block" in head["entrypoint"]
    assert f"--address=ray-head:{flags['port']}" in worker["entrypoint"] and "--block" in worker["entrypoint"]
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["count"] == 1
    # the job reaches the head's client server, and its command line is one the CLI takes
    assert job["command"][:2] == ["index", "--ray"]
    address = urlsplit(job["command"][2])
    assert (address.scheme, address.hostname, str(address.port)) == ("ray", "ray-head", flags["ray-client-server-port"])
    assert job["depends_on"]["ray-head"]["condition"] == "service_healthy"
    captured: dict[str, object] = {}

    def run_index(services, paths, **kwargs):  # noqa: ANN001, ANN202 - what the CLI would run, caught
        captured["address"] = services.settings.ray.address
        raise SystemExit(0)

    monkeypatch.setattr("mmrag.run_index", run_index)
    monkeypatch.setattr("mmrag.build_services", lambda settings: type("S", (), {"settings": settings,
                                                                               "close": lambda self: None})())
    monkeypatch.setattr("mmrag.start_worker_server", lambda settings: None)
    result = CliRunner().invoke(app, job["command"])
    assert result.exit_code == 0, result.output
    assert captured["address"] == "ray://ray-head:10001"
    # every node sees the corpus and the shared directory where the job's own container does
    for node in (head, worker):
        assert {v for v in node["volumes"] if not v.startswith("./models")} >= {
            v for v in job["volumes"] if v.startswith(("shared:", "./corpus:"))
        }
        assert node["environment"]["MMRAG_SHARED_DIR"] == job["environment"]["MMRAG_SHARED_DIR"]
        # the client connection of the job needs token auth off on both ends (tests/ray/test_ray_client.py)
        assert node["environment"]["RAY_AUTH_MODE"] == job["environment"]["RAY_AUTH_MODE"] == "disabled"
        units = {"m": 2**20, "g": 2**30}
        size = str(node["shm_size"]).lower().removesuffix("b")
        assert int(size[:-1]) * units[size[-1]] >= 4 * 2**30  # the object store lives in /dev/shm
    for key, value in job["environment"].items():
        if key.startswith("MMRAG_"):
            monkeypatch.setenv(key, str(value))
    assert Settings().ray.actors == 1
