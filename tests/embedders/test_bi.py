"""The single-vector Bi* families through the real loader: tiny random-init checkpoints saved to a directory, loaded
by `load_bi`, their vectors and scores held to colpali-engine's own (the model's forward on the processor's output,
the processor's `score`); Bi* and Col* checkpoints of one model_type are told apart by their config, never loaded as
each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.config import BipageSettings, EmbedderSettings
from mmrag.embedders import BIPAGE_EMBEDDERS, model_choices
from mmrag.embedders.bi import BI_FAMILIES, BiPageEmbedder, bi_family_for_config, load_bi
from mmrag.embedders.colpali import load_colpali
from mmrag.embedders.tiny import save_tiny_colqwen2
from mmrag.errors import ModelUnavailableError
from mmrag.protocols import ImageEmbedder

from .test_fidelity import TOLERANCE
from .tiny_bi import TINY_BI_FAMILIES, build_tiny_bi, save_tiny_bi


@pytest.fixture(scope="module", params=list(TINY_BI_FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def checkpoint(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A directory name that claims a multi-vector family: config.json decides.
    return save_tiny_bi(family, tmp_path_factory.mktemp(family) / "colqwen2-v1.0")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> BiPageEmbedder:
    return load_bi(str(checkpoint), device="cpu", batch_size=3)


def test_the_checkpoint_shares_model_type_and_names_the_bi_class(family: str, checkpoint: Path) -> None:
    _, model_class, _, _, model_type, _, _ = TINY_BI_FAMILIES[family]
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == model_type and config["architectures"] == [model_class]
    assert BI_FAMILIES[model_type][model_class].model_class == model_class
    assert list(checkpoint.glob("*.safetensors")) and (checkpoint / "processor_config.json").is_file()


def test_the_loader_picks_the_family_from_config(family: str, loaded: BiPageEmbedder, checkpoint: Path) -> None:
    _, model_class, processor_class, _, _, dim, _ = TINY_BI_FAMILIES[family]
    assert isinstance(loaded, ImageEmbedder)
    assert type(loaded.model).__name__ == loaded.family.model_class == model_class
    assert type(loaded.processor).__name__ == processor_class
    assert loaded.dim == dim
    assert loaded.model_id == f"bi:local-dir:{checkpoint}"
    assert loaded.attn_implementation == "eager"  # CPU


def test_pages_and_queries_give_one_unit_vector_each(
    loaded: BiPageEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    page_vectors = loaded.embed_images(pages)
    query_vectors = loaded.embed_queries(queries)
    assert page_vectors.shape == (len(pages), loaded.dim) and page_vectors.dtype == np.float32
    assert query_vectors.shape == (len(queries), loaded.dim)
    np.testing.assert_allclose(np.linalg.norm(page_vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(query_vectors, axis=1), 1.0, atol=1e-5)
    assert np.ptp(page_vectors, axis=0).max() > 1e-4  # different pages, different vectors
    assert loaded.embed_images([]).shape == (0, loaded.dim)
    np.testing.assert_array_equal(loaded.embed_texts(queries), query_vectors)  # texts are queries


def test_vectors_and_scores_equal_colpali_engines_own(
    family: str, loaded: BiPageEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    """Against the in-memory model (same seed, not read through our loader) on one processor batch of every item
    (our batches of 3 pad differently), and the processor's own score (score_single_vector)."""
    model, processor = build_tiny_bi(family)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        their_pages = model(**processor.process_images(pages)).float()
        their_queries = model(**processor.process_queries(queries)).float()
    ours_pages, ours_queries = loaded.embed_images(pages), loaded.embed_queries(queries)
    assert np.abs(ours_pages - their_pages.numpy()).max() <= TOLERANCE
    assert np.abs(ours_queries - their_queries.numpy()).max() <= TOLERANCE
    # a Bi* processor's score is score_single_vector; BiPali's ColPaliProcessor's own score is multi-vector
    score = processor.score if type(processor).__name__.startswith("Bi") else processor.score_single_vector
    their_scores = score(list(their_queries), list(their_pages), device="cpu").numpy()
    assert their_scores.shape == (len(queries), len(pages))
    assert np.abs(ours_queries @ ours_pages.T - their_scores).max() <= TOLERANCE


