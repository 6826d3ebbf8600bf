"""A deterministic stand-in for CLIP's image vectors: a colour perceptual hash (low DCT frequencies) as a unit vector.

Not CLIP and not a semantic model: it sees only an image's coarse layout of light and colour. It exists so that the
near-duplicate path (mmrag.near_duplicates) can be tested and measured on CPUs without CLIP weights: the tiny-random
profile's random weights put near-duplicates no closer than any two images, so they cannot show that grouping works.
It fits the ImageEmbedder protocol and is passed to build_services the way tests pass fakes (Embedders(clip=...));
it is not an embedder profile, so a deployment never loads it by mistake.

What it tolerates, measured on the shared COCO photos by `python -m bench near-duplicates`: re-encoding (JPEG
quality) and resizing leave a copy's vector almost unchanged (cosine > 0.99); a crop keeping 90% of each side stays
above about 0.84; heavier crops fall among unrelated photos, which only a learned model (real CLIP) can tell apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

SIDE = 32  # images are reduced to SIDE x SIDE (box filter) before the DCT: resizing and re-encoding wash out
LUMA = 4  # the LUMA x LUMA lowest luma frequencies, without the mean (a brightness change moves nothing else)
CHROMA = 3  # the CHROMA x CHROMA lowest frequencies of each colour-difference channel, means included


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: C @ x is the DCT of x, C @ X @ C.T of an image."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


class PerceptualImageEmbedder:
    """ImageEmbedder stand-in: an image → its low DCT frequencies of luma and chroma, L2-normalised (dim 33).

    embed_texts returns a unit vector seeded by the text's hash, so a text search beside it runs but ranks nothing
    meaningfully; only image-to-image similarity is what this stand-in models."""

    model_id = "stand-in:perceptual-dct"
    revision = "1"
    dim = LUMA * LUMA - 1 + 2 * CHROMA * CHROMA

    def __init__(self) -> None:
        self._dct = _dct_matrix(SIDE)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        vectors = np.zeros((len(images), self.dim), dtype=np.float32)
        for row, image in enumerate(images):
            vectors[row] = self._vector(image)
        return vectors

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())
            vectors[row] = np.random.default_rng(seed).standard_normal(self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def _vector(self, image: Image.Image) -> np.ndarray:
        small = image.convert("YCbCr").resize((SIDE, SIDE), Image.Resampling.BOX)
        channels = np.asarray(small, dtype=np.float32) / 255.0
        parts = []
        for channel, keep in ((0, LUMA), (1, CHROMA), (2, CHROMA)):
            coefficients = (self._dct @ channels[..., channel] @ self._dct.T)[:keep, :keep].reshape(-1)
            if channel == 0:
                coefficients = coefficients[1:]
            else:
                coefficients[0] -= 0.5 * SIDE  # a neutral grey's chroma mean is 0.5: centre it so grey adds nothing
            parts.append(coefficients)
        vector = np.concatenate(parts)
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:  # a flat grey image has no layout at all: a fixed vector, rather than a division by zero
            vector = np.zeros(self.dim, dtype=np.float32)
            vector[0] = 1.0
            return vector
        return (vector / norm).astype(np.float32)
