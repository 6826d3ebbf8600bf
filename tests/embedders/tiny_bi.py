"""Tiny random-init checkpoints of colpali-engine's single-vector Bi* families (BiPali, BiPaliProj, BiQwen2,
BiQwen2.5, BiQwen3, BiQwen3.5, BiIdefics3, BiGemma3, BiModernVBert): each the tiny Col* model's config, tokenizer and image processor (mmrag.embedders
.tiny, tiny_families) around the real Bi* model and processor classes, saved as a checkpoint directory (config.json
with the shared model_type and the Bi* class in architectures) that `load_bi` reads like a downloaded one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrag.embedders.tiny import (
    DEFAULT_SEED,
    QWEN2_SPECIAL_TOKENS,
    ColPaliParts,
    _byte_level_tokenizer,
    _seeded,
    build_tiny_colidefics3,
    build_tiny_colqwen2,
)

from .tiny_families import (
    build_tiny_colgemma3,
    build_tiny_colmodernvbert,
    build_tiny_colqwen3,
    build_tiny_colqwen3_5,
)


def build_tiny_colqwen2_5(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColQwen2.5 on a tiny Qwen2.5-VL config (window attention in one of two vision blocks), the
    tiny ColQwen2's tokenizer and 14-pixel patches: no other tiny ColQwen2.5 exists to reuse."""
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = _byte_level_tokenizer(QWEN2_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )  # fmt: skip
    with _seeded(seed):
        model = ColQwen2_5(config).eval()
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = ColQwen2_5_Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )
    return ColPaliParts(model, processor)


def build_tiny_colpali(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColPali on a tiny PaliGemma config: pages resized to 32x32, 8-pixel SigLIP patches, 16 image
    tokens; a byte-level tokenizer with PaliGemma's special tokens (the processor adds its location tokens)."""
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import PaliGemmaConfig, SiglipImageProcessor

    tokenizer = _byte_level_tokenizer(("<pad>", "<eos>", "<bos>", "<image>"), pad="<pad>", eos="<eos>")
    tokenizer.bos_token = "<bos>"
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # what a PaliGemma checkpoint's preprocessor config states
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    token_id = tokenizer.convert_tokens_to_ids
    config = PaliGemmaConfig(
        text_config={
            "model_type": "gemma", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "pad_token_id": token_id("<pad>"), "bos_token_id": token_id("<bos>"), "eos_token_id": token_id("<eos>"),
        },
        vision_config={
            "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 64,
        },
        image_token_index=token_id("<image>"),
        projection_dim=64,
        hidden_size=64,
    )  # fmt: skip
    with _seeded(seed):
        model = ColPali(config).eval()
    return ColPaliParts(model, processor)


def _same_processor(processor_class: Any, col: Any) -> Any:
    assert isinstance(col, processor_class)
    return col


def _qwen_processor(processor_class: Any, col: Any) -> Any:
    return processor_class(
        image_processor=col.image_processor, tokenizer=col.tokenizer, video_processor=col.video_processor
    )


def _tiled_processor(processor_class: Any, col: Any) -> Any:
    return processor_class(image_processor=col.image_processor, tokenizer=col.tokenizer, image_seq_len=4)


def _gemma3_processor(processor_class: Any, col: Any) -> Any:
    return processor_class(image_processor=col.image_processor, tokenizer=col.tokenizer, image_seq_length=4)


def _gemma3_projection(model: Any) -> None:
    import torch

    # Gemma 3 initialises its image projection to zeros (a checkpoint always sets it): every page would look alike.
    torch.nn.init.normal_(model.multi_modal_projector.mm_input_projection_weight, std=0.2)


# family → (the Col* builder whose parts it reuses, Bi* model class, Bi* processor class, processor maker,
#           the config's model_type, the output dim, an init fix-up)
TINY_BI_FAMILIES: dict[str, tuple[Callable[[int], ColPaliParts], str, str, Callable[[Any, Any], Any], str, int,
                                  Callable[[Any], None] | None]] = {
    # BiPali's processor is ColPaliProcessor (mmrag.embedders.bi.BI_FAMILIES says why)
    "bipali": (build_tiny_colpali, "BiPali", "ColPaliProcessor", _same_processor, "paligemma", 64, None),
    "bipaliproj": (build_tiny_colpali, "BiPaliProj", "ColPaliProcessor", _same_processor, "paligemma", 1024, None),
    "biqwen2": (build_tiny_colqwen2, "BiQwen2", "BiQwen2Processor", _qwen_processor, "qwen2_vl", 64, None),
    "biqwen2_5": (
        build_tiny_colqwen2_5, "BiQwen2_5", "BiQwen2_5_Processor", _qwen_processor, "qwen2_5_vl", 64, None,
    ),
    "biqwen3": (build_tiny_colqwen3, "BiQwen3", "BiQwen3Processor", _qwen_processor, "qwen3_vl", 64, None),
    "biqwen3_5": (build_tiny_colqwen3_5, "BiQwen3_5", "BiQwen3_5Processor", _qwen_processor, "qwen3_5", 64, None),
    "biidefics3": (
        build_tiny_colidefics3, "BiIdefics3", "BiIdefics3Processor", _tiled_processor, "idefics3", 64, None,
    ),
    "bigemma3": (
        build_tiny_colgemma3, "BiGemma3", "BiGemmaProcessor3", _gemma3_processor, "gemma3", 64, _gemma3_projection,
    ),
    "bimodernvbert": (
        build_tiny_colmodernvbert, "BiModernVBert", "BiModernVBertProcessor", _tiled_processor, "modernvbert", 64,
        None,
    ),
}  # fmt: skip


def build_tiny_bi(family: str, seed: int = DEFAULT_SEED) -> ColPaliParts:
    """The Bi* model (seeded random init) and processor of one TINY_BI_FAMILIES family."""
    import colpali_engine.models as colpali_models

    build_col, model_class, processor_class, make_processor, _, _, fix_up = TINY_BI_FAMILIES[family]
    col_model, col_processor = build_col(seed)
    config = copy.deepcopy(col_model.config)
    with _seeded(seed):
        model = getattr(colpali_models, model_class)(config).eval()
        if fix_up is not None:
            fix_up(model)
    return ColPaliParts(model, make_processor(getattr(colpali_models, processor_class), col_processor))


def save_tiny_bi(family: str, directory: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write one TINY_BI_FAMILIES model as a checkpoint directory (config.json, safetensors, processor files)."""
    model, processor = build_tiny_bi(family, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
