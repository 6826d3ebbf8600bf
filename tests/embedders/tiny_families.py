"""Tiny random-init checkpoints of the newer colpali-engine families (ColQwen3, ColQwen3.5, ColGemma3,
ColModernVBert): the real model, processor and tokenizer classes on tiny configs, saved as a checkpoint directory
(config.json with the family's real model_type, safetensors, processor and tokenizer files) that `load_colpali`
reads like a downloaded one. Deterministic for a seed; nothing downloads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrag.embedders.tiny import (
    DEFAULT_SEED,
    IDEFICS3_SPECIAL_TOKENS,
    QWEN2_SPECIAL_TOKENS,
    ColPaliParts,
    _byte_level_tokenizer,
    _seeded,
)

# Qwen3-VL and Qwen3.5 kept Qwen2-VL's image processor: 16-pixel patches merged 2x2 into 32-pixel tokens.
# 64x64 to 128x128 pixels: 4 to 16 merged image tokens per page.
QWEN3_PIXELS = {"min_pixels": 64 * 64, "max_pixels": 128 * 128}
QWEN3_5_DIM = 96  # ColQwen3.5 reads its output dimension from the config: one neither 128 nor 320
GEMMA3_SPECIAL_TOKENS = (
    "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
    "<image_soft_token>",
)  # fmt: skip
# Gemma 3's chat template, cut to what ColGemmaProcessor3 renders (one user turn of images and text).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- else -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def _qwen3_ids(tokenizer: Any) -> dict[str, int]:
    token_id = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }


def _qwen3_vision() -> dict[str, Any]:
    return {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64, "num_position_embeddings": 64,
    }  # fmt: skip


def _qwen3_processor(processor_class: Any, tokenizer: Any) -> Any:
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3, **QWEN3_PIXELS
    )
    video_processor = Qwen3VLVideoProcessor()
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)


def build_tiny_colqwen3(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColQwen3 (320-dimension vectors, as tomoro-colqwen3-embed) on a tiny Qwen3-VL config."""
    from colpali_engine.models import ColQwen3, ColQwen3Processor
    from transformers import Qwen3VLConfig

    tokenizer = _byte_level_tokenizer(QWEN2_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024,
            # interleaved mrope: head_dim / 2 = 8 rotary frequencies over (time, height, width)
            "rope_parameters": {
                "rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True, "rope_theta": 10000.0,
            },
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**_qwen3_vision(), "deepstack_visual_indexes": [0]},
        **_qwen3_ids(tokenizer),
    )  # fmt: skip
    with _seeded(seed):
        model = ColQwen3(config).eval()
    return ColPaliParts(model, _qwen3_processor(ColQwen3Processor, tokenizer))


