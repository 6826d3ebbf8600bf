"""A collection remembers the models it was indexed with: querying or indexing it with another model is one clear
error naming both, `mmrag index --reembed` moves it to the configured model (every page embedded again from its
stored image, no file read again), and which model each retriever loads, and why, is said by `mmrag status` and
GET /ready (the configured one, or the default for the device)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from indexer.cli import app
from mmrag import ModelMismatchError, Settings, build_services, index_sizes, indexed_models, load_image, search
from mmrag.config import EmbedderSettings
from mmrag.embedders import DEFAULT_MODELS, chosen_model, model_choices
from mmrag.embedders.tiny import save_tiny_clip
from tests.conftest import cli_environment
from tests.factories import make_corpus


@pytest.fixture
def two_clips(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The CLI pointed at a fresh database with real loading (default profile) of CLIP alone, from one of two tiny
    local checkpoints: the same architecture with different weights, so different models."""
    cli_environment(monkeypatch, tmp_path, database_url)
    monkeypatch.setenv("MMRAG_EMBEDDERS__PROFILE", "default")
    monkeypatch.setenv("MMRAG_EMBEDDERS__COLPALI__ENABLED", "false")
    monkeypatch.setenv("MMRAG_EMBEDDERS__TEXT__ENABLED", "false")
    first = f"local-dir:{save_tiny_clip(tmp_path / 'clip-a', seed=0)}"
    second = f"local-dir:{save_tiny_clip(tmp_path / 'clip-b', seed=1)}"
    monkeypatch.setenv("MMRAG_EMBEDDERS__CLIP__MODEL", first)
    make_corpus(tmp_path / "corpus", images=3, pdfs=1)
    return first, second


def _top_hit_of_an_image(path: Path) -> str:
    services = build_services(Settings())
    try:
        picture = load_image(path, max_pixels=services.settings.ingest.max_pixels)
        return Path(search(services, "default", image=picture, k=1)[0].path).name
    finally:
        services.close()


def test_another_model_is_a_clear_error_and_reembed_moves_the_collection_to_it(
    two_clips: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_clips
    runner = CliRunner()
    corpus = tmp_path / "corpus"
    assert runner.invoke(app, ["index", str(corpus)]).exit_code == 0
    assert _top_hit_of_an_image(corpus / "images" / "img1.png") == "img1.png"

    monkeypatch.setenv("MMRAG_EMBEDDERS__CLIP__MODEL", second)
    with pytest.raises(ModelMismatchError) as caught:
        _top_hit_of_an_image(corpus / "images" / "img1.png")
    message = str(caught.value)
    assert "collection 'default'" in message and "clip" in message
    assert "clip-a" in message and "clip-b" in message  # both models named
    assert "mmrag index --reembed" in message

    refused = runner.invoke(app, ["index", str(corpus)])  # a job without --reembed does not mix two models
    assert refused.exit_code != 0 and isinstance(refused.exception, ModelMismatchError)

    moved = runner.invoke(app, ["index", "--reembed", str(corpus)])
    assert moved.exit_code == 0, moved.output
    assert "lost_vectors" in moved.output  # recovery found the dropped store's vectors gone and re-embedded them
    services = build_services(Settings())
    try:
        pages = index_sizes(services).pages["default"]
        made = indexed_models(services)[("default", "clip")]
        assert [(dim, n) for _, dim, n in made] == [(32, pages)] and "clip-b" in made[0][0]
    finally:
        services.close()
    assert _top_hit_of_an_image(corpus / "images" / "img1.png") == "img1.png"  # searched with the new model's vectors

    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert f"clip: {second} (set by MMRAG_EMBEDDERS__CLIP__MODEL)" in status.output
    assert "collection 'default' clip vectors:" in status.output and "clip-b" in status.output

    monkeypatch.setenv("MMRAG_EMBEDDERS__CLIP__MODEL", first)  # the old model again: the collection is not its
    from api.app import create_app

    with TestClient(create_app()) as client:
        response = client.post("/v1/search", json={"query": "invoice", "collections": ["default"]})
        assert response.status_code == 503, response.text
        assert "mmrag index --reembed" in response.text
        ready = client.get("/ready").json()
        assert ready["models"]["clip"] == {"model": first, "why": "set by MMRAG_EMBEDDERS__CLIP__MODEL"}


def test_unset_models_are_the_devices_defaults() -> None:
    settings = EmbedderSettings()
    cpu = chosen_model(settings, "colpali", "cpu")
    assert cpu.model == DEFAULT_MODELS["cpu"]["colpali"] and "CPU" in cpu.why
    gpu = chosen_model(settings, "clip", "cuda:1")
    assert gpu.model == DEFAULT_MODELS["cuda"]["clip"] and "cuda:1" in gpu.why
    assert DEFAULT_MODELS["cuda"]["clip"] != DEFAULT_MODELS["cpu"]["clip"]  # a larger CLIP where a GPU runs it
    settings.colpali.model = "vidore/colqwen2-v1.0"
    assert chosen_model(settings, "colpali", "cuda") == chosen_model(settings, "colpali", "cpu")
    assert chosen_model(settings, "colpali", "cpu").why == "set by MMRAG_EMBEDDERS__COLPALI__MODEL"
    settings.clip.enabled = False
    assert set(model_choices(settings)) == {"colpali", "text"}  # this machine has no GPU: the CPU defaults
    assert model_choices(EmbedderSettings())["clip"].model == DEFAULT_MODELS["cpu"]["clip"]
