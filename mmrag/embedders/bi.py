"""Single-vector page embeddings through colpali-engine's Bi* models: `load_bi(model)` and the `BiPageEmbedder`.

A Bi* checkpoint (BiQwen2, BiPali, ...) shares its `model_type` with the multi-vector Col* one of the same backbone,
so its family is read from the config's `architectures` (or a PEFT adapter's `auto_mapping.base_model_class`)
together with the model_type, never from the checkpoint's name. Locating, adapters and the missing-weights refusal
are load_colpali's (mmrag.embedders.colpali).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from mmrag.checkpoints import LocatedCheckpoint, locate_checkpoint
from mmrag.device import is_cuda_device, resolve_device
from mmrag.embedders.colpali import (
    ADAPTER_CONFIG,
    _family_source,
    _read_json,
    from_checkpoint,
    refuse_missing,
)
from mmrag.embedders.colpali import (
    FAMILIES as MULTIVECTOR_FAMILIES,
)
from mmrag.embedders.runtime import encode_in_batches
from mmrag.errors import MmragError, ModelUnavailableError

log = logging.getLogger(__name__)

Pooling = Literal["last", "mean"]


@dataclass(frozen=True)
class BiFamily:
    """colpali-engine's single-vector model and processor classes, and how the model pools its token states."""

    model_class: str
    processor_class: str
    # "last": the last position's state, which is the last real token only when the tokenizer pads on the left.
    pooling: Pooling


# Keyed by config.json `model_type`, then by the class its `architectures` names: the model_type alone cannot tell a
# Bi* checkpoint from the Col* one of the same backbone. Pooling as each model's forward does it by default.
# BiPali's processor is ColPaliProcessor: colpali-engine's BiPaliProcessor only adds `score` (score_single_vector),
# and its (*args, **kwargs) constructor hides its parts from transformers 5, which loads it without a tokenizer.
BI_FAMILIES: dict[str, dict[str, BiFamily]] = {
    "paligemma": {
        "BiPali": BiFamily("BiPali", "ColPaliProcessor", "mean"),
        "BiPaliProj": BiFamily("BiPaliProj", "ColPaliProcessor", "mean"),
    },
    "qwen2_vl": {"BiQwen2": BiFamily("BiQwen2", "BiQwen2Processor", "last")},
    "qwen2_5_vl": {"BiQwen2_5": BiFamily("BiQwen2_5", "BiQwen2_5_Processor", "last")},
    "qwen3_vl": {"BiQwen3": BiFamily("BiQwen3", "BiQwen3Processor", "last")},
    "qwen3_5": {"BiQwen3_5": BiFamily("BiQwen3_5", "BiQwen3_5Processor", "last")},
    "idefics3": {"BiIdefics3": BiFamily("BiIdefics3", "BiIdefics3Processor", "last")},
    "gemma3": {"BiGemma3": BiFamily("BiGemma3", "BiGemmaProcessor3", "last")},
    "modernvbert": {"BiModernVBert": BiFamily("BiModernVBert", "BiModernVBertProcessor", "mean")},
}
BI_CLASSES = frozenset(name for by_class in BI_FAMILIES.values() for name in by_class)
# colpali-engine 0.3.18's BiQwen2, BiQwen2_5 and BiGemma3 read their key mapping from the transformers base class,
# which transformers 5 dropped (AttributeError); given here, as transformers 4.5x's Qwen2VLModel, Qwen2_5_VLModel and
# Gemma3Model carried it, for checkpoints saved before their submodules were renamed.
KEY_MAPPINGS: dict[str, dict[str, str]] = {
    "BiQwen2": {"^model": "language_model"},
    "BiQwen2_5": {"^model": "language_model"},
    "BiGemma3": {"language_model.model": "language_model"},
}
BIGEMMA3_FULL_DIM = 2560  # BiGemma3's forward keeps the first embedding_dim (default 2560) dimensions
PALIGEMMA_CLASSES = ("BiPali", "BiPaliProj")
TIED_HEAD = "model.lm_head.weight"  # their lm_head: PaliGemma ties it to the token embeddings


