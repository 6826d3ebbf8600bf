"""The embedder registries: profile names, the tiny-random profile, unknown names, and a light package import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmrag.config import EmbedderSettings
from mmrag.embedders import IMAGE_EMBEDDERS, MULTIVECTOR_EMBEDDERS, TEXT_EMBEDDERS, is_meaningless
from mmrag.errors import ModelUnavailableError, UnknownNameError
from mmrag.protocols import ImageEmbedder, MultiVectorEmbedder, TextEmbedder

REGISTRIES = [IMAGE_EMBEDDERS, MULTIVECTOR_EMBEDDERS, TEXT_EMBEDDERS]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda registry: registry.kind)
def test_each_registry_has_default_and_tiny_random(registry) -> None:  # noqa: ANN001 - Registry[...] of three kinds
    assert registry.names() == ["default", "tiny-random"]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda registry: registry.kind)
def test_unknown_profile_lists_the_known_ones(registry) -> None:  # noqa: ANN001
    with pytest.raises(UnknownNameError, match="'huge'; known: default, tiny-random"):
        registry.create("huge", EmbedderSettings())


def test_tiny_random_profile_builds_all_three() -> None:
    settings = EmbedderSettings(profile="tiny-random", device="cpu")
    image = IMAGE_EMBEDDERS.create(settings.profile, settings)
    multivector = MULTIVECTOR_EMBEDDERS.create(settings.profile, settings)
    text = TEXT_EMBEDDERS.create(settings.profile, settings)
    assert isinstance(image, ImageEmbedder) and isinstance(multivector, MultiVectorEmbedder)
    assert isinstance(text, TextEmbedder)
    assert (image.model_id, multivector.model_id) == ("tiny-random:clip", "tiny-random:colqwen2")
    assert (image.revision, multivector.revision) == ("random-init", "random-init")
    assert is_meaningless(image) and is_meaningless(multivector)
    # The tiny-random text embedder is the real (small) MiniLM, so its vectors do mean something.
    assert not is_meaningless(text) and text.model_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_default_profile_refuses_models_that_are_not_on_this_machine(hf_cache: Path) -> None:
    settings = EmbedderSettings(device="cpu")
    for registry in (IMAGE_EMBEDDERS, MULTIVECTOR_EMBEDDERS):
        with pytest.raises(ModelUnavailableError):
            registry.create("default", settings)


def test_default_profile_passes_settings_through(saved_colqwen2: Path) -> None:
    settings = EmbedderSettings(device="cpu")
    settings.colpali.model = str(saved_colqwen2)
    settings.colpali.batch_size = 3
    embedder = MULTIVECTOR_EMBEDDERS.create("default", settings)
    assert (embedder.family, embedder.batch_size) == ("ColQwen2", 3)


def test_importing_the_package_loads_no_model_library() -> None:
    heavy = ["torch", "open_clip", "colpali_engine", "transformers", "sentence_transformers"]
    code = f"import sys, mmrag.embedders; print(sorted(set({heavy!r}) & set(sys.modules)))"
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert result.stdout.strip() == "[]"
