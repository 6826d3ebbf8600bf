"""The lexical retriever: BM25 over page text, derived from SQL by the collection's writer; no model of its own."""

from __future__ import annotations

from typing import Any

from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import Query, Retriever, SearchContext
from mmrag.types import Hit


@RETRIEVERS.register
class LexicalRetriever(Retriever):
    name = "lexical"
    modality = "text"
    embeds = False

    def search(self, embedder: Any, store: Any, query: Query, depth: int, context: SearchContext) -> list[Hit]:
        from mmrag.protocols import SearchesWithin

        assert query.text is not None  # text queries only (query_kinds)
        lexical = context.lexical()
        if context.within is not None and isinstance(lexical, SearchesWithin):
            return lexical.search_within(query.text, depth, context.within)
        return lexical.search(query.text, depth)
