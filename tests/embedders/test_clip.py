"""OpenClipEmbedder and load_clip on tiny random-init open_clip models; refusals of specs without real weights."""

from __future__ import annotations

import logging
import json
import socket
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.embedders.clip import OpenClipEmbedder, load_clip
from mmrag.embedders.tiny import TINY_CLIP_CONFIG, build_tiny_clip_embedder
from mmrag.errors import ModelUnavailableError
from mmrag.protocols import ImageEmbedder


def test_satisfies_the_protocol(tiny_clip: OpenClipEmbedder) -> None:
    assert isinstance(tiny_clip, ImageEmbedder)
    assert (tiny_clip.model_id, tiny_clip.revision, tiny_clip.dim) == ("tiny-random:clip", "random-init", 32)
    assert tiny_clip.meaningless is True


def test_vectors_are_float32_and_unit_length(tiny_clip: OpenClipEmbedder, pages: list[Image.Image]) -> None:
    for vectors, count in ((tiny_clip.embed_images(pages), len(pages)), (tiny_clip.embed_texts(["a", "b c"]), 2)):
        assert vectors.shape == (count, tiny_clip.dim)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(tiny_clip: OpenClipEmbedder) -> None:
    assert tiny_clip.embed_images([]).shape == (0, tiny_clip.dim)
    assert tiny_clip.embed_texts([]).shape == (0, tiny_clip.dim)


def test_same_seed_same_vectors_other_seed_other_vectors(pages: list[Image.Image]) -> None:
    first = build_tiny_clip_embedder(device="cpu", seed=0).embed_images(pages)
    again = build_tiny_clip_embedder(device="cpu", seed=0).embed_images(pages)
    other = build_tiny_clip_embedder(device="cpu", seed=1).embed_images(pages)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-2


def test_batching_does_not_change_vectors(tiny_clip: OpenClipEmbedder, pages: list[Image.Image]) -> None:
    model, preprocess, tokenizer = tiny_clip.model, tiny_clip.preprocess, tiny_clip.tokenizer
    one_by_one = OpenClipEmbedder(model, preprocess, tokenizer, model_id="t", revision="r", device="cpu", batch_size=1)
    np.testing.assert_allclose(one_by_one.embed_images(pages), tiny_clip.embed_images(pages), atol=1e-5)
    texts = ["one", "two words", "three words here"]
    np.testing.assert_allclose(one_by_one.embed_texts(texts), tiny_clip.embed_texts(texts), atol=1e-5)


def test_local_dir_loads_through_open_clip(
    saved_clip: Path, tiny_clip: OpenClipEmbedder, pages: list[Image.Image]
) -> None:
    loaded = load_clip(f"local-dir:{saved_clip}", device="cpu", batch_size=3)
    assert loaded.model_id == f"open_clip:local-dir:{saved_clip.resolve()}"
    assert (loaded.revision, loaded.dim, loaded.batch_size, loaded.meaningless) == ("local", 32, 3, False)
    np.testing.assert_allclose(loaded.embed_images(pages), tiny_clip.embed_images(pages), atol=1e-6)
    np.testing.assert_allclose(loaded.embed_texts(["a page"]), tiny_clip.embed_texts(["a page"]), atol=1e-6)


@pytest.mark.parametrize("spec", ["ViT-B-32", "ViT-B-32:"])
def test_spec_without_pretrained_weights_is_refused(spec: str) -> None:
    with pytest.raises(ModelUnavailableError, match="no pretrained weights named") as caught:
        load_clip(spec)
    assert f"'{spec}'" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("No-Such-Arch:laion2b_s34b_b79k", "not an open_clip architecture"),
        ("ViT-B-32:no_such_tag", "neither a pretrained tag"),
        ("local-dir:/no/such/clip", "does not exist"),
        ("hf-hub:", "empty hub id"),
    ],
)
def test_bad_specs_are_refused_before_loading(spec: str, reason: str) -> None:
    with pytest.raises(ModelUnavailableError, match=reason):
        load_clip(spec)


def test_local_dir_without_weights_is_refused_not_random_initialised(saved_clip: Path, tmp_path: Path) -> None:
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(saved_clip / "open_clip_config.json", config_only)
    with pytest.raises(ModelUnavailableError, match="could not load"):
        load_clip(f"local-dir:{config_only}")


def test_pretrained_weights_missing_from_the_cache_are_refused(hf_cache: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelUnavailableError, match="ViT-B-32:laion2b_s34b_b79k") as caught:
        load_clip("ViT-B-32:laion2b_s34b_b79k")
    assert "Failed to download weights" in str(caught.value)  # the reason is in mmrag's error
    # and open_clip's own `ERROR root: Failed to download ...` no longer comes first: it is a debug line of ours
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any(r.name == "mmrag.embedders.clip" and "Failed to download" in r.getMessage() for r in caplog.records)
    with pytest.raises(ModelUnavailableError, match="hf-hub:mmrag-test/no-such-clip"):
        load_clip("hf-hub:mmrag-test/no-such-clip")


def test_tiny_config_keeps_the_real_tokenizer_vocabulary(saved_clip: Path) -> None:
    assert TINY_CLIP_CONFIG["text_cfg"]["vocab_size"] == 49408
    saved = json.loads((saved_clip / "open_clip_config.json").read_text())
    assert saved["model_cfg"] == TINY_CLIP_CONFIG


def test_a_pretrained_tag_missing_from_the_cache_fails_without_going_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # even with offline mode off, loading answers from the (empty) cache only
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    connections: list[object] = []
    real_getaddrinfo = socket.getaddrinfo

    def record_lookup(host: object, *args: object, **kwargs: object) -> object:
        connections.append(host)  # every connection to a named host starts with this lookup
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", record_lookup)
    with pytest.raises(ModelUnavailableError, match="ViT-B-32:laion2b_s34b_b79k"):
        load_clip("ViT-B-32:laion2b_s34b_b79k")
    assert connections == []
    assert constants.HF_HUB_OFFLINE is False
