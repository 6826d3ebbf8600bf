"""The dense text retriever: a sentence-transformers model over page text (text layer or OCR)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import SingleVectorRetriever

if TYPE_CHECKING:
    from mmrag.config import Settings


@RETRIEVERS.register
class TextRetriever(SingleVectorRetriever):
    name = "text"
    modality = "text"
    # Chosen on both shared receipt sets (`python -m bench sroie --tune`): a dense model over OCR text ranks the
    # right page first far less often than BM25, and no weight of it raised R@1 on either set; at 0 it is not run
    # (mmrag.retrieval.retrieve), which saves a query embedding. Its vectors are still written.
    weight = 0.0

    def enabled(self, settings: Settings) -> bool:
        return settings.embedders.text.enabled

    def load(self, settings: Settings) -> Any:
        from mmrag.embedders import TEXT_EMBEDDERS

        return TEXT_EMBEDDERS.create(settings.embedders.profile, settings.embedders)
