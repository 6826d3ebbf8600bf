"""Acceptance 2: qa.ask on real page text with the extractive answerer — citations only of retrieved pages, and
`supported: false` when the pages do not answer; check_citations holds any answerer to the retrieved pages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mmrag import qa
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, Settings
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.types import Answer, Citation, RetrievedPage, SearchFilters
from tests.conftest import database
from tests.factories import make_image, make_pdf


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_embedders: Embedders
) -> Iterator[Services]:
    """One indexed corpus per database for the whole module: these tests only read it."""
    tmp_path = tmp_path_factory.mktemp("qa")
    with database(request.param, tmp_path) as database_url:
        yield from _indexed(tmp_path, database_url, tiny_embedders)


def _indexed(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Iterator[Services]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
        ingest=IngestSettings(workers=0, ocr="never"),
    )
    services = build_services(settings, embedders=tiny_embedders)
    corpus = tmp_path / "corpus"
    make_pdf(corpus / "receipt.pdf", ["Corner Bakery\n2 croissants 3.80\nTotal 9.02\nPaid by card"])
    make_pdf(corpus / "lease.pdf", ["Lease agreement\nMonthly rent: 1,150 EUR\nNotice period: three months"])
    make_pdf(corpus / "minutes.pdf", ["Board minutes\nThe board approved the new logo", "Next meeting on 4 May"])
    make_image(corpus / "photo.png", 3)
    run_index(services, [corpus])
    yield services
    services.close()


def page_ids(pages: Sequence[RetrievedPage]) -> set[int]:
    return {page.page_id for page in pages}


@pytest.mark.parametrize(
    ("question", "quoted"),
    [("What was the total at Corner Bakery?", "Total 9.02"), ("What is the monthly rent?", "1,150 EUR")],
)
def test_answers_cite_only_retrieved_pages(services: Services, question: str, quoted: str) -> None:
    answer, pages = qa.ask(services, ExtractiveAnswerer(), question, ["default"], k=3)
    assert answer.supported and answer.answerer == "extractive"
    assert len(pages) == 3 and answer.citations
    assert {c.page_id for c in answer.citations} <= page_ids(pages)
    assert quoted in answer.text
    cited = [next(p for p in pages if p.page_id == c.page_id) for c in answer.citations]
    assert quoted in cited[0].text  # the first citation is the page that holds the answer
    for citation, page in zip(answer.citations, cited, strict=True):
        assert citation.quote in " ".join(page.text.split())  # quotes come from the cited page's own text


@pytest.mark.parametrize("question", ["Who painted the Sistine Chapel ceiling?", "What is the tip amount?"])
def test_unsupported_questions_say_so(services: Services, question: str) -> None:
    answer, pages = qa.ask(services, ExtractiveAnswerer(), question, ["default"], k=4)
    assert pages  # pages were retrieved (the tiny random retrievers always rank something) ...
    assert answer.supported is False and answer.citations == []  # ... and they do not answer it
    assert answer.text == qa.NOT_ANSWERED == "The indexed pages do not answer this."


def test_a_filter_that_removes_the_evidence_makes_it_unsupported(services: Services) -> None:
    filters = SearchFilters(path_prefix=str(services.storage_dir.parent / "corpus" / "lease"))
    answer, pages = qa.ask(services, ExtractiveAnswerer(), "What was the total at Corner Bakery?", ["default"],
                           filters=filters)  # fmt: skip
    assert {Path(p.path).name for p in pages} == {"lease.pdf"} and answer.supported is False


def test_streamed_events_come_in_order(services: Services) -> None:
    timings: list[str] = []
    events = list(qa.ask_stream(services, ExtractiveAnswerer(), "What is the notice period?", ["default"], k=2,
                                observe=lambda stage, seconds: timings.append(stage)))  # fmt: skip
    assert isinstance(events[0], qa.Retrieved) and isinstance(events[-1], qa.Answered)
    assert all(isinstance(e, qa.Token) for e in events[1:-1]) and len(events) > 2
    answer = events[-1].answer
    assert answer.supported and {c.page_id for c in answer.citations} <= page_ids(events[0].pages)
    assert "".join(e.text for e in events[1:-1]) == answer.text
    assert timings == ["retrieval", "generation"]


def test_no_collection_means_no_answer_and_no_answerer_call() -> None:
    class Refuses:
        name = "refuses"

        def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer:
            raise AssertionError("not to be called without pages")

        stream = answer

    answer, pages = qa.ask(None, Refuses(), "anything?", [])  # type: ignore[arg-type]
    assert pages == [] and answer.supported is False and answer.answerer == "refuses"


# --- check_citations against answerers that misbehave --------------------------------------------------------


def page(page_id: int, text: str) -> RetrievedPage:
    return RetrievedPage(page_id, 100 + page_id, 1, f"/docs/{page_id}.pdf", 0.5, text, None)


def cite(page_id: int, quote: str = "") -> Citation:
    return Citation(document_id=0, page_id=page_id, page_number=9, path="/made/up", score=99.0, quote=quote)


PAGES = [page(1, "Total 9.02\nPaid by card"), page(2, "Monthly rent: 1,150 EUR")]


def test_a_citation_of_a_page_not_retrieved_is_dropped_and_markers_renumbered() -> None:
    lying = Answer(
        text="Rent is 1,150 EUR [1]. The CEO is Ada [2]. Paid 9.02 [3].",
        citations=[cite(2, "Monthly rent: 1,150 EUR"), cite(77, "The CEO is Ada"), cite(1, "Total 9.02")],
        supported=True,
        answerer="fake",
    )
    checked = qa.check_citations(lying, PAGES)
    assert [c.page_id for c in checked.citations] == [2, 1]
    assert checked.text == "Rent is 1,150 EUR [1]. The CEO is Ada. Paid 9.02 [2]."
    # Each kept citation is described by the retrieved page, not by what the answerer claimed.
    assert (checked.citations[0].document_id, checked.citations[0].path, checked.citations[0].score) == (
        102, "/docs/2.pdf", 0.5,
    )  # fmt: skip


def test_an_answer_citing_only_unretrieved_pages_is_unsupported() -> None:
    lying = Answer(text="Ada [1].", citations=[cite(77, "x")], supported=True, answerer="fake")
    checked = qa.check_citations(lying, PAGES)
    assert checked.supported is False and checked.citations == [] and checked.text == qa.NOT_ANSWERED


def test_a_quote_the_page_does_not_hold_is_blanked_and_an_unsupported_answer_cites_nothing() -> None:
    invented = Answer(text="9.02 [1]", citations=[cite(1, "Total 10.00")], supported=True, answerer="fake")
    assert qa.check_citations(invented, PAGES).citations[0].quote == ""
    shortened = Answer(text="9.02 [1]", citations=[cite(1, "Total  9.02 …")], supported=True, answerer="fake")
    assert qa.check_citations(shortened, PAGES).citations[0].quote == "Total  9.02 …"
    refusal = Answer(text=qa.NOT_ANSWERED, citations=[cite(1)], supported=False, answerer="fake")
    assert qa.check_citations(refusal, PAGES).citations == []
