"""The newer colpali-engine families (ColQwen3, ColQwen3.5, ColGemma3, ColModernVBert) through the real loader:
tiny random-init checkpoints saved to a directory, loaded by `load_colpali`, their vectors and MaxSim scores held to
colpali-engine's own (the model's forward on the processor's output, `score_multi_vector`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.embedders.colpali import FAMILIES, ColPaliEmbedder, family_for_config, load_colpali
from mmrag.inputs import ProcessorInputs, QwenPixels
from mmrag.protocols import MultiVectorEmbedder

from .samples import make_page
from .test_fidelity import TOLERANCE, library_and_our_scores
from .tiny_families import TINY_FAMILIES, save_tiny_family

QWEN3_FAMILIES = ("colqwen3", "colqwen3_5")


@pytest.fixture(scope="module", params=list(TINY_FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def checkpoint(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A directory name that claims another family: config.json decides.
    return save_tiny_family(family, tmp_path_factory.mktemp(family) / "colqwen2-v1.0")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> ColPaliEmbedder:
    return load_colpali(str(checkpoint), device="cpu", batch_size=3)


def _family_dim(family: str) -> int:
    return TINY_FAMILIES[family][3]


def test_the_checkpoint_names_the_real_model_type(family: str, checkpoint: Path) -> None:
    _, model_type, model_class, _ = TINY_FAMILIES[family]
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == model_type
    assert config["architectures"] == [model_class]
    assert FAMILIES[model_type].model_class == model_class
    assert list(checkpoint.glob("*.safetensors")) and (checkpoint / "processor_config.json").is_file()


def test_the_loader_picks_the_family_from_config(family: str, loaded: ColPaliEmbedder, checkpoint: Path) -> None:
    _, model_type, model_class, dim = TINY_FAMILIES[family]
    assert isinstance(loaded, MultiVectorEmbedder)
    assert loaded.family == model_class == family_for_config("x", {"model_type": model_type}).model_class
    assert loaded.dim == dim  # whatever the family's projection gives, not an assumed 128
    assert loaded.model_id == f"colpali:local-dir:{checkpoint}"
    assert loaded.attn_implementation == "eager"  # CPU


def test_a_projection_of_another_size_than_the_config_says_is_refused(tmp_path: Path) -> None:
    """ColQwen3.5 reads its output size from config.json (128 without one): a checkpoint whose projection is another
    size is refused, never loaded with a re-initialised projection."""
    from mmrag.errors import ModelUnavailableError

    checkpoint = save_tiny_family("colqwen3_5", tmp_path / "colqwen3_5")
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config.pop("dim") == _family_dim("colqwen3_5") != 128
    (checkpoint / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelUnavailableError, match="custom_text_proj|mismatched"):
        load_colpali(str(checkpoint), device="cpu")


def test_pages_and_queries_give_one_unit_vector_per_real_token(
    family: str, loaded: ColPaliEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    processor = loaded.processor
    for vectors, singles in (
        (loaded.embed_images(pages), [processor.process_images([page]) for page in pages]),
        (loaded.embed_queries(queries), [processor.process_queries([query]) for query in queries]),
    ):
        assert [len(item) for item in vectors] == [int(single["attention_mask"].sum()) for single in singles]
        for item in vectors:
            assert item.dtype == np.float32 and item.shape[1] == _family_dim(family)
            np.testing.assert_allclose(np.linalg.norm(item, axis=1), 1.0, atol=1e-5)


def test_a_padded_batch_equals_each_item_alone(
    loaded: ColPaliEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    for embed, items in ((loaded.embed_images, pages), (loaded.embed_queries, queries)):
        batched = embed(items)
        singles = [embed([item])[0] for item in items]
        assert [b.shape for b in batched] == [s.shape for s in singles]
        for b, s in zip(batched, singles, strict=True):
            assert np.isfinite(b).all()
            np.testing.assert_allclose(b, s, atol=1e-4)


def test_query_words_are_the_texts_own_tokens(loaded: ColPaliEmbedder) -> None:
    text = "total 42.35"
    own = loaded.query_words(text)
    (tokens,) = loaded.embed_queries([text])
    assert own.dtype == bool and len(own) == len(tokens)
    ids = loaded.processor.process_queries([text])["input_ids"][0]
    ids = ids[loaded.processor.process_queries([text])["attention_mask"][0].bool()].numpy()
    # ColGemma3's template puts "Query: " before the text: the space token is the text's (no real word lacks one)
    assert loaded.processor.tokenizer.decode(ids[own]).strip() == text
    assert not own[-1]  # not the augmentation or end-of-turn tokens after it


def test_different_pages_give_different_vectors(loaded: ColPaliEmbedder) -> None:
    """Guards every test here against a degenerate model (Gemma 3's image projection starts at zeros)."""
    first, second = loaded.embed_images([make_page(0), make_page(1)])
    assert first.shape == second.shape and np.abs(first - second).max() > 1e-2


# --- what the bulk job's workers hand back --------------------------------------------------------------------


def test_worker_inputs_give_the_vectors_of_embed_images(
    family: str, loaded: ColPaliEmbedder, pages: list[Image.Image], tmp_path: Path
) -> None:
    spec = loaded.input_spec(tmp_path)
    # The Qwen2-VL image processor (Qwen3-VL and Qwen3.5 kept it) takes the fast path; the others the processor's own
    # per-page outputs, collated by the embedder.
    assert isinstance(spec, QwenPixels if family in QWEN3_FAMILIES else ProcessorInputs)
    if isinstance(spec, ProcessorInputs):
        assert spec.processor_dir == str(loaded.processor_dir)
        assert spec.processor_class == type(loaded.processor).__name__
    got = loaded.embed_inputs([spec.from_image(page) for page in pages])
    expected = loaded.embed_images(pages)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)


