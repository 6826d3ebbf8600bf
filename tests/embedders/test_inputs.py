"""The bulk job's prepared inputs give the same vectors as the embedders' PIL path (same model, same pages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.embedders.clip import OpenClipEmbedder
from mmrag.embedders.colpali import ColPaliEmbedder


def test_clip_inputs_give_the_vectors_of_embed_images(tiny_clip: OpenClipEmbedder, pages: list[Image.Image]) -> None:
    spec = tiny_clip.input_spec()
    assert spec is not None and spec.size == 32
    prepared = [spec.from_image(page) for page in pages]
    ours, theirs = tiny_clip.embed_inputs(prepared), tiny_clip.embed_images(pages)
    # torch's uint8 resampling in the workers, PIL's in open_clip's preprocess: pixels within 1, the same vectors
    # to a cosine of 1e-4
    assert np.all(np.sum(ours * theirs, axis=1) > 1 - 1e-4)


def test_clip_without_a_plain_resize_and_crop_takes_no_inputs(tiny_clip: OpenClipEmbedder) -> None:
    from torchvision import transforms

    other = OpenClipEmbedder(
        tiny_clip.model, transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]), tiny_clip.tokenizer,
        model_id="x", revision="y", device="cpu",
    )
    other.preprocess = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    assert other.input_spec() is None


def test_colpali_inputs_made_page_by_page_give_the_vectors_of_a_padded_batch(
    tiny_colidefics3: ColPaliEmbedder, pages: list[Image.Image], tmp_path: Path
) -> None:
    """Pages of different sizes need padding: collating the per-page outputs equals the processor's own batch."""
    from mmrag.inputs import ProcessorInputs, _processor

    tiny_multivector = tiny_colidefics3  # not a Qwen2-VL processor: its own outputs travel from the workers
    spec = tiny_multivector.input_spec(tmp_path)
    assert isinstance(spec, ProcessorInputs)
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


# (height, width) of pages: portrait and landscape, already on the 28-pixel grid, below min_pixels (upscaled),
# above max_pixels (downscaled), and a very thin strip.
QWEN_SIZES = [(300, 200), (200, 310), (56, 84), (20, 30), (1000, 700), (40, 1100)]


def test_qwen_pixels_give_exactly_the_processors_inputs(tiny_colqwen2: ColPaliEmbedder, tmp_path: Path) -> None:
    """Resized in the worker, normalised and cut into patches by the embedder: every tensor process_images makes
    (pixels, grid, token ids, masks) is equal, for pages of several sizes in one padded batch."""
    from mmrag.inputs import QwenPixels

    spec = tiny_colqwen2.input_spec(tmp_path)
    assert isinstance(spec, QwenPixels)
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in QWEN_SIZES]
    images.append(images[0].convert("L"))  # a grayscale page is made RGB first, as the processor does
    expected = tiny_colqwen2.processor.process_images(images)
    prepared = [spec.from_image(image) for image in images]
    assert all(p.pixels.dtype == np.uint8 and p.pixels.shape[0] == 3 for p in prepared)
    got = tiny_colqwen2._pixels_batch(prepared)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_qwen_pixels_target_size_is_transformers_smart_resize(tiny_colqwen2: ColPaliEmbedder) -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    spec = tiny_colqwen2.input_spec(Path("/nonexistent"))  # a QwenPixels spec never writes anything
    rng = np.random.default_rng(3)
    sizes = [(int(h), int(w)) for h, w in rng.integers(10, 4000, (300, 2))] + [(10, 2001), (3000, 15)]
    for height, width in sizes:
        if max(height, width) / min(height, width) > 200:
            for resize in (smart_resize, lambda h, w, **_: spec.target_size(h, w)):
                with pytest.raises(ValueError, match="aspect ratio"):
                    resize(height, width, factor=28, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
            continue
        expected = smart_resize(height, width, factor=28, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
        assert spec.target_size(height, width) == expected


def test_qwen_pixels_from_jpeg_give_the_vectors_of_embed_images(
    tiny_colqwen2: ColPaliEmbedder, pages: list[Image.Image], tmp_path: Path
) -> None:
    import io

    spec = tiny_colqwen2.input_spec(tmp_path)
    decoded = []
    prepared = []
    for page in pages:
        buffer = io.BytesIO()
        page.convert("RGB").save(buffer, format="JPEG", quality=90)
        prepared.append(spec.from_jpeg(buffer.getvalue()))
        decoded.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    got = tiny_colqwen2.embed_inputs(prepared)
    for g, e in zip(got, tiny_colqwen2.embed_images(decoded), strict=True):
        np.testing.assert_array_equal(g, e)


def test_a_page_qwen2_vl_cannot_take_is_an_input_error(tiny_colqwen2: ColPaliEmbedder, tmp_path: Path) -> None:
    from mmrag.errors import InputError

    spec = tiny_colqwen2.input_spec(tmp_path)
    with pytest.raises(InputError, match="5000x20 pixels: absolute aspect ratio"):
        spec.from_image(Image.new("RGB", (5000, 20)))


def test_text_inputs_are_cached_per_resized_size_not_per_photo_size(tiny_colqwen2: ColPaliEmbedder,
                                                                     tmp_path: Path) -> None:
    spec = tiny_colqwen2.input_spec(tmp_path)
    tiny_colqwen2._page_text.clear()
    sizes = [(300 + i, 200 + i) for i in range(6)]  # six photo sizes, one resized size
    pages = [spec.from_image(Image.new("RGB", (w, h), "white")) for h, w in sizes]
    assert len({p.pixels.shape for p in pages}) == 1
    got = tiny_colqwen2._pixels_batch(pages)
    assert len(tiny_colqwen2._page_text) == 1
    expected = tiny_colqwen2.processor.process_images([Image.new("RGB", (w, h), "white") for h, w in sizes])
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
