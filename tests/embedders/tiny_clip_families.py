"""Tiny random-init `local-dir:` checkpoints of open_clip's current families: SigLIP 2, PE-Core, MetaCLIP 2 worldwide.

Each config is the real one from open_clip's registry (`get_model_config`) with only the sizes shrunk, and each
preprocess config is the real pretrained tag's (`get_pretrained_cfg`), so open_clip picks the same model class, text
tower, pooling, tokenizer and image transform as for the real weights. The text tokenizers are the real classes
(transformers' GemmaTokenizer for SigLIP 2, XLMRobertaTokenizer for MetaCLIP 2's XLM-V, open_clip's SimpleTokenizer
for PE-Core) with tiny vocabularies, saved beside the weights: for a `local-dir:` checkpoint whose config names an
`hf_tokenizer_name`, open_clip loads the tokenizer from that directory.

open_clip's timm towers take a timm model name and no size arguments, so the tiny towers are registered with timm
under new names whose builders are the real timm builders (`vit_base_patch16_siglip_224`,
`vit_pe_core_base_patch16_224`) called with tiny sizes: same timm class, same pooling, tiny widths.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TINY_SIZE = 32  # image side, and embed width everywhere
PATCH = 8
SEED = 0


def _register_tiny_timm_towers() -> None:
    from timm.models import is_model, register_model
    from timm.models.eva import vit_pe_core_base_patch16_224
    from timm.models.vision_transformer import vit_base_patch16_siglip_224

    if is_model("mmrag_tiny_vit_siglip"):
        return

    @register_model
    def mmrag_tiny_vit_siglip(pretrained: bool = False, **kwargs: Any) -> Any:
        tiny = dict(img_size=TINY_SIZE, patch_size=PATCH, embed_dim=TINY_SIZE, depth=1, num_heads=2)
        return vit_base_patch16_siglip_224(pretrained=False, **{**tiny, **kwargs})

    @register_model
    def mmrag_tiny_vit_pe_core(pretrained: bool = False, **kwargs: Any) -> Any:
        grid = TINY_SIZE // PATCH
        tiny = dict(
            img_size=TINY_SIZE, patch_size=PATCH, embed_dim=TINY_SIZE, depth=1, num_heads=2,
            ref_feat_shape=(grid, grid), attn_pool_num_heads=2,
        )  # fmt: skip
        return vit_pe_core_base_patch16_224(pretrained=False, **{**tiny, **kwargs})


_register_tiny_timm_towers()

TINY_TEXT = {"width": TINY_SIZE, "heads": 2, "layers": 1}
# a few whole words, so texts are not all single bytes; everything else goes through the tokenizers' fallbacks
WORDS = ("invoice", "total", "amount", "red", "square", "date", "page", "photo", "the", "a", "of", "on", "is")


def gemma_tokenizer() -> Any:
    """transformers' GemmaTokenizer (the SigLIP 2 text tokenizer) on a tiny BPE vocabulary with byte fallback, set up
    as open_clip's SigLipTokenizer sets up the real one: pad right, no BOS, EOS appended."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Gemma's ids 0..4: pad 0, eos 1
    symbols = [*specials, *(f"<0x{byte:02X}>" for byte in range(256)), "▁", *"abcdefghijklmnopqrstuvwxyz"]
    merges = []
    for word in WORDS:
        piece = "▁" + word[0]
        merges.append(("▁", word[0]))
        symbols.append(piece)
        for char in word[1:]:
            merges.append((piece, char))
            piece += char
            symbols.append(piece)
    vocab = {symbol: index for index, symbol in enumerate(dict.fromkeys(symbols))}
    merges = list(dict.fromkeys(merges))
    return GemmaTokenizer(
        vocab=vocab, merges=merges, padding_side="right", add_bos_token=False, add_eos_token=True
    )