def test_a_bi_checkpoint_is_not_loaded_as_a_multi_vector_model(family: str, checkpoint: Path) -> None:
    model_class = TINY_BI_FAMILIES[family][1]
    with pytest.raises(ModelUnavailableError, match=f"single-vector {model_class} checkpoint.*BIPAGE__MODEL"):
        load_colpali(str(checkpoint), device="cpu")


def test_a_multi_vector_checkpoint_is_not_loaded_as_a_bi_model(tmp_path: Path) -> None:
    checkpoint = save_tiny_colqwen2(tmp_path / "biqwen2-v0.1")  # the name claims Bi*; the config says ColQwen2
    with pytest.raises(ModelUnavailableError, match="multi-vector ColQwen2 checkpoint.*COLPALI__MODEL"):
        load_bi(str(checkpoint), device="cpu")


@pytest.mark.parametrize(
    ("config", "adapter_class", "refused"),
    [
        ({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}, None, "not a single-vector"),
        ({"model_type": "qwen2_vl"}, None, "names no architectures"),
        ({"model_type": "llava", "architectures": ["BiQwen2"]}, None, "not a supported Bi"),
        ({"model_type": "idefics3", "architectures": ["BiQwen2"]}, None, "expected BiIdefics3"),
        ({"model_type": "qwen2_vl", "architectures": ["ColQwen2"]}, "ColQwen2", "multi-vector ColQwen2"),
    ],
)
def test_configs_that_are_not_a_bi_family_are_refused(config: dict, adapter_class: str | None, refused: str) -> None:
    with pytest.raises(ModelUnavailableError, match=refused):
        bi_family_for_config("some/model", config, adapter_class=adapter_class)


def test_an_adapter_is_the_class_it_was_trained_on_not_its_bases() -> None:
    base = {"model_type": "paligemma", "architectures": ["ColPali"]}  # a Col* base under a Bi* adapter
    assert bi_family_for_config("vidore/bipali", base, adapter_class="BiPaliProj").model_class == "BiPaliProj"
    assert bi_family_for_config("x", {"model_type": "paligemma", "architectures": ["BiPali"]}).pooling == "mean"


def test_a_checkpoint_with_missing_weights_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    checkpoint = save_tiny_bi("biqwen2", tmp_path / "biqwen2")
    weights = next(checkpoint.glob("*.safetensors"))
    tensors = load_file(weights)
    dropped = next(name for name in tensors if "layers.1." in name)
    save_file({name: value for name, value in tensors.items() if name != dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ModelUnavailableError, match="lacks weights for 1 BiQwen2 parameters"):
        load_bi(str(checkpoint), device="cpu")


def test_the_profiles(tmp_path: Path) -> None:
    """default: the configured checkpoint, none set is a clear reason; tiny-random: a tiny BiQwen2 (meaningless)."""
    with pytest.raises(ModelUnavailableError, match="no Bi\\* checkpoint is set"):
        BIPAGE_EMBEDDERS.create("default", EmbedderSettings(bipage=BipageSettings(enabled=True)))
    checkpoint = save_tiny_bi("biqwen2", tmp_path / "biqwen2")
    settings = EmbedderSettings(device="cpu", bipage=BipageSettings(enabled=True, model=str(checkpoint), batch_size=2))
    default = BIPAGE_EMBEDDERS.create("default", settings)
    assert default.model_id == f"bi:local-dir:{checkpoint}" and default.batch_size == 2 and not default.meaningless
    assert model_choices(settings)["bipage"].model == str(checkpoint)
    tiny = BIPAGE_EMBEDDERS.create("tiny-random", settings.model_copy(update={"profile": "tiny-random"}))
    assert tiny.meaningless and tiny.family.model_class == "BiQwen2" and tiny.dim == 64
    assert "bipage" not in model_choices(EmbedderSettings())  # off by default


def test_a_last_token_model_whose_tokenizer_pads_on_the_right_is_refused() -> None:
    """BiQwen2 pools the last position: right padding would hand a batch's shorter items a pad token's state."""
    model, processor = build_tiny_bi("biqwen2")
    processor.tokenizer.padding_side = "right"
    with pytest.raises(ModelUnavailableError, match="pools the last token, but its tokenizer pads on the right"):
        BiPageEmbedder(model, processor, family=BI_FAMILIES["qwen2_vl"]["BiQwen2"], model_id="x", revision="r",
                       device="cpu")  # fmt: skip
