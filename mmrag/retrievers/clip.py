"""The CLIP retriever: page images and photos in one space with text, so it serves text and image queries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mmrag.protocols import PreparedImageEmbedder
from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import QueryKind, SingleVectorRetriever

if TYPE_CHECKING:
    from mmrag.config import Settings


@RETRIEVERS.register
class ClipRetriever(SingleVectorRetriever):
    name = "clip"
    modality = "image"
    query_kinds: ClassVar[frozenset[QueryKind]] = frozenset({"text", "image"})

    def enabled(self, settings: Settings) -> bool:
        return settings.embedders.clip.enabled

    def worker_modules(self, settings: Settings) -> tuple[str, ...]:
        return ("torch",) if self.enabled(settings) else ()  # the workers resize photos with torch

    def load(self, settings: Settings) -> Any:
        from mmrag.embedders import IMAGE_EMBEDDERS

        return IMAGE_EMBEDDERS.create(settings.embedders.profile, settings.embedders)

    def input_spec(self, embedder: Any, settings: Settings, data_dir: Path) -> Any | None:
        # an ImageEmbedder may take PIL images only
        return embedder.input_spec() if isinstance(embedder, PreparedImageEmbedder) else None