def xlm_v_tokenizer() -> Any:
    """transformers' XLMRobertaTokenizer (XLM-V's class: a Unigram model, <s> 0, <pad> 1, </s> 2, <unk> 3) on a tiny
    vocabulary."""
    from transformers import XLMRobertaTokenizer

    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [(f"▁{word}", -2.0) for word in WORDS] + [(char, -5.0) for char in "▁abcdefghijklmnopqrstuvwxyz0123456789?"]
    return XLMRobertaTokenizer(vocab=[*specials, *pieces, ("<mask>", 0.0)])


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # open_clip's registry name of the real config
    tag: str  # the real pretrained tag, whose preprocess config the checkpoint carries
    shrink: Callable[[dict[str, Any], int | None], None]  # shrinks the config in place; gets the tokenizer's length
    tokenizer: Callable[[], Any] | None  # None: open_clip's own (SimpleTokenizer, 49408 tokens)


def _shrink_timm(config: dict[str, Any], timm_name: str, vocab_size: int | None) -> None:
    config["embed_dim"] = TINY_SIZE
    config["vision_cfg"].update(image_size=TINY_SIZE, timm_model_name=timm_name)
    config["text_cfg"].update(TINY_TEXT)
    if vocab_size is not None:
        config["text_cfg"]["vocab_size"] = vocab_size


def _shrink_vit(config: dict[str, Any], vocab_size: int | None) -> None:
    config["embed_dim"] = TINY_SIZE
    config["vision_cfg"].update(image_size=TINY_SIZE, layers=1, width=64, head_width=32, patch_size=PATCH)
    config["text_cfg"].update(TINY_TEXT, vocab_size=vocab_size)


FAMILIES = {
    "siglip2": Family(
        "siglip2", "ViT-B-16-SigLIP2", "webli",
        lambda config, vocab: _shrink_timm(config, "mmrag_tiny_vit_siglip", vocab), gemma_tokenizer,
    ),
    "pe-core": Family(
        "pe-core", "PE-Core-B-16", "meta",
        lambda config, vocab: _shrink_timm(config, "mmrag_tiny_vit_pe_core", vocab), None,
    ),
    "metaclip2": Family(
        "metaclip2", "ViT-H-14-worldwide-quickgelu", "metaclip2_worldwide", _shrink_vit, xlm_v_tokenizer,
    ),
}  # fmt: skip


def tiny_config(family: Family, vocab_size: int | None) -> dict[str, Any]:
    """open_clip_config.json's content: the real model config shrunk, and the real tag's preprocess config."""
    import open_clip

    model_cfg = open_clip.get_model_config(family.architecture)
    family.shrink(model_cfg, vocab_size)
    tag = open_clip.get_pretrained_cfg(family.architecture, family.tag)
    keys = ("mean", "std", "interpolation", "resize_mode")
    preprocess_cfg = {key: list(tag[key]) if isinstance(tag[key], tuple) else tag[key] for key in keys}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def save_tiny_family(family: Family, directory: Path, *, with_tokenizer: bool = True) -> Path:
    """Write a tiny random-init `local-dir:` checkpoint of `family` (config, safetensors, tokenizer files)."""
    import open_clip
    from safetensors.torch import save_file

    tokenizer = family.tokenizer() if family.tokenizer else None
    config = tiny_config(family, len(tokenizer) if tokenizer is not None else None)
    with torch.random.fork_rng(devices=[]), _without_root_warnings():
        torch.manual_seed(SEED)
        # open_clip's own factory on the config alone, so it picks the model class as it will when loading
        model = open_clip.create_model(
            "local-dir:" + str(_config_only(directory, config)), load_weights=False, pretrained_text=False
        )
    save_file(model.state_dict(), directory / "open_clip_model.safetensors")
    if tokenizer is not None and with_tokenizer:
        tokenizer.save_pretrained(directory)
    return directory


@contextmanager
def _without_root_warnings() -> Iterator[None]:
    """open_clip warns through the root logger that this model is random-initialised: here that is the point."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _config_only(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory
