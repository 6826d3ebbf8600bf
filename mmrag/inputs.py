"""Model input specs: what an embedder asks the ingest workers to make from a page (decoded, resized for a model).

The embedders declare them and the workers run them, so they live below both.

The main process of a bulk job has a fraction of a millisecond per image at GPU speed, so everything per-pixel
happens here, beside the decode: a worker hands back a compact uint8 array (CLIP, Qwen2-VL-based ColPali models) or
the processor's own tensors (other ColPali families), and the main process only stacks them and moves them to the
device, where they are normalised (and, for Qwen2-VL, cut into patches).

Kept light: Pillow and numpy only at import; `ClipPixels` and `QwenPixels` import torch, and `ProcessorInputs`
colpali-engine, when first used, in the worker that uses it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.errors import InputError


def _resized_uint8(pixels: Any, size: tuple[int, int], mode: str) -> Any:
    """A (3, h, w) uint8 tensor resized to `size` (h, w) with torch's native uint8 antialiased kernel: the one
    torchvision runs on uint8 tensors on the CPU (fixed-point arithmetic, not float then round), which the Qwen2-VL
    processor uses and which comes within 1 of PIL's resampling."""
    import torch

    return torch.nn.functional.interpolate(pixels[None], size=size, mode=mode, align_corners=False, antialias=True)[0]


def _chw_uint8(image: Image.Image) -> Any:
    """An RGB image as a (3, h, w) uint8 tensor (a view of a writable copy of its pixels)."""
    import torch

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


@dataclass(frozen=True)
class ClipPixels:
    """open_clip's eval transform up to the tensor: shortest side to `size`, centre crop, RGB uint8 (3, size, size).

    The geometry of torchvision's Resize(int) + CenterCrop, which open_clip's preprocess runs on a PIL image; the
    resampling is torch's native uint8 kernel (antialiased, as PIL's), which torchvision uses for uint8 tensors:
    faster than PIL's in a worker, where the resize is a large share of a photo's cost, and within 1 of PIL's
    value for every pixel (tests hold it). Channels first, as the resize leaves them and the model takes them
    (channels last would cost a transpose per photo). Normalising (x/255 - mean)/std happens on the device.
    """

    size: int
    interpolation: str = "bicubic"
    # A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Image.draft) when that still leaves at least
    # `size` pixels on the short side: much less decode and resize work for photos larger than the model input.
    draft: bool = True

    def from_image(self, image: Image.Image) -> np.ndarray:
        width, height = image.size
        # torchvision.transforms.functional.resize: the long side is int(size * long / short)
        if width <= height:
            new_width, new_height = self.size, int(self.size * height / width)
        else:
            new_width, new_height = int(self.size * width / height), self.size
        # torchvision CenterCrop: top/left = int(round((dim - size) / 2))
        top = int(round((new_height - self.size) / 2.0))
        left = int(round((new_width - self.size) / 2.0))
        pixels = _chw_uint8(image)
        if (new_width, new_height) != (width, height):
            pixels = _resized_uint8(pixels, (new_height, new_width), self.interpolation)
        return np.ascontiguousarray(pixels[:, top : top + self.size, left : left + self.size].numpy())

    def from_jpeg(self, data: bytes) -> np.ndarray:
        """From JPEG bytes, decoded at the smallest DCT scale that keeps `size` pixels on the short side."""
        with Image.open(io.BytesIO(data)) as image:
            if self.draft and image.format == "JPEG":
                image.draft("RGB", (self.size, self.size))
            image.load()
            return self.from_image(image)


