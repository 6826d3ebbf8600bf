"""Model inputs made in the workers: equal to open_clip's own preprocess, and the JPEG fast path of load_file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.config import IngestSettings
from mmrag.errors import CorruptFileError
from mmrag.inputs import ClipPixels, prepare_from_file
from mmrag.ingest.worker import load_file
from tests.factories import make_image

SHA = "ab" * 32


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([(x * 0.7) % 256, (y * 0.9) % 256, ((x + y) * 0.3) % 256], axis=-1)
    return Image.fromarray((smooth + rng.normal(0, 4, smooth.shape)).clip(0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, path: Path, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90, **save)
    return path


@pytest.mark.parametrize("size", [(96, 72), (640, 480), (33, 100), (32, 32), (301, 299)])
def test_clip_pixels_equal_open_clips_preprocess(size: tuple[int, int]) -> None:
    from mmrag.embedders.tiny import build_tiny_clip

    _, preprocess, _ = build_tiny_clip()
    image = _photo(*size)
    pixels = ClipPixels(32).from_image(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 32, 32)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    theirs = preprocess(image)  # PIL's resize, then ToTensor and Normalize
    theirs_uint8 = torch.round((theirs * std + mean) * 255).to(torch.int16)
    diff = (torch.from_numpy(pixels).to(torch.int16) - theirs_uint8).abs()
    # torch's uint8 resampling against PIL's: the same filter, fixed-point rounding apart by at most 1
    assert int(diff.max()) <= 1
    ours = (torch.from_numpy(pixels.copy()).float() / 255 - mean) / std
    if size == (32, 32):  # no resize at all: the very same tensor
        assert torch.equal(ours, theirs)


def test_draft_decodes_a_large_jpeg_at_reduced_scale_to_nearly_the_same_pixels(tmp_path: Path) -> None:
    path = _jpeg(_photo(640, 480), tmp_path / "big.jpg")
    data = path.read_bytes()
    full = ClipPixels(224, draft=False).from_jpeg(data)
    with Image.open(path) as decoded:
        assert np.array_equal(full, ClipPixels(224).from_image(decoded.convert("RGB")))
    drafted = ClipPixels(224).from_jpeg(data)
    assert drafted.shape == full.shape
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 4  # DCT-scaled, then the same resize


def test_a_plain_jpeg_is_stored_verbatim_and_comes_back_with_its_inputs(tmp_path: Path) -> None:
    source = _jpeg(_photo(640, 480), tmp_path / "photo.jpg")
    spec = ClipPixels(32)
    loaded = load_file(str(source), SHA, IngestSettings(ocr="never"), str(tmp_path / "data"), (spec,))
    [page] = loaded.pages
    assert (loaded.kind, loaded.mime) == ("image", "image/jpeg")
    assert (page.width, page.height) == (640, 480)
    stored = tmp_path / "data" / page.image_path
    assert stored.read_bytes() == source.read_bytes()
    assert np.array_equal(page.inputs[0], spec.from_jpeg(source.read_bytes()))
    assert np.array_equal(page.inputs[0], prepare_from_file(stored, (spec,))[0])  # what repair would make


@pytest.mark.parametrize("case", ["png", "exif-rotated", "cmyk", "ocr"])
def test_other_images_take_the_general_path_and_inputs_come_from_the_stored_page(tmp_path: Path, case: str) -> None:
    settings = IngestSettings(ocr="never")
    if case == "png":
        source = make_image(tmp_path / "image.png", 3)
    elif case == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise to display
        source = _jpeg(_photo(120, 80), tmp_path / "rotated.jpg", exif=exif)
    elif case == "cmyk":
        source = _jpeg(_photo(120, 80).convert("CMYK"), tmp_path / "cmyk.jpg")
    else:
        source = _jpeg(_photo(120, 80), tmp_path / "ocr.jpg")
        settings = IngestSettings(ocr="always")
    spec = ClipPixels(32)
    loaded = load_file(str(source), SHA, settings, str(tmp_path / "data"), (spec,))
    [page] = loaded.pages
    stored = tmp_path / "data" / page.image_path
    assert stored.read_bytes() != source.read_bytes()  # re-encoded (rotated, converted or OCR'd on full pixels)
    if case == "exif-rotated":
        assert (page.width, page.height) == (80, 120)
    assert np.array_equal(page.inputs[0], prepare_from_file(stored, (spec,))[0])


def test_a_truncated_jpeg_still_fails_with_its_reason(tmp_path: Path) -> None:
    whole = _jpeg(_photo(320, 240), tmp_path / "whole.jpg").read_bytes()
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptFileError, match="truncated.jpg"):
        load_file(str(broken), SHA, IngestSettings(ocr="never"), str(tmp_path / "data"), (ClipPixels(32),))


def test_without_specs_pages_carry_no_inputs(tmp_path: Path) -> None:
    source = _jpeg(_photo(64, 48), tmp_path / "photo.jpg")
    [page] = load_file(str(source), SHA, IngestSettings(ocr="never"), str(tmp_path / "data")).pages
    assert page.inputs == ()
    buffer = io.BytesIO((tmp_path / "data" / page.image_path).read_bytes())
    with Image.open(buffer) as stored:
        assert stored.size == (64, 48)


def test_page_images_share_directories_and_survive_their_removal(tmp_path: Path) -> None:
    """Pages live under two levels of 256 directories named from their document's sha256, made once per worker;
    a directory removed since is made again."""
    import shutil

    from mmrag.ingest.worker import page_image_path

    spec = ClipPixels(32)
    settings = IngestSettings(ocr="never")
    data = tmp_path / "data"
    sources = [_jpeg(_photo(64, 48, seed=i), tmp_path / f"p{i}.jpg") for i in range(2)]
    shas = ["ab" * 32, "ab" * 31 + "cd"]  # the same directory
    first = load_file(str(sources[0]), shas[0], settings, str(data), (spec,))
    assert first.pages[0].image_path == page_image_path(shas[0], 1) == f"pages/ab/ab/{shas[0]}-00001.jpg"
    shutil.rmtree(data / "pages")
    second = load_file(str(sources[1]), shas[1], settings, str(data), (spec,))
    assert (data / second.pages[0].image_path).read_bytes() == sources[1].read_bytes()
    assert second.pages[0].image_path == f"pages/ab/ab/{shas[1]}-00001.jpg"


def test_a_page_range_past_the_end_of_a_pdf_says_the_file_changed(tmp_path: Path) -> None:
    """The pipeline asks for later ranges from the page count the first one reported: a shorter PDF now means it
    was replaced during the job, and the document fails with that reason instead of missing pages silently."""
    from tests.factories import make_pdf

    pdf = make_pdf(tmp_path / "doc.pdf", ["one", "two", "three"])
    settings = IngestSettings(ocr="never")
    part = load_file(str(pdf), SHA, settings, str(tmp_path / "data"), (), pages=(2, 8))
    assert [p.page_number for p in part.pages] == [2, 3] and part.page_total == 3
    with pytest.raises(CorruptFileError, match="has 3 pages now"):
        load_file(str(pdf), SHA, settings, str(tmp_path / "data"), (), pages=(9, 16))