class BiPageEmbedder:
    """A colpali-engine Bi* model and processor: one L2-normalised vector per page image and per query.
    Satisfies the ImageEmbedder protocol; its `embed_texts` are queries (the processor's query prefix and
    augmentation tokens, what the models were trained on), the only texts it embeds."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        family: BiFamily,
        model_id: str,
        revision: str,
        device: str = "auto",
        batch_size: int = 4,
        meaningless: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        if not is_cuda_device(self.device) and model.config._attn_implementation != "eager":
            # On CPU, torch's sdpa kernel returns NaN for fully masked (padding) rows under transformers 5.
            model.set_attn_implementation("eager")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.family = family
        self.model_id = model_id
        self.revision = revision
        self.batch_size = batch_size
        self.meaningless = meaningless
        side = getattr(getattr(processor, "tokenizer", None), "padding_side", "right")
        if family.pooling == "last" and side != "left":
            # The model pools the last position: with right padding a batch's shorter items would get a pad's state.
            raise ModelUnavailableError(
                model_id, f"{family.model_class} pools the last token, but its tokenizer pads on the {side}"
            )
        self.dim = bi_dim(model, family)

    @property
    def attn_implementation(self) -> str:
        return str(self.model.config._attn_implementation)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, L2-normalised: one vector per page image."""
        return self._encode_all(list(images), self.processor.process_images)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised: one vector per query (process_queries: prefix and augmentation)."""
        return self._encode_all(list(texts), self.processor.process_queries)

    # The ImageEmbedder protocol's text side (SingleVectorRetriever.search): a Bi* model's texts are queries.
    embed_texts = embed_queries

    def _encode_all(self, items: list[Any], process: Any) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)

        def encode_batch(batch: Sequence[Any]) -> np.ndarray:
            return self._forward(process(list(batch)))

        rows, self.batch_size = encode_in_batches(items, self.batch_size, encode_batch)
        return np.stack(rows).astype(np.float32, copy=False)

    def _forward(self, inputs: Any) -> np.ndarray:
        import torch

        model_dtype = self.model.dtype
        tensors = {
            name: value.to(self.device, dtype=model_dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()
        }
        with torch.inference_mode():
            pooled = self.model(**tensors)  # the model pools and normalises (see BI_FAMILIES)
        vectors = pooled.float().cpu().numpy()
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise MmragError(f"{self.model_id} gave vectors of shape {vectors.shape}, expected (n, {self.dim})")
        if not np.isfinite(vectors).all():
            raise MmragError(
                f"{self.model_id} produced non-finite embeddings on {self.device} "
                f"(dtype {model_dtype}, attention {self.attn_implementation})"
            )
        return vectors


def bi_dim(model: Any, family: BiFamily) -> int:
    """The length of the family's vectors: its projection's (BiPaliProj), else the language model's hidden size
    (BiGemma3 keeps at most its first 2560)."""
    projected = getattr(model, "dim", None)
    if projected:
        return int(projected)
    hidden = int(model.config.get_text_config().hidden_size)
    return min(hidden, BIGEMMA3_FULL_DIM) if family.model_class == "BiGemma3" else hidden


def bi_family_for_config(model: str, config: dict[str, Any], *, adapter_class: str | None = None) -> BiFamily:
    """The Bi* family a checkpoint is: its model_type, and the class its architectures name (for a PEFT adapter,
    the class the adapter was trained on, `adapter_class`). A Col* checkpoint, a raw VLM or a config naming no
    class is refused, naming what it is."""
    model_type = str(config.get("model_type"))
    by_class = BI_FAMILIES.get(model_type)
    if by_class is None:
        raise ModelUnavailableError(
            model, f"model_type {model_type!r} is not a supported Bi* family (supported: {', '.join(BI_FAMILIES)})"
        )
    named = [adapter_class] if adapter_class else list(config.get("architectures") or [])
    for name in named:
        if name in by_class:
            return by_class[name]
    multivector = MULTIVECTOR_FAMILIES.get(model_type)
    if multivector is not None and multivector.model_class in named:
        raise ModelUnavailableError(
            model, f"it is a multi-vector {multivector.model_class} checkpoint, not a single-vector "
            f"{'/'.join(by_class)} one: set it as MMRAG_EMBEDDERS__COLPALI__MODEL",
        )
    if not named:
        raise ModelUnavailableError(
            model, f"its config names no architectures: a {model_type} checkpoint may be single-vector "
            f"({'/'.join(by_class)}) or not, and its name does not decide",
        )
    raise ModelUnavailableError(
        model, f"its architectures {named} are not a single-vector retrieval model of model_type {model_type!r} "
        f"(expected {'/'.join(by_class)})",
    )


def load_bi(model: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 4) -> BiPageEmbedder:
    """Load a Bi* checkpoint from a local directory or the local HF cache; never downloads, never random weights."""
    device = resolve_device(device)
    checkpoint = locate_checkpoint(model)
    family_source, revision = _family_source(model, checkpoint)
    family = bi_family_for_config(
        model, _read_json(model, family_source / "config.json"), adapter_class=_adapter_class(model, checkpoint)
    )
    mapping = {"key_mapping": KEY_MAPPINGS[family.model_class]} if family.model_class in KEY_MAPPINGS else {}
    loaded, processor, loading_info, _ = from_checkpoint(
        model, checkpoint, family_source, revision, family.model_class, family.processor_class, device=device,
        dtype=dtype, **mapping,
    )
    # A PaliGemma checkpoint leaves out lm_head, tied to the token embeddings; colpali-engine's BiPali classes do not
    # tie it under transformers 5 (missing, or ignored as missing and left unset), so the inner model ties it here.
    tied_head = family.model_class in PALIGEMMA_CLASSES and loaded.config.get_text_config().tie_word_embeddings
    if tied_head:
        loaded.model.tie_weights()
    tied = {TIED_HEAD} if tied_head else set()
    refuse_missing(model, family.model_class, set(loading_info.get("missing_keys", ())) - tied)
    unset = [name for name, parameter in loaded.named_parameters() if parameter.is_meta]
    if unset:  # a weight neither loaded nor reported missing (ignored as missing by the model class)
        reason = f"the checkpoint leaves {len(unset)} {family.model_class} parameters unset"
        raise ModelUnavailableError(model, f"{reason} ({', '.join(unset[:5])})")
    model_id = f"bi:{model}" if not checkpoint.is_local_dir else f"bi:local-dir:{checkpoint.path}"
    return BiPageEmbedder(
        loaded, processor, family=family, model_id=model_id, revision=revision, device=device, batch_size=batch_size
    )


def build_tiny_bi_embedder(*, device: str = "auto", batch_size: int = 4, seed: int = 0) -> BiPageEmbedder:
    """The tiny-random profile's BiQwen2: the tiny ColQwen2's config, tokenizer and image processor (mmrag.embedders
    .tiny) around colpali-engine's BiQwen2 and BiQwen2Processor, seeded random weights (plumbing only)."""
    from colpali_engine.models import BiQwen2, BiQwen2Processor

    from mmrag.embedders.tiny import MEANINGLESS, REVISION, _seeded, build_tiny_colqwen2

    colqwen2, processor = build_tiny_colqwen2(seed)
    with _seeded(seed):
        model = BiQwen2(copy.deepcopy(colqwen2.config)).eval()
    bi_processor = BiQwen2Processor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer,
        video_processor=processor.video_processor,
    )
    return BiPageEmbedder(
        model, bi_processor, family=BI_FAMILIES["qwen2_vl"]["BiQwen2"], model_id="tiny-random:biqwen2",
        revision=REVISION, device=device, batch_size=batch_size, meaningless=MEANINGLESS,
    )


def _adapter_class(model: str, checkpoint: LocatedCheckpoint) -> str | None:
    """The model class a PEFT adapter was saved from (PEFT records a custom class in auto_mapping), when the
    checkpoint is an adapter alone: its base's config then names the base's class, not the adapter's."""
    path: Path = checkpoint.path
    if (path / "config.json").is_file() or not (path / ADAPTER_CONFIG).is_file():
        return None
    mapping = _read_json(model, path / ADAPTER_CONFIG).get("auto_mapping") or {}
    name = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    return str(name) if name else None
