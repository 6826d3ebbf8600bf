"""Seeded random-init real-architecture embedders for tests and the `tiny-random` profile (plumbing checks only).

The architectures, processors and tokenizers are the real open_clip / colpali-engine / transformers code; only the
sizes are tiny and the weights random, so the vectors carry no meaning. Every builder is deterministic for a seed,
so an index written by one process can be queried by another. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mmrag.embedders.clip import OpenClipEmbedder
from mmrag.embedders.colpali import ColPaliEmbedder

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Read by the CLI and the API to warn that the tiny-random profile's search results mean nothing.
MEANINGLESS = True
REVISION = "random-init"
DEFAULT_SEED = 0

# Small enough to build in milliseconds; vocab_size stays 49408 so open_clip's real BPE tokenizer fits.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)  # fmt: skip
IDEFICS3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
)  # fmt: skip


class ClipParts(NamedTuple):
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]


class ColPaliParts(NamedTuple):
    model: Any
    processor: Any


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for weight init without disturbing the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_tiny_clip(seed: int = DEFAULT_SEED) -> ClipParts:
    """open_clip's CLIP class built from TINY_CLIP_CONFIG, its eval preprocess and the real CLIP tokenizer."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    # Built from the config dict rather than registered with open_clip.add_model_config: that registry is global,
    # file-backed state, and create_model only adds fp32 placement and the preprocess config set here.
    with _seeded(seed):
        model = open_clip.CLIP(**TINY_CLIP_CONFIG).eval()
    preprocess_cfg = PreprocessCfg(size=TINY_CLIP_CONFIG["vision_cfg"]["image_size"])
    open_clip.set_model_preprocess_cfg(model, asdict(preprocess_cfg))
    preprocess = image_transform_v2(preprocess_cfg, is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=TINY_CLIP_CONFIG["text_cfg"]["context_length"])
    return ClipParts(model, preprocess, tokenizer)


def save_tiny_clip(directory: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the tiny CLIP as an open_clip `local-dir:` checkpoint (open_clip_config.json + safetensors)."""
    from safetensors.torch import save_file

    model, _, _ = build_tiny_clip(seed)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), directory / "open_clip_model.safetensors")
    preprocess_cfg = {"mean": list(model.visual.image_mean), "std": list(model.visual.image_std)}
    config = {"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": preprocess_cfg}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def build_tiny_colqwen2(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColQwen2 on a tiny Qwen2-VL config, with a ColQwen2Processor around an in-memory tokenizer."""
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = _byte_level_tokenizer(QWEN2_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            # mrope sections split head_dim / 2 = 8 rotary frequencies over (time, height, width)
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "max_position_embeddings": 1024,
            "pad_token_id": token_id("<|endoftext|>"),
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    with _seeded(seed):
        model = ColQwen2(config).eval()
    # At most 112x112 px → 8x8 patches → 16 merged image tokens per page.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = ColQwen2Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )
    return ColPaliParts(model, processor)


def save_tiny_colqwen2(directory: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the tiny ColQwen2 as a transformers checkpoint (config.json, safetensors, processor files)."""
    model, processor = build_tiny_colqwen2(seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_colidefics3(seed: int = DEFAULT_SEED) -> ColPaliParts:
    """colpali-engine ColIdefics3 (the ColSmol family) on a tiny Idefics3 config with an in-memory tokenizer."""
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3Config, Idefics3ImageProcessor

    tokenizer = _byte_level_tokenizer(IDEFICS3_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<end_of_utterance>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "pad_token_id": pad_id,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=pad_id,
    )
    with _seeded(seed):
        model = ColIdefics3(config).eval()
    # Pages resize to 64 px and split into 32 px tiles (2x2 + a global view), each (32/8)^2 / 2^2 = 4 tokens.
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 32},
        do_image_splitting=True,
        resample=3,  # bicubic: the real LANCZOS needs a newer torchvision and only warns and falls back to it
    )
    processor = ColIdefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
    return ColPaliParts(model, processor)


def build_tiny_clip_embedder(
    *, device: str = "auto", batch_size: int = 32, seed: int = DEFAULT_SEED
) -> OpenClipEmbedder:
    model, preprocess, tokenizer = build_tiny_clip(seed)
    return OpenClipEmbedder(
        model,
        preprocess,
        tokenizer,
        model_id="tiny-random:clip",
        revision=REVISION,
        device=device,
        batch_size=batch_size,
        meaningless=MEANINGLESS,
    )


def build_tiny_colpali_embedder(
    *, device: str = "auto", batch_size: int = 4, seed: int = DEFAULT_SEED
) -> ColPaliEmbedder:
    model, processor = build_tiny_colqwen2(seed)
    return ColPaliEmbedder(
        model,
        processor,
        model_id="tiny-random:colqwen2",
        revision=REVISION,
        device=device,
        batch_size=batch_size,
        meaningless=MEANINGLESS,
    )


def _byte_level_tokenizer(special_tokens: Sequence[str], *, pad: str, eos: str) -> Any:
    """A byte-level BPE with no merges (one token per byte) plus the model's special tokens: encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, eos_token=eos)
