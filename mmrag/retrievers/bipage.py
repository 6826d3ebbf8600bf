"""The single-vector page retriever: a colpali-engine Bi* model's one vector per page image in a FAISS-style index,
searched by a text query's vector (mmrag.embedders.bi). Alone, or as the candidate stage of the ColPali retriever
(settings.index.multivector_search = "bipage")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import SingleVectorRetriever

if TYPE_CHECKING:
    from mmrag.config import Settings


@RETRIEVERS.register
class BipageRetriever(SingleVectorRetriever):
    name = "bipage"
    modality = "image"  # it embeds the page image; a text query goes through the model's query processing
    # 1.0, the neutral weight CLIP and ColPali have: it is off unless a Bi* checkpoint is given, and no checkpoint can
    # be measured here to argue for another (tune it with settings.retrieval.weights). At 0 its ranking is not fused
    # nor run for that, while it still serves as ColPali's candidate stage.
    weight = 1.0

    def enabled(self, settings: Settings) -> bool:
        return settings.embedders.bipage.enabled

    def load(self, settings: Settings) -> Any:
        from mmrag.embedders import BIPAGE_EMBEDDERS

        return BIPAGE_EMBEDDERS.create(settings.embedders.profile, settings.embedders)
