"""Fixtures for the embedder tests: tiny seeded models, sample pages, an isolated offline Hugging Face cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from mmrag.embedders.clip import OpenClipEmbedder
from mmrag.embedders.colpali import ColPaliEmbedder
from mmrag.embedders.text import SentenceTransformerEmbedder

from .samples import make_page

# huggingface_hub reads HF_HUB_OFFLINE once, at import, so it must be set before any test module imports it.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No embedder test may reach a model hub, even if huggingface_hub was imported before this conftest."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so a test sees exactly the models it puts there."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def pages() -> list[Image.Image]:
    """Pages of different sizes and modes, so batches need padding."""
    return [make_page(0), make_page(1, (60, 120)), make_page(2, (120, 90)), make_page(3).convert("L")]


@pytest.fixture(scope="session")
def queries() -> list[str]:
    return ["invoice", "total amount due on the quarterly tax report", "a red square", "what is the date?"]


@pytest.fixture(scope="session")
def tiny_clip() -> OpenClipEmbedder:
    from mmrag.embedders.tiny import build_tiny_clip_embedder

    return build_tiny_clip_embedder(device="cpu")


@pytest.fixture(scope="session")
def tiny_colqwen2() -> ColPaliEmbedder:
    from mmrag.embedders.tiny import build_tiny_colpali_embedder

    return build_tiny_colpali_embedder(device="cpu")


@pytest.fixture(scope="session")
def tiny_colidefics3() -> ColPaliEmbedder:
    from mmrag.embedders.tiny import build_tiny_colidefics3

    model, processor = build_tiny_colidefics3()
    return ColPaliEmbedder(model, processor, model_id="tiny-random:colidefics3", revision="random-init", device="cpu")


@pytest.fixture(scope="session", params=["colqwen2", "colidefics3"])
def tiny_multivector(request: pytest.FixtureRequest) -> ColPaliEmbedder:
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def saved_colqwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ColQwen2 checkpoint in a directory whose name claims another family: config.json must win."""
    from mmrag.embedders.tiny import save_tiny_colqwen2

    return save_tiny_colqwen2(tmp_path_factory.mktemp("checkpoints") / "colpali-v1.2-paligemma")


@pytest.fixture(scope="session")
def saved_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrag.embedders.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("checkpoints") / "tiny-clip")


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    from mmrag.embedders.text import load_text_embedder

    return load_text_embedder("all-MiniLM-L6-v2", device="cpu")