@dataclass(frozen=True)
class QwenPixels:
    """Qwen2-VL's image processor (ColQwen2, ColQwen2.5) up to its resize: RGB uint8 (3, h, w), h and w multiples of
    `patch_size * merge_size` with h*w within [min_pixels, max_pixels] (transformers' smart_resize), resized the
    way the processor resizes a uint8 tensor on the CPU (torch's native uint8 bicubic with antialias). The embedder
    rescales, normalises and cuts it into patches on the device with the processor's own methods, so the model sees
    what `process_images` would give it, from a quarter of the bytes (uint8 once instead of float pixels repeated
    over the two temporal frames), and the workers need torch, not transformers and colpali-engine (seconds of
    import before the first page).
    """

    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize (tests hold the two equal)."""
        factor = self.patch_size * self.merge_size
        ratio = max(height, width) / min(height, width)
        if ratio > 200:
            raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio}")
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt((height * width) / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def from_image(self, image: Image.Image) -> QwenPage:
        pixels = _chw_uint8(image)  # (3, h, w) uint8, as the processor converts
        height, width = pixels.shape[1:]
        try:
            target = self.target_size(height, width)
        except ValueError as exc:  # the model cannot take this page at all, as the processor would also say
            raise InputError(f"page of {width}x{height} pixels: {exc}") from None
        if target != (height, width):
            # the processor's own kernel on uint8 input, so the pixels are exactly the processor's
            pixels = _resized_uint8(pixels, target, "bicubic")
        return QwenPage(np.ascontiguousarray(pixels.numpy()), (height, width))

    def from_jpeg(self, data: bytes) -> QwenPage:
        with Image.open(io.BytesIO(data)) as image:
            return self.from_image(image.convert("RGB"))


@dataclass(frozen=True)
class QwenPage:
    """A QwenPixels page: the resized pixels, and the size they were resized from (the processor derives the
    page's token count from it; smart_resize is not idempotent for very thin pages, so the resized size cannot
    stand in for it)."""

    pixels: np.ndarray  # (3, h, w) uint8
    source_size: tuple[int, int]  # (height, width) before resizing

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


@dataclass(frozen=True)
class ProcessorInputs:
    """A colpali-engine processor's `process_images` output for one page, made in the worker.

    The processor is loaded from `processor_dir` (a checkpoint or a saved processor) once per worker process;
    floating tensors are cast to `dtype` (the model's) there, which halves what crosses the pipe in bf16.
    """

    processor_class: str  # a colpali_engine.models class name, e.g. ColQwen2Processor
    processor_dir: str
    dtype: str = "float32"

    def from_image(self, image: Image.Image) -> dict[str, TensorData]:
        import torch

        inputs = _processor(self.processor_class, self.processor_dir).process_images([image])
        dtype = getattr(torch, self.dtype)
        return {
            name: TensorData.of(value.to(dtype) if value.is_floating_point() else value)
            for name, value in inputs.items()
        }

    def from_jpeg(self, data: bytes) -> dict[str, TensorData]:
        with Image.open(io.BytesIO(data)) as image:
            return self.from_image(image.convert("RGB"))


@dataclass(frozen=True)
class TensorData:
    """A torch tensor as plain numpy bytes for the trip from a worker (bfloat16 travels as its 16-bit pattern).

    torch's own pickling of tensors between processes goes through shared memory and a file descriptor per tensor,
    which a bulk job's thousands of pages in flight would exhaust; a numpy array is one buffer in the pipe.
    """

    array: np.ndarray
    dtype: str  # torch dtype name

    @classmethod
    def of(cls, tensor: Any) -> TensorData:
        import torch

        name = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype == torch.bfloat16:
            return cls(tensor.contiguous().view(torch.int16).numpy(), name)
        return cls(tensor.contiguous().numpy(), name)

    def tensor(self) -> Any:
        import torch

        value = torch.from_numpy(self.array)
        return value.view(torch.bfloat16) if self.dtype == "bfloat16" else value

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


InputSpec = ClipPixels | QwenPixels | ProcessorInputs

_PROCESSORS: dict[tuple[str, str], Any] = {}  # per process: a worker loads each processor once, not per page


def _processor(class_name: str, directory: str) -> Any:
    key = (class_name, directory)
    if key not in _PROCESSORS:
        import colpali_engine.models as colpali_models

        _PROCESSORS[key] = getattr(colpali_models, class_name).from_pretrained(directory, local_files_only=True)
    return _PROCESSORS[key]


def prepare_from_file(path: Path, specs: tuple[InputSpec, ...]) -> tuple[Any, ...]:
    """Every spec's input from a stored page image (how `repair` re-embeds, the same way the workers did)."""
    data = Path(path).read_bytes()
    return tuple(spec.from_jpeg(data) for spec in specs)
