"""Model inputs made in the worker processes: a page decoded (JPEGs at reduced DCT scale) and resized for a model.

The main process of a bulk job has a fraction of a millisecond per image at GPU speed, so everything per-pixel
happens here, beside the decode: a worker hands back a compact uint8 array (CLIP) or the processor's own tensors
(ColPali family), and the main process only stacks them and moves them to the device, where they are normalised.

Kept light: Pillow and numpy only at import; `ProcessorInputs` imports colpali-engine (and torch) when first used,
in the worker that uses it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ClipPixels:
    """open_clip's eval transform up to the tensor: shortest side to `size`, centre crop, RGB uint8 (size, size, 3).

    The same arithmetic as torchvision's Resize(int) + CenterCrop on a PIL image, so on a fully decoded image the
    array equals what open_clip's preprocess feeds ToTensor. Normalising (x/255 - mean)/std happens on the device.
    """

    size: int
    interpolation: str = "bicubic"
    # A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Image.draft) when that still leaves at least
    # `size` pixels on the short side: 2-3x less decode and resize work for photos larger than the model input.
    draft: bool = True

    def from_image(self, image: Image.Image) -> np.ndarray:
        image = image if image.mode == "RGB" else image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        if short != self.size or long != self.size:
            # torchvision.transforms.functional.resize: the long side is int(size * long / short)
            new_long = int(self.size * long / short)
            new_size = (self.size, new_long) if width <= height else (new_long, self.size)
            image = image.resize(new_size, INTERPOLATIONS[self.interpolation])
        width, height = image.size
        # torchvision CenterCrop: top/left = int(round((dim - size) / 2))
        top = int(round((height - self.size) / 2.0))
        left = int(round((width - self.size) / 2.0))
        if (width, height) != (self.size, self.size):
            image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image, dtype=np.uint8)

    def from_jpeg(self, data: bytes) -> np.ndarray:
        """From JPEG bytes, decoded at the smallest DCT scale that keeps `size` pixels on the short side."""
        with Image.open(io.BytesIO(data)) as image:
            if self.draft and image.format == "JPEG":
                image.draft("RGB", (self.size, self.size))
            image.load()
            return self.from_image(image)


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


InputSpec = ClipPixels | ProcessorInputs

_PROCESSORS: dict[tuple[str, str], Any] = {}  # per process: a worker loads each processor once, not per page


def _processor(class_name: str, directory: str) -> Any:
    key = (class_name, directory)
    if key not in _PROCESSORS:
        import torch
        import colpali_engine.models as colpali_models

        # One intra-op thread per worker: the pool already uses every core, one process each.
        torch.set_num_threads(1)
        _PROCESSORS[key] = getattr(colpali_models, class_name).from_pretrained(directory, local_files_only=True)
    return _PROCESSORS[key]


def prepare_from_file(path: Path, specs: tuple[InputSpec, ...]) -> tuple[Any, ...]:
    """Every spec's input from a stored page image (how `repair` re-embeds, the same way the workers did)."""
    data = Path(path).read_bytes()
    return tuple(spec.from_jpeg(data) for spec in specs)
