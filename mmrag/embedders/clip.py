"""CLIP image/text embeddings through open-clip-torch: `load_clip(spec)` and the `OpenClipEmbedder` it returns."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mmrag.device import is_cuda_device, resolve_device
from mmrag.checkpoints import LOCAL_DIR_PREFIX
from mmrag.embedders.runtime import encode_in_batches
from mmrag.errors import ModelUnavailableError
from mmrag.inputs import ClipPixels

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
SPEC_FORMS = "'MODEL:PRETRAINED_TAG' (e.g. 'ViT-B-32:laion2b_s34b_b79k'), 'hf-hub:org/repo' or 'local-dir:/path'"


class OpenClipEmbedder:
    """An open_clip model with its preprocess and tokenizer; satisfies the ImageEmbedder protocol."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        *,
        model_id: str,
        revision: str,
        device: str = "auto",
        batch_size: int = 32,
        meaningless: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.batch_size = batch_size
        # True only for random-init models: vectors exercise the plumbing but carry no meaning.
        self.meaningless = meaningless
        self._mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # set by input_spec()
        # Probed rather than read from a config: open_clip's CLIP, CustomTextCLIP and CoCa keep it in different places.
        self.dim = int(self._encode_texts([""]).shape[1])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        return self._encode_all(images, self._encode_images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        return self._encode_all(list(texts), self._encode_texts)

    def input_spec(self) -> ClipPixels | None:
        """What the bulk job's workers should hand back instead of a PIL image (see embed_inputs), or None when
        this model's preprocess is not open_clip's plain resize + centre crop."""
        import open_clip

        config = open_clip.get_model_preprocess_cfg(self.model)
        size = config.get("size")
        size = size[0] if isinstance(size, (tuple, list)) and len(set(size)) == 1 else size
        names = [type(step).__name__ for step in getattr(self.preprocess, "transforms", ())]
        if (
            not isinstance(size, int)
            or config.get("resize_mode", "shortest") != "shortest"
            or config.get("interpolation", "bicubic") not in ("bicubic", "bilinear")
            or names[:2] != ["Resize", "CenterCrop"]
            or "Normalize" not in names
        ):
            return None
        self._mean_std = (tuple(config["mean"]), tuple(config["std"]))
        return ClipPixels(size=size, interpolation=config.get("interpolation", "bicubic"))

    def embed_inputs(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) float32, L2-normalised, from input_spec()'s uint8 (3, size, size) arrays: the preprocess
        minus the resize, with the scaling and normalising done on the device."""
        if self._mean_std is None and self.input_spec() is None:
            raise ValueError(f"{self.model_id}: its preprocess is not resize + centre crop; use embed_images")
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # On CUDA the next batch is stacked, pinned and copied while this one runs (see encode_in_batches).
        rows, self.batch_size = encode_in_batches(
            pixels, self.batch_size, self._encode_pixels, stage=self._pixels_to_device,
            ahead=is_cuda_device(self.device),
        )
        return np.stack(rows).astype(np.float32, copy=False)

    def _pixels_to_device(self, pixels: Sequence[np.ndarray]) -> Any:
        batch = _stacked(pixels, pin=is_cuda_device(self.device))
        return batch.to(self.device, non_blocking=True)

    def _encode_pixels(self, on_device: Any) -> np.ndarray:
        import torch

        mean, std = self._mean_std
        images = on_device.float().div_(255.0)
        mean_t = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        images = images.sub_(mean_t).div_(std_t)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(images)
        return _normalised_numpy(features)

    def _encode_all(self, items: Sequence[Any], encode_batch: Callable[[Sequence[Any]], np.ndarray]) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows, self.batch_size = encode_in_batches(items, self.batch_size, encode_batch)
        return np.stack(rows).astype(np.float32, copy=False)

    def _encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(pixels)
        return _normalised_numpy(features)

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_text(tokens)
        return _normalised_numpy(features)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        import torch

        # fp16 halves memory and time on GPUs; CPU autocast (bf16) is slow and loses precision, so CPU stays fp32.
        if is_cuda_device(self.device):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def _stacked(arrays: Sequence[np.ndarray], *, pin: bool) -> torch.Tensor:
    """One uint8 batch tensor; in page-locked memory for a CUDA device, so the copy to it can run asynchronously."""
    import torch

    first = arrays[0]
    batch = torch.empty((len(arrays), *first.shape), dtype=torch.uint8, pin_memory=pin)
    np.stack(arrays, out=batch.numpy())
    return batch


def _normalised_numpy(features: torch.Tensor) -> np.ndarray:
    import torch.nn.functional as functional

    # Normalise in fp32: under autocast the features are fp16, whose norm loses precision.
    return functional.normalize(features.float(), dim=-1).cpu().numpy()


def load_clip(spec: str, *, device: str = "auto", batch_size: int = 32) -> OpenClipEmbedder:
    """Load pretrained CLIP weights named by `spec`; refuses anything that would leave random weights.

    `spec` is 'MODEL:PRETRAINED_TAG' (an open_clip architecture and one of its pretrained tags, or a weights file),
    'hf-hub:org/repo' or 'local-dir:/path' (a directory holding open_clip_config.json and the weights).
    """
    import open_clip

    model_name, pretrained, model_id, revision = _parse_spec(spec)
    with _hub_cache_only(), _quiet_root_errors(Path(open_clip.__file__).parent):
        try:
            # create_model_from_pretrained sets require_pretrained=True: a missing checkpoint raises, never
            # random-inits.
            model, preprocess = open_clip.create_model_from_pretrained(model_name, pretrained=pretrained, device="cpu")
        except Exception as error:  # open_clip raises RuntimeError, ValueError, OSError and hub errors
            reason = f"open_clip could not load it ({type(error).__name__}: {error})"
            raise ModelUnavailableError(spec, reason) from error
        # The text tower's own tokenizer (a Hugging Face one for SigLIP 2, MetaCLIP 2 worldwide, ...), which open_clip
        # fetches only now; transformers' error for missing files names neither the model nor the files.
        _check_tokenizer_files(spec, model_name)
        try:
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as error:  # transformers raises OSError, ValueError; open_clip FileNotFoundError
            raise ModelUnavailableError(
                spec, f"open_clip could not load its tokenizer ({type(error).__name__}: {error})"
            ) from error
    if revision is None:
        revision = _hub_revision(model_name.removeprefix(HF_HUB_PREFIX))
    log.info("loaded CLIP %s (revision %s)", model_id, revision)
    return OpenClipEmbedder(
        model, preprocess, tokenizer, model_id=model_id, revision=revision, device=device, batch_size=batch_size
    )


@contextmanager
def _quiet_root_errors(package: Path) -> Iterator[None]:
    """While open_clip loads: what it logs through the root logger (`logging.error("Failed to download weights
    ...")` before it raises the same words) goes to this module's debug log instead, so the user's first line is
    mmrag's ModelUnavailableError, which carries the reason, not a third party's ERROR printed before it."""
    root = logging.getLogger()
    prefix = str(package)

    def demote(record: logging.LogRecord) -> bool:
        if record.pathname.startswith(prefix):
            log.debug("open_clip: %s", record.getMessage())
            return False
        return True

    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)


@contextmanager
def _hub_cache_only() -> Iterator[None]:
    """Make huggingface_hub answer from the local cache only while open_clip loads (it has no such option),
    so a tag missing from the cache fails at once instead of downloading weights at run time."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _parse_spec(spec: str) -> tuple[str, str | None, str, str | None]:
    """(open_clip model name, pretrained tag or file, model_id, revision if known before loading)."""
    import open_clip

    if spec.startswith(HF_HUB_PREFIX):
        if not spec.removeprefix(HF_HUB_PREFIX):
            raise ModelUnavailableError(spec, f"empty hub id; use {SPEC_FORMS}")
        return spec, None, f"open_clip:{spec}", None
    if spec.startswith(LOCAL_DIR_PREFIX):
        directory = Path(spec.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
        if not directory.is_dir():
            raise ModelUnavailableError(spec, f"directory {str(directory)!r} does not exist")
        resolved = f"{LOCAL_DIR_PREFIX}{directory.resolve()}"
        return resolved, None, f"open_clip:{resolved}", "local"

    architecture, _, pretrained = spec.partition(":")
    if not pretrained:
        raise ModelUnavailableError(
            spec, f"no pretrained weights named, and open_clip would build random weights; use {SPEC_FORMS}"
        )
    if architecture not in open_clip.list_models():
        raise ModelUnavailableError(spec, f"{architecture!r} is not an open_clip architecture (see list_models())")
    known_tags = open_clip.list_pretrained_tags_by_model(architecture)
    if pretrained in known_tags:
        _check_activation(spec, architecture, pretrained)
        # A tag names one fixed set of weights in open_clip's pretrained table, so it is its own revision.
        return architecture, pretrained, f"open_clip:{architecture}:{pretrained}", pretrained
    if Path(pretrained).expanduser().is_file():
        return architecture, str(Path(pretrained).expanduser().resolve()), f"open_clip:{spec}", "local"
    raise ModelUnavailableError(
        spec, f"{pretrained!r} is neither a pretrained tag of {architecture} ({', '.join(known_tags)}) nor a file"
    )


def _check_activation(spec: str, architecture: str, tag: str) -> None:
    """Refuse weights trained with QuickGELU in an architecture built with GELU, or the reverse: open_clip only
    warns, and the model then computes wrong vectors (e.g. 'ViT-H-14-worldwide:metaclip2_worldwide', MetaCLIP 2,
    whose weights need 'ViT-H-14-worldwide-quickgelu')."""
    import open_clip

    tag_quick_gelu = bool(open_clip.get_pretrained_cfg(architecture, tag).get("quick_gelu", False))
    model_quick_gelu = bool((open_clip.get_model_config(architecture) or {}).get("quick_gelu", False))
    if tag_quick_gelu == model_quick_gelu:
        return
    other = f"{architecture}-quickgelu" if tag_quick_gelu else architecture.removesuffix("-quickgelu")
    fits = other in open_clip.list_models() and tag in open_clip.list_pretrained_tags_by_model(other)
    trained, built = ("QuickGELU", "GELU") if tag_quick_gelu else ("GELU", "QuickGELU")
    raise ModelUnavailableError(
        spec,
        f"{tag!r} was trained with {trained} activations but {architecture!r} builds {built} ones, which would give "
        f"wrong vectors" + (f"; use '{other}:{tag}'" if fits else ""),
    )


# What AutoTokenizer.from_pretrained builds a tokenizer from: tokenizers' serialisation, or the config beside a
# sentencepiece model. A directory with neither fails inside transformers with a message that names no file.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _check_tokenizer_files(spec: str, model_name: str) -> None:
    """Refuse, naming what to fetch, a model whose Hugging Face tokenizer is not on this machine (open_clip would
    look it up on the hub, or fail inside transformers with an error about neither the model nor the files). Models
    without `hf_tokenizer_name` (PE-Core, OpenAI-style CLIP) use open_clip's bundled BPE tokenizer and need nothing."""
    import open_clip

    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    name = text_cfg.get("hf_tokenizer_name")
    if not name:
        return
    if model_name.startswith(LOCAL_DIR_PREFIX):
        # open_clip reads a local-dir checkpoint's tokenizer from that directory, whatever hf_tokenizer_name says.
        directory = Path(model_name.removeprefix(LOCAL_DIR_PREFIX))
        if not any((directory / file).is_file() for file in TOKENIZER_FILES):
            raise ModelUnavailableError(
                spec,
                f"its text tower uses the Hugging Face tokenizer {name!r}, which open_clip reads from the checkpoint "
                f"directory, and {str(directory)!r} has no {' or '.join(TOKENIZER_FILES)}; save it there "
                f"(AutoTokenizer.from_pretrained({name!r}).save_pretrained(DIR))",
            )
        return
    if Path(name).expanduser().is_dir():
        return  # a tokenizer directory named in a custom config; transformers reports what it lacks
    from huggingface_hub import try_to_load_from_cache

    # From a hub repo, AutoTokenizer also reads the repo's config.json (a file the cache knows to be absent will do).
    has_tokenizer = any(isinstance(try_to_load_from_cache(name, file), str) for file in TOKENIZER_FILES)
    if not has_tokenizer or try_to_load_from_cache(name, "config.json") is None:
        raise ModelUnavailableError(
            spec,
            f"its text tower's tokenizer {name!r} is not in the Hugging Face cache (it needs config.json and "
            f"{' or '.join(TOKENIZER_FILES)}: `huggingface-cli download {name} --include '*.json' '*.model'`)",
        )


def _hub_revision(repo_id: str) -> str:
    """The commit hash of the cached hub snapshot open_clip just loaded from."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "open_clip_config.json")
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/open_clip_config.json
    return "unknown"
