"""Late-interaction page embeddings through colpali-engine: `load_colpali(model)` and the `ColPaliEmbedder`."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.checkpoints import LocatedCheckpoint, locate_checkpoint
from mmrag.device import is_cuda_device, resolve_device, select_dtype
from mmrag.embedders.runtime import encode_in_batches
from mmrag.errors import MmragError, ModelUnavailableError
from mmrag.inputs import ProcessorInputs, QwenPage, QwenPixels, TensorData
from mmrag.types import PatchGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColPaliFamily:
    """colpali-engine's model and processor classes for one checkpoint `model_type`."""

    model_class: str
    processor_class: str


# Keyed by the checkpoint's own config.json `model_type` (for a PEFT adapter, its base model's), never by the name.
FAMILIES: dict[str, ColPaliFamily] = {
    "paligemma": ColPaliFamily("ColPali", "ColPaliProcessor"),
    "qwen2_vl": ColPaliFamily("ColQwen2", "ColQwen2Processor"),
    "qwen2_5_vl": ColPaliFamily("ColQwen2_5", "ColQwen2_5_Processor"),
    "idefics3": ColPaliFamily("ColIdefics3", "ColIdefics3Processor"),
    "qwen3_vl": ColPaliFamily("ColQwen3", "ColQwen3Processor"),
    "qwen3_5": ColPaliFamily("ColQwen3_5", "ColQwen3_5Processor"),
    "gemma3": ColPaliFamily("ColGemma3", "ColGemmaProcessor3"),
    "modernvbert": ColPaliFamily("ColModernVBert", "ColModernVBertProcessor"),
}

# transformers' own ColPaliForRetrieval / ColQwen2ForRetrieval ("-hf" checkpoints) are a different format.
TRANSFORMERS_NATIVE_TYPES = {"colpali", "colqwen2"}

# Families whose page patches tile the page in one grid, and how its rows and columns are read (patch_grid): Qwen2-VL's
# merged patches from the processor's image_grid_thw (Qwen3-VL and Qwen3.5 use the same image processor and merge),
# PaliGemma's from its square image, Gemma 3's from its square image's patches pooled row-major into square blocks
# (its image tokens read from the model config: colpali-engine's get_image_mask marks Gemma 3's begin-of-image token).
# Idefics3 and ModernVBert split a page into tiles plus a shrunk copy of the whole, which one grid does not describe.
GRID_FAMILIES = {
    "ColPali": "square",
    "ColGemma3": "pooled_square",
    "ColQwen2": "qwen",
    "ColQwen2_5": "qwen",
    "ColQwen3": "qwen",
    "ColQwen3_5": "qwen",
}
MAX_GRIDS = 256  # page sizes whose patch grid is kept (patch_grid)

