"""The shared prompt and the citation checker: numbering, dropped citations, quotes, CANNOT_DETERMINE, streaming."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image

from mmrag.answer.prompt import (
    CANNOT_DETERMINE,
    NOT_ANSWERED,
    CitationChecker,
    PromptImage,
    PromptText,
    best_quote,
    build_prompt,
    check_answer,
    checked_stream,
    fit_image,
    load_page_image,
    prompt_text,
)
from mmrag.types import Answer, RetrievedPage


def _stream(text: str, pages: list[RetrievedPage], chunks: list[str] | None = None) -> tuple[list[str], Answer]:
    items = list(checked_stream(chunks if chunks is not None else [text], "q", pages, answerer="test"))
    *shown, answer = items
    assert isinstance(answer, Answer) and all(isinstance(chunk, str) for chunk in shown)
    return shown, answer  # type: ignore[return-value]


def test_citations_map_to_the_numbered_pages_and_pick_the_supporting_line(pages: list[RetrievedPage]) -> None:
    answer = check_answer(
        "The invoice number is INV-2024-0117 [2] and the coffee total was 9.02 [1].",
        "What are the invoice number and the coffee total?",
        pages,
        answerer="test",
    )
    assert answer.supported
    # [k] in the checked text is citations[k-1]: renumbered in order of first use.
    assert answer.text == "The invoice number is INV-2024-0117 [1] and the coffee total was 9.02 [2]."
    assert [c.page_id for c in answer.citations] == [pages[1].page_id, pages[0].page_id]
    assert [c.quote for c in answer.citations] == ["Invoice number: INV-2024-0117", "Total 9.02"]
    first = answer.citations[0]
    assert (first.document_id, first.page_number, first.path, first.score) == (
        pages[1].document_id, pages[1].page_number, pages[1].path, pages[1].score,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("generated", "expected_text", "cited"),
    [
        ("The total was 9.02 [7].", None, []),  # the only citation names no retrieved page
        ("The total was 9.02 [1, 7].", "The total was 9.02 [1].", [0]),
        ("The total was 9.02 [7] [1].", "The total was 9.02 [1].", [0]),
        ("Total 9.02 [0]; tax 0.82 [1].", "Total 9.02; tax 0.82 [1].", [0]),
        ("Total 9.02 [page 1][page 3].", "Total 9.02 [1][2].", [0, 2]),
        ("Total 9.02 [1][1] and again [1].", "Total 9.02 [1] and again [1].", [0]),
        ("Total 9.02 (see [note]) [3].", "Total 9.02 (see [note]) [1].", [2]),
        ("The total was 9.02.", None, []),  # no citation at all
    ],
)
def test_only_retrieved_pages_are_cited(
    pages: list[RetrievedPage], generated: str, expected_text: str | None, cited: list[int]
) -> None:
    answer = check_answer(generated, "What was the total?", pages, answerer="test")
    assert [c.page_id for c in answer.citations] == [pages[i].page_id for i in cited]
    assert answer.supported == bool(cited)
    assert answer.text == (expected_text if expected_text is not None else NOT_ANSWERED)


@pytest.mark.parametrize(
    "generated", [CANNOT_DETERMINE, f" {CANNOT_DETERMINE}\n", "cannot determine", f"Total 9.02 [1]. {CANNOT_DETERMINE}"]
)
def test_cannot_determine_means_not_supported(pages: list[RetrievedPage], generated: str) -> None:
    answer = check_answer(generated, "What was the tip?", pages, answerer="test")
    assert answer == Answer(text=NOT_ANSWERED, citations=[], supported=False, answerer="test")


def test_quote_is_empty_when_the_cited_page_has_no_text_or_no_overlap(pages: list[RetrievedPage]) -> None:
    blank = RetrievedPage(1, 1, 1, "scan.png", 0.5, "", None)
    generated = "It is a scanned form [1] with a total of 9.02 [2]."
    answer = check_answer(generated, "what form?", [blank, pages[0]], answerer="t")
    assert [c.quote for c in answer.citations] == ["", "Total 9.02"]
    assert best_quote(pages[2].text, "the weather in Paris", "sunny?") == ""


def test_quote_of_a_long_paragraph_is_its_best_sentence() -> None:
    paragraph = (
        "This agreement starts on 1 March 2024 and runs for twelve months from that date onwards. "
        "The monthly fee is 450.00 EUR, payable in advance on the first working day of each month. "
        "Either party may terminate it with three months' written notice to the other party. " * 2
    )
    assert best_quote(paragraph, "The monthly fee is 450.00 EUR.", "What is the monthly fee?") == (
        "The monthly fee is 450.00 EUR, payable in advance on the first working day of each month."
    )


def test_a_stream_split_anywhere_shows_exactly_the_checked_text(pages: list[RetrievedPage]) -> None:
    generated = "The total was 9.02 [1] and the invoice INV-2024-0117 [ 2, 7 ] is due [9]. See [note] [3]."
    whole = check_answer(generated, "q", pages, answerer="test")
    assert whole.text == "The total was 9.02 [1] and the invoice INV-2024-0117 [2] is due. See [note] [3]."
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(generated)), rng.randint(1, 25)))
        chunks = [generated[a:b] for a, b in zip([0, *cuts], [*cuts, len(generated)], strict=True)]
        shown, answer = _stream(generated, pages, chunks)
        assert answer == whole
        assert "".join(shown) == whole.text


def test_a_stream_holds_an_unfinished_marker_and_shows_nothing_uncited(pages: list[RetrievedPage]) -> None:
    checker = CitationChecker("q", pages, answerer="test")
    assert checker.feed("The total was 9.02") == ""  # nothing is cited yet: it may still be made up
    assert checker.feed(" [") == ""
    assert checker.feed("1") == ""
    assert checker.feed("] and the tax") == "The total was 9.02 [1] and the tax"
    assert checker.feed(" 0.82 [7") == " 0.82"  # " [7" waits: a dropped "[7]" takes its space with it
    assert checker.feed("].") == "."
    rest, answer = checker.finish()
    assert (rest, answer.text, checker.dropped) == ("", "The total was 9.02 [1] and the tax 0.82.", [7])


@pytest.mark.parametrize("generated", ["Lorem ipsum dolor.", CANNOT_DETERMINE, "The total was 9.02 [4]."])
def test_an_unsupported_stream_shows_only_the_not_answered_text(pages: list[RetrievedPage], generated: str) -> None:
    shown, answer = _stream(generated, pages, list(generated))
    assert shown == [NOT_ANSWERED]
    assert not answer.supported and answer.text == NOT_ANSWERED


def test_prompt_numbers_the_pages_with_their_path_image_and_text(pages: list[RetrievedPage]) -> None:
    parts = build_prompt("What was the total?", pages, has_image=[True, False, True], page_text_chars=40)
    assert [p.page_index for p in parts if isinstance(p, PromptImage)] == [0, 2]
    assert not any(isinstance(a, PromptText) and isinstance(b, PromptText) for a, b in pairwise(parts))
    text = prompt_text(parts)
    for number, page in enumerate(pages, start=1):
        assert f"Page [{number}]: {page.path}, page {page.page_number}\n" in text
    assert f"Page [1]: {pages[0].path}, page 1\n<image>\nText of page [1]:\nSTARBUCKS COFFEE\nStore #1234" in text
    assert "Cite only pages [1] to [3]" in text and f"reply with exactly {CANNOT_DETERMINE}" in text
    assert "Payment due" not in text  # page text is cut at page_text_chars, on a word boundary
    assert text.rstrip().endswith(f"Question: What was the total?\nAnswer with [n] citations, or {CANNOT_DETERMINE}:")
    images_only = prompt_text(build_prompt("q", pages, has_image=[True] * 3, page_text_chars=0))
    assert "Text of page" not in images_only and images_only.count("<image>") == 3


def test_images_are_fitted_to_the_side_and_token_budget(tmp_path: Path) -> None:
    page = Image.new("L", (1240, 1754), 255)
    assert fit_image(page, max_side=1024, token_budget=10_000).size == (724, 1024)
    budget_fit = fit_image(page, max_side=4096, token_budget=64)
    assert budget_fit.mode == "RGB" and budget_fit.width * budget_fit.height <= 64 * 28 * 28 * 1.01
    assert fit_image(Image.new("RGB", (50, 40)), max_side=1024, token_budget=1024).size == (50, 40)  # never upscaled
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    unreadable = RetrievedPage(1, 1, 1, "x.pdf", 1.0, "", broken)
    assert load_page_image(unreadable, max_side=64, token_budget=64) is None
    assert load_page_image(RetrievedPage(1, 1, 1, "x.pdf", 1.0, "", None), max_side=64, token_budget=64) is None
