"""Synthetic late-interaction page embeddings with the structure real ones have, for search benchmarks and tests.

Real ColPali page tokens are not isotropic noise: many patches are near-copies of a few "background" directions
(margins, blank cells), the rest cluster around what the page is about, and the space is anisotropic (a
shared mean direction and a decaying spectrum). A query's tokens sit near its page's topics plus some generic
tokens. Exhaustive and approximate search both behave very differently on noise than on such data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from dataclasses import dataclass

import numpy as np

if TYPE_CHECKING:
    import torch


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Corpus:
    dim: int
    topics: np.ndarray  # (n_topics, dim)
    background: np.ndarray  # (n_background, dim)
    page_topics: np.ndarray  # (n_pages, topics_per_page) indices into topics
    tokens_per_page: int
    seed: int

    @property
    def n_pages(self) -> int:
        return len(self.page_topics)

    def page(self, index: int) -> np.ndarray:
        """Tokens of page `index` (deterministic per page), float32 (tokens, dim), unit norm."""
        rng = np.random.default_rng((self.seed, index))
        n_background = int(self.tokens_per_page * 0.3)
        n_topical = self.tokens_per_page - n_background
        centres = self.topics[rng.choice(self.page_topics[index], n_topical)]
        # noise of norm ~0.5 around a topic, ~0.3 around a background direction
        topical = centres + rng.normal(0, 0.5 / np.sqrt(self.dim), (n_topical, self.dim))
        back = self.background[rng.integers(0, len(self.background), n_background)]
        back = back + rng.normal(0, 0.3 / np.sqrt(self.dim), (n_background, self.dim))
        return _unit(np.concatenate([topical, back])).astype(np.float32)

    def pages(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(start, self.n_pages if stop is None else stop):
            yield index, self.page(index)

    def add_to(self, store: Any, batch: int = 500) -> None:
        """Every page into a multi-vector store (any backend), page `index` as id index + 1, `batch` pages an add."""
        for start in range(0, self.n_pages, batch):
            pages = list(self.pages(start, min(self.n_pages, start + batch)))
            store.add([index + 1 for index, _ in pages], [tokens for _, tokens in pages])

    def query(self, target: int, tokens: int = 20, seed: int = 0) -> np.ndarray:
        """A query about page `target`: most tokens near its topics, some generic (background) ones."""
        rng = np.random.default_rng((self.seed, target, seed, 7))
        n_generic = max(1, tokens // 5)
        centres = self.topics[rng.choice(self.page_topics[target], tokens - n_generic)]
        topical = centres + rng.normal(0, 0.6 / np.sqrt(self.dim), centres.shape)
        generic = self.background[rng.integers(0, len(self.background), n_generic)] + rng.normal(
            0, 0.3 / np.sqrt(self.dim), (n_generic, self.dim)
        )
        return _unit(np.concatenate([topical, generic])).astype(np.float32)


def make_corpus(
    n_pages: int, *, tokens_per_page: int = 1030, dim: int = 128, topics_per_page: int = 6, seed: int = 0
) -> Corpus:
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.sqrt(np.arange(1, dim + 1))  # anisotropic: a few directions carry most variance
    mean = _unit(rng.normal(size=dim))
    n_topics = max(64, n_pages // 3)
    topics = _unit(0.35 * mean + rng.normal(size=(n_topics, dim)) * spectrum)
    background = _unit(0.6 * mean + rng.normal(size=(16, dim)) * spectrum)
    popularity = 1.0 / np.arange(1, n_topics + 1) ** 0.8  # Zipf: some subjects are on many pages
    popularity /= popularity.sum()
    page_topics = np.stack(
        [rng.choice(n_topics, topics_per_page, replace=False, p=popularity) for _ in range(n_pages)]
    )
    return Corpus(dim, topics.astype(np.float32), background.astype(np.float32), page_topics, tokens_per_page, seed)


class TorchCorpus:
    """The same structure as Corpus, generated in batches with torch on any device, for collections of up to
    millions of pages (Corpus draws page by page in numpy: fine for thousands, far too slow for a million).

    Differences from Corpus: each page's topics are drawn with replacement (so a page may repeat a topic), and
    the values differ (another generator). `pooled=4` draws each token as the mean of 4 tokens of the same
    centre, i.e. what merging near-duplicate patches (token pooling) leaves: a quarter of the tokens, less noise.
    """

    def __init__(self, n_pages: int, *, dim: int = 128, topics_per_page: int = 6, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        import torch

        self.n_pages, self.dim, self.device, self.seed = n_pages, dim, torch.device(device), seed
        g = torch.Generator(device="cpu").manual_seed(seed)
        spectrum = 1.0 / torch.sqrt(torch.arange(1, dim + 1, dtype=torch.float32))
        mean = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
        n_topics = max(64, n_pages // 3)
        topics = torch.nn.functional.normalize(0.35 * mean + torch.randn(n_topics, dim, generator=g) * spectrum, dim=1)
        background = torch.nn.functional.normalize(0.6 * mean + torch.randn(16, dim, generator=g) * spectrum, dim=1)
        popularity = 1.0 / torch.arange(1, n_topics + 1, dtype=torch.float64) ** 0.8
        page_topics = torch.multinomial(popularity, n_pages * topics_per_page, replacement=True, generator=g)
        self.topics = topics.to(self.device)
        self.background = background.to(self.device)
        self.page_topics = page_topics.reshape(n_pages, topics_per_page).to(self.device)

    def pages(self, start: int, stop: int, *, tokens: int = 1030, pooled: int = 1) -> torch.Tensor:
        """(stop - start, tokens, dim) unit-norm fp16 page tokens, deterministic for (seed, start, stop)."""
        import torch

        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + start)
        count, n_background = stop - start, int(tokens * 0.3)
        n_topical = tokens - n_background
        spread = 1.0 / (pooled**0.5 * self.dim**0.5)
        pick = torch.randint(0, self.page_topics.shape[1], (count, n_topical), generator=g, device=self.device)
        centres = self.topics[torch.gather(self.page_topics[start:stop], 1, pick)]
        topical = centres + torch.randn(centres.shape, generator=g, device=self.device) * (0.5 * spread)
        back = self.background[torch.randint(0, 16, (count, n_background), generator=g, device=self.device)]
        back = back + torch.randn(back.shape, generator=g, device=self.device) * (0.3 * spread)
        return torch.nn.functional.normalize(torch.cat([topical, back], dim=1), dim=2).to(torch.float16)

    def queries(self, targets: torch.Tensor, *, tokens: int = 24, seed: int = 1) -> torch.Tensor:
        """(len(targets), tokens, dim) fp16 queries, each about its target page (as Corpus.query)."""
        import torch

        g = torch.Generator(device=self.device).manual_seed(seed)
        targets = targets.to(self.device)
        n_generic = max(1, tokens // 5)
        pick = torch.randint(0, self.page_topics.shape[1], (len(targets), tokens - n_generic), generator=g,
                             device=self.device)  # fmt: skip
        centres = self.topics[torch.gather(self.page_topics[targets], 1, pick)]
        topical = centres + torch.randn(centres.shape, generator=g, device=self.device) * (0.6 / self.dim**0.5)
        generic = self.background[torch.randint(0, 16, (len(targets), n_generic), generator=g, device=self.device)]
        generic = generic + torch.randn(generic.shape, generator=g, device=self.device) * (0.3 / self.dim**0.5)
        return torch.nn.functional.normalize(torch.cat([topical, generic], dim=1), dim=2).to(torch.float16)
