"""The bulk job's prepared inputs give the same vectors as the embedders' PIL path (same model, same pages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.embedders.clip import OpenClipEmbedder
from mmrag.embedders.colpali import ColPaliEmbedder


def test_clip_inputs_give_the_vectors_of_embed_images(tiny_clip: OpenClipEmbedder, pages: list[Image.Image]) -> None:
    spec = tiny_clip.input_spec()
    assert spec is not None and spec.size == 32
    prepared = [spec.from_image(page) for page in pages]
    np.testing.assert_array_equal(tiny_clip.embed_inputs(prepared), tiny_clip.embed_images(pages))


def test_clip_without_a_plain_resize_and_crop_takes_no_inputs(tiny_clip: OpenClipEmbedder) -> None:
    from torchvision import transforms

    other = OpenClipEmbedder(
        tiny_clip.model, transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]), tiny_clip.tokenizer,
        model_id="x", revision="y", device="cpu",
    )
    other.preprocess = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    assert other.input_spec() is None


def test_colpali_inputs_made_page_by_page_give_the_vectors_of_a_padded_batch(
    tiny_multivector: ColPaliEmbedder, pages: list[Image.Image], tmp_path: Path
) -> None:
    """Pages of different sizes need padding: collating the per-page outputs equals the processor's own batch."""
    from mmrag.ingest.prepare import _processor

    spec = tiny_multivector.input_spec(tmp_path)
    prepared = [spec.from_image(page) for page in pages]
    # The workers' processor is the saved copy, reloaded; the batch to match is that processor's.
    reloaded = _processor(spec.processor_class, spec.processor_dir)
    expected = tiny_multivector._encode_batch(reloaded.process_images(pages))
    got = tiny_multivector.embed_inputs(prepared)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_colqwen2_inputs_from_a_saved_processor_give_the_vectors_of_embed_images(
    tiny_colqwen2: ColPaliEmbedder, pages: list[Image.Image], tmp_path: Path
) -> None:
    spec = tiny_colqwen2.input_spec(tmp_path)
    got = tiny_colqwen2.embed_inputs([spec.from_image(page) for page in pages])
    for g, e in zip(got, tiny_colqwen2.embed_images(pages), strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)