ADAPTER_CONFIG = "adapter_config.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class ColPaliEmbedder:
    """A colpali-engine model and processor; satisfies the MultiVectorEmbedder protocol."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        revision: str,
        device: str = "auto",
        batch_size: int = 4,
        meaningless: bool = False,
        processor_dir: Path | None = None,
    ) -> None:
        self.device = resolve_device(device)
        # Where worker processes load the same processor from (a checkpoint); None: input_spec saves a copy.
        self.processor_dir = processor_dir
        if not is_cuda_device(self.device) and model.config._attn_implementation != "eager":
            # On CPU, torch's sdpa kernel returns NaN for fully masked (padding) rows under transformers 5;
            # eager attention keeps every position finite.
            model.set_attn_implementation("eager")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.batch_size = batch_size
        # True only for random-init models: vectors exercise the plumbing but carry no meaning.
        self.meaningless = meaningless
        self.family = type(model).__name__
        self.dim = int(model.dim)
        # QwenPixels: resized (h, w) → one page's text inputs (their token count follows from the resized size, so
        # the cache holds at most one entry per 28-pixel grid within max_pixels, whatever the photos' sizes)
        self._page_text: dict[tuple[int, int], dict[str, Any]] = {}
        self._grids: dict[tuple[int, int], PatchGrid | None] = {}

    @property
    def attn_implementation(self) -> str:
        return str(self.model.config._attn_implementation)

    def embed_images(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One (tokens, dim) float32 array per image; padding tokens removed."""
        return self._encode_all(list(images), self.processor.process_images)

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (tokens, dim) float32 array per query; padding tokens removed."""
        # process_queries (not process_texts) adds the query prefix and augmentation tokens the models were trained on.
        return self._encode_all(list(texts), self.processor.process_queries)

    def patch_grid(self, width: int, height: int) -> PatchGrid | None:
        """Where the patch vectors of a `width` x `height` page image sit in its stored token sequence (the
        processor's image-token mask over a blank page of that size), and the grid they tile the page in; None for
        a family whose patches are not one grid (see GRID_FAMILIES)."""
        key = (int(width), int(height))
        if key not in self._grids:
            if len(self._grids) >= MAX_GRIDS:
                self._grids.clear()
            self._grids[key] = self._patch_grid(*key)
        return self._grids[key]

    def _patch_grid(self, width: int, height: int) -> PatchGrid | None:
        layout = GRID_FAMILIES.get(self.family)
        if layout is None:
            return None
        processed = self.processor.process_images([Image.new("RGB", (width, height))])
        kept = processed["attention_mask"][0].bool()
        if layout == "pooled_square":
            # the tokens the model replaces with image features; the processor's get_image_mask marks another one
            image_tokens = (processed["input_ids"][0] == int(self.model.config.image_token_id))[kept]
        else:
            image_tokens = self.processor.get_image_mask(processed)[0][kept]
        positions = tuple(int(i) for i in image_tokens.nonzero().flatten().tolist())
        if layout == "qwen":
            _, grid_h, grid_w = (int(n) for n in processed["image_grid_thw"][0].tolist())
            merge = int(self.processor.image_processor.merge_size)
            rows, cols = grid_h // merge, grid_w // merge
        elif layout == "pooled_square":
            # one square of mm_tokens_per_image tokens; pan-and-scan crops would add more squares, and no grid
            rows = cols = round(int(self.model.config.mm_tokens_per_image) ** 0.5)
        else:  # PaliGemma resizes every page to one square image
            rows = cols = round(len(positions) ** 0.5)
        if rows * cols != len(positions):
            log.warning("%s: %d image tokens for a %dx%d patch grid; no similarity maps", self.model_id,
                        len(positions), rows, cols)
            return None
        return PatchGrid(positions, rows, cols, int(kept.sum()))

    def query_words(self, text: str) -> np.ndarray:
        """Which of embed_queries([text])[0]'s tokens are the text's own: the tokens an empty query lacks, i.e.
        without the prompt prefix and the augmentation padding every query shares."""
        def ids(query: str) -> list[int]:
            processed = self.processor.process_queries([query])
            return processed["input_ids"][0][processed["attention_mask"][0].bool()].tolist()

        full, empty = ids(text), ids("")
        start = 0
        while start < min(len(full), len(empty)) and full[start] == empty[start]:
            start += 1
        suffix = 0
        while suffix < min(len(full), len(empty)) - start and full[-1 - suffix] == empty[-1 - suffix]:
            suffix += 1
        own = np.zeros(len(full), dtype=bool)
        own[start:len(full) - suffix] = True
        return own

    def input_spec(self, cache_dir: Path) -> QwenPixels | ProcessorInputs:
        """What the bulk job's workers should hand back instead of a PIL image: for a Qwen2-VL image processor, the
        resized uint8 page (QwenPixels; the rest of the processor runs on the device, see _pixels_batch), else this
        processor's own output for one page, its floating tensors already in the model's dtype."""
        qwen = qwen_pixels_for(self.processor)
        if qwen is not None:
            return qwen
        if self.processor_dir is None:
            # A processor built in memory (tiny-random, benchmarks): workers load it from a saved copy.
            directory = cache_dir / "processors" / hashlib.sha256(self.model_id.encode()).hexdigest()[:16]
            if not (directory / "processor_config.json").is_file() and not any(directory.glob("*.json")):
                directory.mkdir(parents=True, exist_ok=True)
                self.processor.save_pretrained(str(directory))
            self.processor_dir = directory
        dtype = str(self.model.dtype).removeprefix("torch.")
        return ProcessorInputs(type(self.processor).__name__, str(self.processor_dir), dtype)

    def embed_inputs(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        """One (tokens, dim) float32 array per page, from input_spec()'s per-page inputs: QwenPixels arrays, or
        processor outputs (tensors, or TensorData from a worker) padded into batches the way the processor pads."""
        if not inputs:
            return []
        if isinstance(inputs[0], QwenPage):
            stage: Any = self._pixels_batch
        else:
            stage = lambda batch: self._to_device(self._collate(batch))
        # On CUDA the next batch is collated, pinned and copied to the GPU while this one runs.
        outputs, self.batch_size = encode_in_batches(
            list(inputs), self.batch_size, self._forward, stage=stage, ahead=is_cuda_device(self.device)
        )
        return outputs

    def _pixels_batch(self, pages: Sequence[QwenPage]) -> dict[str, Any]:
        """QwenPixels pages → the model's inputs on the device: the processor's own rescale_and_normalize and
        patchify run there on the uint8 pages (stacked by size), and its text inputs (the visual prompt with one
        image token per merged patch) come from processing a blank page of each source size once."""
        import torch

        image_processor = self.processor.image_processor
        pin = is_cuda_device(self.device)
        batch = self._to_device(self._collate([self._text_inputs(page) for page in pages]))
        patches: list[Any] = [None] * len(pages)
        grids: list[list[int]] = [[]] * len(pages)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, page in enumerate(pages):
            by_size.setdefault(page.pixels.shape, []).append(index)
        for indices in by_size.values():
            stacked = torch.from_numpy(np.stack([pages[i].pixels for i in indices]))
            stacked = (stacked.pin_memory() if pin else stacked).to(self.device, non_blocking=pin)
            normalised = image_processor.rescale_and_normalize(
                stacked, image_processor.do_rescale, image_processor.rescale_factor, image_processor.do_normalize,
                image_processor.image_mean, image_processor.image_std,
            )
            flat, grid_h, grid_w = image_processor.patchify(
                normalised, patch_size=image_processor.patch_size, merge_size=image_processor.merge_size,
                temporal_patch_size=image_processor.temporal_patch_size,
            )
            for position, index in enumerate(indices):
                patches[index] = flat[position]
                grids[index] = [1, grid_h, grid_w]
        # process_images pads each page's patches to the batch's longest with zeros; the model drops the padding.
        batch["pixel_values"] = torch.nn.utils.rnn.pad_sequence(patches, batch_first=True).to(self.model.dtype)
        batch["image_grid_thw"] = torch.tensor(grids, dtype=torch.long, device=self.device)
        return batch

    def _text_inputs(self, page: QwenPage) -> dict[str, Any]:
        """One page's non-pixel inputs (input_ids, attention_mask, ...), the same for every page of its resized size;
        made by processing a blank page of its source size (the resized size itself may not map to itself)."""
        resized = page.pixels.shape[1:]
        key = (int(resized[0]), int(resized[1]))
        if key not in self._page_text:
            height, width = page.source_size
            processed = self.processor.process_images([Image.new("RGB", (width, height))])
            grid = processed["image_grid_thw"][0].tolist()
            patch = self.processor.image_processor.patch_size
            if grid[1:] != [resized[0] // patch, resized[1] // patch]:
                raise MmragError(f"{self.model_id}: the processor makes grid {grid} of a {width}x{height} page; "
                                 f"the worker resized it to {resized[1]}x{resized[0]}")
            self._page_text[key] = {
                name: value for name, value in processed.items() if name not in ("pixel_values", "image_grid_thw")
            }
        return self._page_text[key]

    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        items = [
            {name: value.tensor() if isinstance(value, TensorData) else value for name, value in item.items()}
            for item in items
        ]
        tokenizer = getattr(self.processor, "tokenizer", None)
        pad_id = getattr(tokenizer, "pad_token_id", 0) or 0
        left = getattr(tokenizer, "padding_side", "right") == "left"
        batch: dict[str, Any] = {}
        for name in items[0]:
            values = [item[name] for item in items]
            if all(value.shape == values[0].shape for value in values):
                batch[name] = torch.cat(values)
                continue
            # Token sequences pad on the tokenizer's side with its pad id (masks with 0); everything else (patches,
            # tiles) pads with zeros at the end, as process_images does for a batch.
            fill = pad_id if name == "input_ids" else 0
            token_aligned = all(
                value.dim() == 2 and value.shape[1] == item["input_ids"].shape[1]
                for value, item in zip(values, items, strict=True)
            )  # input_ids, attention_mask and the per-token type ids of whichever transformers version
            pad_left = left and token_aligned
            length = max(value.shape[1] for value in values)
            padded = []
            for value in values:
                missing = length - value.shape[1]
                extra = [0, 0] * (value.dim() - 2) + ([missing, 0] if pad_left else [0, missing])
                padded.append(torch.nn.functional.pad(value, extra, value=fill))
            batch[name] = torch.cat(padded)
        return batch

    def _encode_all(self, items: list[Any], process: Any) -> list[np.ndarray]:
        if not items:
            return []

        def encode_batch(batch: Sequence[Any]) -> list[np.ndarray]:
            return self._encode_batch(process(list(batch)))

        outputs, self.batch_size = encode_in_batches(items, self.batch_size, encode_batch)
        return outputs

    def _encode_batch(self, inputs: Any) -> list[np.ndarray]:
        return self._forward(self._to_device(inputs))

    def _to_device(self, inputs: Any) -> dict[str, Any]:
        model_dtype = self.model.dtype
        pin = is_cuda_device(self.device)  # page-locked host memory lets the copy to the GPU run asynchronously
        return {
            name: (value.pin_memory() if pin else value).to(
                self.device, dtype=model_dtype if value.is_floating_point() else value.dtype, non_blocking=pin
            )
            for name, value in inputs.items()
        }

    def _forward(self, tensors: dict[str, Any]) -> list[np.ndarray]:
        import torch

        model_dtype = self.model.dtype
        with torch.inference_mode():
            embeddings = self.model(**tensors)
        # One copy to the host for the whole batch, then the padding dropped there: a masked select per page on the
        # device synchronised with it once per page, between this batch's forward and the next.
        host = embeddings.float().cpu().numpy()
        keep = tensors["attention_mask"].bool().cpu().numpy()
        per_item = [item[mask] for item, mask in zip(host, keep, strict=True)]
        for vectors in per_item:
            if not np.isfinite(vectors).all():
                # Never hand NaN vectors to an index: MaxSim over them poisons every score they touch.
                raise MmragError(
                    f"{self.model_id} produced non-finite embeddings on {self.device} "
                    f"(dtype {model_dtype}, attention {self.attn_implementation})"
                )
        return per_item


def qwen_pixels_for(processor: Any) -> QwenPixels | None:
    """QwenPixels for a processor whose pages go through a Qwen2-VL image processor with bicubic resizing and a
    visual prompt (colpali-engine's ColQwen2, ColQwen2.5, ColQwen3 and ColQwen3.5 processors: Qwen3-VL and Qwen3.5
    kept Qwen2-VL's image processor, with 16-pixel patches); None for any other processor."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not type(image_processor).__name__.startswith("Qwen2VLImageProcessor"):
        return None
    needed = ("patchify", "rescale_and_normalize", "patch_size", "merge_size", "temporal_patch_size", "size")
    if not all(hasattr(image_processor, name) for name in needed) or not hasattr(processor, "visual_prompt_prefix"):
        return None
    if int(getattr(image_processor, "resample", -1)) != int(Image.Resampling.BICUBIC):
        return None
    size = image_processor.size  # a dict, or transformers 5's SizeDict
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if not shortest or not longest:
        return None
    return QwenPixels(int(image_processor.patch_size), int(image_processor.merge_size), int(shortest), int(longest))


def load_colpali(model: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 4) -> ColPaliEmbedder:
    """Load a ColPali-family checkpoint from a local directory or the local HF cache; never downloads.

    The model and processor classes come from the checkpoint's config.json `model_type` (a PEFT adapter's base model
    config), so a directory's name never decides the family.
    """
    device = resolve_device(device)
    checkpoint = locate_checkpoint(model)
    family_source, revision = _family_source(model, checkpoint)
    family = family_for_config(model, _read_json(model, family_source / "config.json"))
    loaded, processor, loading_info, processor_dir = from_checkpoint(
        model, checkpoint, family_source, revision, family.model_class, family.processor_class, device=device,
        dtype=dtype,
    )
    refuse_missing(model, family.model_class, loading_info.get("missing_keys", ()))
    model_id = f"colpali:{model}" if not checkpoint.is_local_dir else f"colpali:local-dir:{checkpoint.path}"
    return ColPaliEmbedder(
        loaded, processor, model_id=model_id, revision=revision, device=device, batch_size=batch_size,
        processor_dir=processor_dir,
    )


def from_checkpoint(
    model: str,
    checkpoint: LocatedCheckpoint,
    family_source: Path,
    revision: str,
    model_class: str,
    processor_class: str,
    *,
    device: str,
    dtype: str,
    **options: Any,
) -> tuple[Any, Any, dict[str, Any], Path]:
    """colpali-engine's `model_class` loaded from a located checkpoint (`options`: more from_pretrained arguments)
    and its `processor_class` from the checkpoint, else from the directory that names its family; never downloads.
    Returns the model, the processor, transformers' loading info and the processor's directory; a checkpoint that
    cannot be loaded is a ModelUnavailableError naming why."""
    import colpali_engine.models as colpali_models

    processor_dir = checkpoint.path if _has_processor(checkpoint.path) else family_source
    torch_dtype = select_dtype(dtype, device)
    log.info("loading %s as %s (%s on %s, revision %s)", model, model_class, torch_dtype, device, revision)
    try:
        loaded, loading_info = getattr(colpali_models, model_class).from_pretrained(
            str(checkpoint.path),
            dtype=torch_dtype,
            device_map=device,
            attn_implementation=attention_for(device),
            local_files_only=True,
            output_loading_info=True,
            **options,
        )
        processor = getattr(colpali_models, processor_class).from_pretrained(str(processor_dir), local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, safetensors errors... for this
        reason = f"{model_class} could not load it ({type(error).__name__}: {error})"
        raise ModelUnavailableError(model, reason) from error
    return loaded, processor, loading_info, processor_dir


def refuse_missing(model: str, model_class: str, missing_keys: Iterable[str]) -> None:
    """transformers random-initialises weights missing from a checkpoint and only logs it; refuse instead."""
    missing = sorted(missing_keys)
    if missing:
        reason = f"the checkpoint lacks weights for {len(missing)} {model_class} parameters"
        raise ModelUnavailableError(model, f"{reason} ({', '.join(missing[:5])})")


def family_for_config(model: str, config: dict[str, Any]) -> ColPaliFamily:
    """The family named by a checkpoint config's `model_type`; `architectures` only cross-checks it."""
    model_type = config.get("model_type")
    if model_type in TRANSFORMERS_NATIVE_TYPES:
        raise ModelUnavailableError(
            model,
            f"model_type {model_type!r} is transformers' native retrieval format, not colpali-engine's; "
            f"use the colpali-engine checkpoint (e.g. the id without '-hf')",
        )
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise ModelUnavailableError(
            model, f"model_type {model_type!r} is not a supported ColPali family (supported: {', '.join(FAMILIES)})"
        )
    architectures = config.get("architectures") or []
    from mmrag.embedders.bi import BI_CLASSES  # bi imports this module

    single = sorted(set(architectures) & BI_CLASSES)
    if single and family.model_class not in architectures:
        # Same model_type, no retrieval head: its missing weights would be refused in terms that hide what it is.
        raise ModelUnavailableError(
            model, f"it is a single-vector {single[0]} checkpoint, not a multi-vector {family.model_class} one: "
            f"set it as MMRAG_EMBEDDERS__BIPAGE__MODEL",
        )
    if architectures and family.model_class not in architectures:
        # A raw VLM or a single-vector Bi* checkpoint of the same model_type: the missing-weights check refuses it
        # if the retrieval head is absent, so this only warns.
        log.warning("%s: config architectures %s, loading as %s", model, architectures, family.model_class)
    return family


def attention_for(device: str) -> str:
    # CPU: sdpa gives NaN on padded positions with transformers 5 (see ColPaliEmbedder); GPUs use the fused kernel.
    return "sdpa" if is_cuda_device(device) else "eager"


def _family_source(model: str, checkpoint: LocatedCheckpoint) -> tuple[Path, str]:
    """The directory whose config.json names the family, and the revision to record."""
    if (checkpoint.path / "config.json").is_file():
        # Also covers a full model with an embedded adapter: transformers loads that directory's own weights.
        return checkpoint.path, checkpoint.revision
    adapter_path = checkpoint.path / ADAPTER_CONFIG
    if not adapter_path.is_file():
        raise ModelUnavailableError(model, f"{checkpoint.path} has neither config.json nor {ADAPTER_CONFIG}")
    base_name = _read_json(model, adapter_path).get("base_model_name_or_path")
    if not base_name:
        raise ModelUnavailableError(model, f"{adapter_path} names no base_model_name_or_path")
    try:
        base = locate_checkpoint(base_name)
    except ModelUnavailableError as error:
        raise ModelUnavailableError(model, f"its base model is unavailable: {error}") from error
    if not (base.path / "config.json").is_file():
        raise ModelUnavailableError(model, f"its base model {base_name!r} has no config.json at {base.path}")
    # The adapter alone does not fix the vectors; the base it is applied to does too.
    return base.path, f"{checkpoint.revision}+base:{base.revision}"


def _has_processor(directory: Path) -> bool:
    return any((directory / name).is_file() for name in PROCESSOR_FILES)


def _read_json(model: str, path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(model, f"cannot read {path} ({error})") from error
