"""The dates retriever: among the pages that best match the rest of a question, those holding its date.

A question names a receipt by its merchant and its date ("the Gin Kee receipt from 18/10/2017"); where a merchant
has dozens of receipts, only the date tells them apart, and BM25 weighs a date as one term among the merchant's
words. mmrag.analysis reads every date on a page and in a query, however it is written or misread, into the same
terms ("date:2017-10-18", and "date:--10-18" for the month and day alone).

This retriever's ranking holds the pages that hold one of the query's dates *and* are among the ENTITY_TOP best
matches of the rest of the query (the BM25 search of the query without its dates): the receipts of that merchant
on that day, full dates first, then a month and day alone (a year OCR misread), each group one rank in fusion.
A page of another shop that happens to share the date is not in it (a bonus for every page of that day put other
shops' receipts first whenever OCR had lost the right one's date); a query of a date alone ranks every page holding
it. Fusion adds the ranking to the others, so of a merchant's many receipts the one of that day comes first. A
query without a date asks nothing of it (no ranking, no cost). Its index is the BM25 index: no model, nothing to
write.
"""

from __future__ import annotations

from typing import Any

from mmrag.analysis import MONTH_DAY_PREFIX, date_terms, query_terms, without_dates
from mmrag.protocols import SearchesWithin
from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import Query, Retriever, SearchContext
from mmrag.types import Hit

FULL_DATE, MONTH_DAY = 2.0, 1.0  # a hit's score: it holds one of the query's full dates, or only a month and day
# The pages that match "the rest" of a query: its BM25 search (words and n-grams) without the dates, this deep.
# Chosen on the shared SROIE receipts (`python -m bench sroie`): 15 and 20 did best there, 3-10 and 30 worse; the
# larger keeps more of a merchant with many near-identical receipts.
ENTITY_TOP = 20


@RETRIEVERS.register
class DatesRetriever(Retriever):
    name = "dates"
    modality = "text"
    embeds = False
    weight = 1.0

    def search(self, embedder: Any, store: Any, query: Query, depth: int, context: SearchContext) -> list[Hit]:
        assert query.text is not None  # text queries only (query_kinds)
        terms = date_terms(query.text)
        if not terms:
            return []
        lexical = context.lexical()
        held = lexical.pages_holding(terms)
        if context.within is not None:
            allowed = set(context.within.tolist())
            held = {page_id: found for page_id, found in held.items() if page_id in allowed}
        rest = without_dates(query.text)
        if held and query_terms(rest):
            if context.within is not None and isinstance(lexical, SearchesWithin):
                best = lexical.search_within(rest, ENTITY_TOP, context.within)
            else:
                best = lexical.search(rest, ENTITY_TOP)
            close = {hit.page_id for hit in best}
            held = {page_id: found for page_id, found in held.items() if page_id in close}
        full = {term for term in terms if not term.startswith(MONTH_DAY_PREFIX)}
        hits = [Hit(page_id, FULL_DATE if found & full else MONTH_DAY) for page_id, found in held.items()]
        hits.sort(key=lambda hit: (-hit.score, hit.page_id))
        return hits