# (height, width): on the 32-pixel grid, below min_pixels (upscaled), above max_pixels (downscaled), a thin strip
QWEN3_SIZES = [(96, 128), (200, 310), (20, 30), (1000, 700), (40, 1100)]


@pytest.mark.parametrize("family", QWEN3_FAMILIES, indirect=True)
def test_qwen3_pixels_give_exactly_the_processors_inputs(loaded: ColPaliEmbedder, tmp_path: Path) -> None:
    """Qwen3-VL's 16-pixel patches through the QwenPixels path: every tensor process_images makes (pixels, grid,
    token ids, masks, mm_token_type_ids) is equal, for pages of several sizes in one padded batch."""
    spec = loaded.input_spec(tmp_path)
    assert isinstance(spec, QwenPixels) and (spec.patch_size, spec.merge_size) == (16, 2)
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in QWEN3_SIZES]
    expected = loaded.processor.process_images(images)
    got = loaded._pixels_batch([spec.from_image(image) for image in images])
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


# --- similarity maps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", QWEN3_FAMILIES, indirect=True)
def test_a_qwen3_grid_cell_holds_the_pixels_of_its_part_of_the_page(loaded: ColPaliEmbedder) -> None:
    # 128x96 is a whole number of 32-pixel merged patches within the tiny processor's pixel bounds: not resized
    page = Image.new("RGB", (128, 96), (128, 128, 128))
    page.paste((255, 0, 0), (64, 32, 96, 64))  # the cell in row 1, column 2 of a 3 x 4 grid
    grid = loaded.patch_grid(*page.size)
    assert grid is not None and (grid.rows, grid.cols) == (3, 4)
    (vectors,) = loaded.embed_images([page])
    assert grid.length == len(vectors)
    assert grid.positions == tuple(range(grid.positions[0], grid.positions[0] + 12))  # one run of image tokens
    processed = loaded.processor.process_images([page])
    image_ids = processed["input_ids"][0][list(grid.positions)]
    assert set(image_ids.tolist()) == {loaded.model.config.image_token_id}
    pixels = processed["pixel_values"].numpy()
    merged = pixels.reshape(grid.rows * grid.cols, -1, 3, 2 * 16 * 16)  # 4 patches of (channel, time x 16 x 16)
    red = merged[..., 0, :].mean(axis=(1, 2)) - merged[..., 1, :].mean(axis=(1, 2))
    assert int(np.argmax(red)) == 1 * grid.cols + 2 and (red > 1).sum() == 1  # row-major, as positions say


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (57, 640)])
@pytest.mark.parametrize("family", QWEN3_FAMILIES, indirect=True)
def test_a_qwen3_grid_follows_the_page_shape(loaded: ColPaliEmbedder, size: tuple[int, int]) -> None:
    grid = loaded.patch_grid(*size)
    assert grid is not None and grid.rows * grid.cols == len(grid.positions)
    (vectors,) = loaded.embed_images([Image.new("RGB", size, (90, 90, 90))])
    assert len(vectors) == grid.length
    assert (grid.rows > grid.cols) == (size[1] > size[0])


@pytest.mark.parametrize("family", ["colmodernvbert"], indirect=True)
def test_families_whose_patches_are_not_one_grid_have_no_map(loaded: ColPaliEmbedder) -> None:
    assert loaded.patch_grid(128, 96) is None


