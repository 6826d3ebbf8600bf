"""Our vectors and MaxSim scores equal the libraries' own on the same tiny random-init models and inputs.

CLIP: our embedder vs open_clip's create_model_and_transforms + encode_image/encode_text on the same checkpoint.
ColPali: our stripped per-item vectors searched in ShardedMultiVectorStore vs colpali-engine's processor +
model + processor.score_multi_vector, with a plain MaxSim over the same vectors as a third opinion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.embedders.clip import load_clip
from mmrag.embedders.colpali import ColPaliEmbedder
from mmrag.index.multivector import ShardedMultiVectorStore

from .samples import make_page

TOLERANCE = 1e-3
PAGE_IDS = [101, 202, 303, 404, 505]


def test_clip_vectors_equal_open_clips_own(saved_clip: Path, pages: list[Image.Image], queries: list[str]) -> None:
    import open_clip

    ours = load_clip(f"local-dir:{saved_clip}", device="cpu", batch_size=3)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{saved_clip}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{saved_clip}")
    model.eval()
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(page) for page in pages]), normalize=True).numpy()
        texts = model.encode_text(tokenizer(queries), normalize=True).numpy()
    assert np.abs(ours.embed_images(pages) - images).max() <= TOLERANCE
    assert np.abs(ours.embed_texts(queries) - texts).max() <= TOLERANCE


def maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """The textbook late-interaction score: each query token's best page token, summed."""
    return float(torch.from_numpy(query @ page.T).max(dim=1).values.sum())


def store_scores(directory: Path, embedder: ColPaliEmbedder, pages: list[np.ndarray], queries: list[np.ndarray]):
    store = ShardedMultiVectorStore(directory, embedder.dim, embedder.model_id)
    store.add(PAGE_IDS[: len(pages)], pages)
    scores = np.zeros((len(queries), len(pages)), dtype=np.float32)
    for row, query in enumerate(queries):
        hits = store.search(query, k=len(pages))
        assert len(hits) == len(pages)
        by_id = {hit.page_id: hit.score for hit in hits}
        scores[row] = [by_id[page_id] for page_id in PAGE_IDS[: len(pages)]]
    return scores


def library_and_our_scores(
    embedder: ColPaliEmbedder, queries: list[str], directory: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """colpali-engine's score_multi_vector over the model's own outputs, our MaxSim over our vectors, and the
    multi-vector store's scores (in `directory`), each (queries, pages), for equal-sized pages.

    Equal-sized pages: score_multi_vector zero-pads pages of different lengths, and a zero vector wins the max for a
    query token whose best real similarity is negative. That is a padding artefact, not MaxSim, so the library's
    scores are only the reference when no page needs padding (query padding adds zeros and is harmless)."""
    pages = [make_page(seed) for seed in range(len(PAGE_IDS))]
    processor, model = embedder.processor, embedder.model
    with torch.inference_mode():
        library_pages = model(**processor.process_images(pages))
        library_queries = model(**processor.process_queries(queries))
    library_scores = processor.score_multi_vector(list(library_queries), list(library_pages), device="cpu").numpy()

    our_pages = embedder.embed_images(pages)
    our_queries = embedder.embed_queries(queries)
    reference = np.array([[maxsim(query, page) for page in our_pages] for query in our_queries])
    return library_scores, reference, store_scores(directory, embedder, our_pages, our_queries)


def test_colpali_maxsim_equals_colpali_engines_scores(
    tiny_multivector: ColPaliEmbedder, queries: list[str], tmp_path: Path
) -> None:
    library_scores, reference, stored = library_and_our_scores(tiny_multivector, queries, tmp_path / "mv")
    assert np.abs(reference - library_scores).max() <= TOLERANCE
    assert np.abs(stored - library_scores).max() <= TOLERANCE


def test_store_maxsim_equals_reference_on_pages_of_different_sizes(
    tiny_multivector: ColPaliEmbedder, pages: list[Image.Image], queries: list[str], tmp_path: Path
) -> None:
    our_pages = tiny_multivector.embed_images(pages)
    assert len({len(page) for page in our_pages}) > 1, "the pages must differ in token count"
    our_queries = tiny_multivector.embed_queries(queries)
    reference = np.array([[maxsim(query, page) for page in our_pages] for query in our_queries])
    assert np.abs(store_scores(tmp_path / "mv", tiny_multivector, our_pages, our_queries) - reference).max() <= (
        TOLERANCE
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_are_not_all_equal(tiny_colqwen2: ColPaliEmbedder, queries: list[str], seed: int) -> None:
    """Guards the tests above against a degenerate model whose every score ties."""
    pages = tiny_colqwen2.embed_images([make_page(seed), make_page(seed + 3)])
    query = tiny_colqwen2.embed_queries(queries[:1])[0]
    assert abs(maxsim(query, pages[0]) - maxsim(query, pages[1])) > 1e-4