def build_tiny_colqwen3_5(seed: int = DEFAULT_SEED, dim: int = QWEN3_5_DIM) -> ColPaliParts:
    """colpali-engine ColQwen3.5 on a tiny Qwen3.5 config: one gated delta-net (linear attention) layer and one
    full-attention layer, as the real model alternates them; `dim` goes in the config, where ColQwen3.5 reads it."""
    from colpali_engine.models import ColQwen3_5, ColQwen3_5Processor
    from transformers import Qwen3_5Config

    tokenizer = _byte_level_tokenizer(QWEN2_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    config = Qwen3_5Config(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024,
            "layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 16,
            "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            # a quarter of head_dim rotates: 2 frequencies over (time, height, width)
            "rope_parameters": {
                "rope_type": "default", "mrope_section": [1, 1, 0], "mrope_interleaved": True, "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=_qwen3_vision(),
        **_qwen3_ids(tokenizer),
    )  # fmt: skip
    config.dim = dim
    with _seeded(seed):
        model = ColQwen3_5(config).eval()
    return ColPaliParts(model, _qwen3_processor(ColQwen3_5Processor, tokenizer))


def build_tiny_colgemma3(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColGemma3 on a tiny Gemma 3 config: pages resized to 32x32, 4x4 SigLIP patches pooled into
    2x2 = 4 image tokens; a byte-level tokenizer with Gemma 3's special tokens and chat template."""
    import torch
    from colpali_engine.models import ColGemma3, ColGemmaProcessor3
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Gemma3Config, Gemma3ImageProcessor, PreTrainedTokenizerFast

    # Not _byte_level_tokenizer: Gemma3Processor reads boi/eoi/image tokens as tokenizer attributes, and ColGemma's
    # processor renders every page and query through the tokenizer's chat template.
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(GEMMA3_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
        },
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )  # fmt: skip
    token_id = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 64,
            "max_position_embeddings": 1024, "pad_token_id": token_id("<pad>"), "bos_token_id": token_id("<bos>"),
            "eos_token_id": token_id("<eos>"),
        },
        vision_config={
            "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
        },
        mm_tokens_per_image=4,
        boi_token_index=token_id("<start_of_image>"),
        eoi_token_index=token_id("<end_of_image>"),
        image_token_index=token_id("<image_soft_token>"),
    )  # fmt: skip
    with _seeded(seed):
        model = ColGemma3(config).eval()
        # Gemma 3 initialises its image projection to zeros (a checkpoint always sets it): random weights here, or
        # every page would give the same vectors.
        torch.nn.init.normal_(model.multi_modal_projector.mm_input_projection_weight, std=0.2)
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    return ColPaliParts(
        model, ColGemmaProcessor3(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4)
    )


def build_tiny_colmodernvbert(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColModernVBert on a tiny ModernVBert config (a ModernBERT encoder and a SigLIP vision tower),
    with Idefics3's image splitting as the tiny ColIdefics3 has it: 32-pixel tiles of a page up to 64 pixels, plus a
    global view, each 4 tokens."""
    from colpali_engine.models import ColModernVBert, ColModernVBertProcessor
    from transformers import Idefics3ImageProcessor, ModernVBertConfig

    tokenizer = _byte_level_tokenizer(
        ("<|begin_of_text|>", *IDEFICS3_SPECIAL_TOKENS), pad="<|endoftext|>", eos="<end_of_utterance>"
    )
    token_id = tokenizer.convert_tokens_to_ids
    pad_id, bos_id, eos_id = token_id("<|endoftext|>"), token_id("<|begin_of_text|>"), token_id("<end_of_utterance>")
    config = ModernVBertConfig(
        text_config={
            "model_type": "modernbert", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "global_attn_every_n_layers": 1,
            "max_position_embeddings": 1024, "pad_token_id": pad_id, "bos_token_id": bos_id, "cls_token_id": bos_id,
            "eos_token_id": eos_id, "sep_token_id": eos_id,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        image_token_id=token_id("<image>"),
        pixel_shuffle_factor=2,
    )  # fmt: skip
    with _seeded(seed):
        model = ColModernVBert(config).eval()
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True, resample=3
    )
    return ColPaliParts(
        model, ColModernVBertProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
    )


# family name → (builder, the checkpoint's config.json model_type, its colpali-engine model class, its output dim)
TINY_FAMILIES: dict[str, tuple[Callable[[int], ColPaliParts], str, str, int]] = {
    "colqwen3": (build_tiny_colqwen3, "qwen3_vl", "ColQwen3", 320),
    "colqwen3_5": (build_tiny_colqwen3_5, "qwen3_5", "ColQwen3_5", QWEN3_5_DIM),
    "colgemma3": (build_tiny_colgemma3, "gemma3", "ColGemma3", 128),
    "colmodernvbert": (build_tiny_colmodernvbert, "modernvbert", "ColModernVBert", 128),
}


def save_tiny_family(family: str, directory: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write one TINY_FAMILIES model as a checkpoint directory (config.json, safetensors, processor files)."""
    build = TINY_FAMILIES[family][0]
    model, processor = build(seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