@pytest.mark.parametrize("size", [(128, 96), (57, 640), (32, 32)])
@pytest.mark.parametrize("family", ["colgemma3"], indirect=True)
def test_a_gemma3_grid_is_its_one_square_of_image_tokens(loaded: ColPaliEmbedder, size: tuple[int, int]) -> None:
    grid = loaded.patch_grid(*size)
    assert grid is not None and (grid.rows, grid.cols) == (2, 2)  # mm_tokens_per_image 4, whatever the page's shape
    (vectors,) = loaded.embed_images([Image.new("RGB", size, (90, 90, 90))])
    assert grid.length == len(vectors)
    assert grid.positions == tuple(range(grid.positions[0], grid.positions[0] + 4))
    ids = loaded.processor.process_images([Image.new("RGB", size)])["input_ids"][0]
    assert set(ids[list(grid.positions)].tolist()) == {loaded.model.config.image_token_id}
    # the begin- and end-of-image tokens around the square are not in it
    assert ids[grid.positions[0] - 1] == loaded.model.config.boi_token_id
    assert ids[grid.positions[-1] + 1] == loaded.model.config.eoi_token_id


@pytest.mark.parametrize("family", ["colgemma3"], indirect=True)
def test_gemma3_image_tokens_are_its_patches_pooled_row_major(loaded: ColPaliEmbedder) -> None:
    """What the grid assumes of the real model code: SigLIP's patch embeddings are the page's patches row by row,
    and the projector's token (r, c) pools the patches of block (r, c) alone, tokens row by row."""
    model = loaded.model
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size  # 4 patches a side
    patch = model.config.vision_config.patch_size
    embeddings = model.vision_tower.embeddings
    with torch.inference_mode():
        blank = embeddings(torch.zeros(1, 3, side * patch, side * patch))
        for row, col in ((0, 3), (2, 1)):
            pixels = torch.zeros(1, 3, side * patch, side * patch)
            pixels[..., row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = 1.0
            changed = (embeddings(pixels) - blank).abs().amax(dim=-1)[0] > 1e-6
            assert changed.nonzero().flatten().tolist() == [row * side + col]

        projector = model.multi_modal_projector
        tokens_side = round(model.config.mm_tokens_per_image**0.5)  # 2
        kernel = side // tokens_side
        hidden = model.config.vision_config.hidden_size
        blocks = torch.randn(tokens_side, tokens_side, hidden, generator=torch.Generator().manual_seed(0))
        # each patch carries its block's vector, so each pooled token is its block's vector exactly
        patches = blocks.repeat_interleave(kernel, 0).repeat_interleave(kernel, 1).reshape(1, side * side, hidden)
        pooled = projector(patches)[0]
        for row in range(tokens_side):
            for col in range(tokens_side):
                alone = projector(blocks[row, col].expand(1, side * side, hidden))[0, 0]
                torch.testing.assert_close(pooled[row * tokens_side + col], alone)


# --- fidelity: colpali-engine's own vectors and scores ------------------------------------------------------------


def own_forward_max_diff(embedder: ColPaliEmbedder, ours: list[np.ndarray], inputs: dict) -> float:
    """The largest difference between our per-item vectors and the model's forward on the processor's batch,
    stripped of padding by its attention mask."""
    with torch.inference_mode():
        library = embedder.model(**inputs)
    masks = inputs["attention_mask"].bool()
    theirs = [item[mask].float().numpy() for item, mask in zip(library, masks, strict=True)]
    assert [t.shape for t in theirs] == [o.shape for o in ours]
    return max(float(np.abs(o - t).max()) for o, t in zip(ours, theirs, strict=True))


def test_vectors_equal_the_models_own_forward(
    loaded: ColPaliEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    # batch_size 3 over 4 items: our batches pad differently from the processor's one batch of 4
    processor = loaded.processor
    page_diff = own_forward_max_diff(loaded, loaded.embed_images(pages), processor.process_images(pages))
    query_diff = own_forward_max_diff(loaded, loaded.embed_queries(queries), processor.process_queries(queries))
    assert page_diff <= TOLERANCE and query_diff <= TOLERANCE


def test_maxsim_equals_colpali_engines_scores(loaded: ColPaliEmbedder, queries: list[str], tmp_path: Path) -> None:
    library_scores, reference, stored = library_and_our_scores(loaded, queries, tmp_path / "mv")
    assert np.abs(reference - library_scores).max() <= TOLERANCE
    assert np.abs(stored - library_scores).max() <= TOLERANCE
    assert np.ptp(library_scores) > 1e-3  # not a degenerate model whose every score ties
