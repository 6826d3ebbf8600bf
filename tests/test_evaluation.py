"""mmrag eval: metrics against hand-computed values, question-set parsing, and a small eval end to end.

The end-to-end part indexes generated PDFs with the tiny-random profile (OCR off) and judges BM25 and the fused
ranking; fusion weights put everything on BM25 there, so the fused ranking is deterministic while the random
retrievers still run through the whole path.
"""

from __future__ import annotations

import json
from dataclasses import replace
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from indexer import eval_command as eval_module
from indexer.eval_command import eval_command
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, RetrievalSettings, Settings
from mmrag.errors import InputError
from mmrag.evaluation import (
    FUSED,
    GoldRegion,
    PageLocation,
    Question,
    Relevant,
    contains_answer,
    evaluate,
    exact_match,
    judge,
    load_questions,
    ndcg_at,
    path_matches,
    percentile,
    plot_recall,
    recall_at,
    reciprocal_rank,
    summarize,
    write_questions,
)
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.testsets import best_passages, generate_questions, is_clean, passages
from tests.factories import make_image, make_pdf

# --- metrics, by hand ----------------------------------------------------------------------------------------


def test_metrics_on_a_hand_computed_ranking() -> None:
    gains = [False, True, False, True, False]  # two relevant items, found at ranks 2 and 4
    assert recall_at(gains, 2, 1) == 0.0
    assert recall_at(gains, 2, 2) == 1 / 2
    assert recall_at(gains, 2, 5) == 1.0
    assert reciprocal_rank(gains) == 0.5
    # DCG = 1/log2(3) + 1/log2(5); ideal = 1/log2(2) + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at(gains, 2, 5) == pytest.approx(expected)
    assert ndcg_at(gains, 2, 5) == pytest.approx(0.6509, abs=1e-4)


def test_recall_is_capped_at_k_and_nothing_found_scores_zero() -> None:
    assert recall_at([True], 2, 1) == 1.0  # either of two equally relevant items at rank 1 is a full hit
    assert recall_at([True, False, False], 4, 3) == 1 / 3
    assert reciprocal_rank([False] * 10) == 0.0
    assert ndcg_at([False] * 5, 1, 5) == 0.0
    assert ndcg_at([True], 1, 5) == 1.0
    assert ndcg_at([False, False, True], 1, 5) == pytest.approx(0.5)  # 1/log2(4)
    with pytest.raises(ValueError):
        recall_at([True], 0, 1)


def test_summary_averages_over_questions() -> None:
    metrics = summarize([([True], 1), ([False, True], 1), ([False, False], 1)], [10.0, 20.0, 30.0], (1, 5))
    assert metrics.recall == {1: pytest.approx(1 / 3), 5: pytest.approx(2 / 3)}
    assert metrics.mrr == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics.latency_p50_ms == 20.0
    assert metrics.latency_p95_ms == pytest.approx(29.0)
    assert metrics.recall_curve == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


def test_a_relevant_file_counts_once_however_many_of_its_pages_rank() -> None:
    def report_page(number: int) -> PageLocation:
        return PageLocation(("/docs/report.pdf",), number)

    other = PageLocation(("/docs/other.pdf",), 1)
    gains = judge([report_page(2), report_page(1), other], [Relevant("report.pdf")])
    assert gains == [True, False, False]
    # page-level relevance: only page 3 counts, wherever it ranks
    assert judge([report_page(1), report_page(3)], [Relevant("report.pdf", 3)]) == [False, True]
    # two relevant items: each is found once
    assert judge([other, report_page(1)], [Relevant("report.pdf"), Relevant("other.pdf")]) == [True, True]


@pytest.mark.parametrize(
    ("wanted", "recorded", "expected"),
    [
        ("043.jpg", "/data/sroie/img/043.jpg", True),
        ("img/043.jpg", "/data/sroie/img/043.jpg", True),
        ("./img/043.jpg", "/data/sroie/img/043.jpg", True),
        ("/data/sroie/img/043.jpg", "/data/sroie/img/043.jpg", True),
        ("/other/img/043.jpg", "/data/sroie/img/043.jpg", False),
        ("43.jpg", "/data/sroie/img/043.jpg", False),  # whole components only
        ("scans/043.jpg", "/data/sroie/img/043.jpg", False),
        ("Report.pdf", "C:\\Users\\me\\Report.pdf", True),
    ],
)
def test_path_matching(wanted: str, recorded: str, expected: bool) -> None:
    assert path_matches(wanted, recorded) is expected


def test_a_duplicate_is_relevant_under_any_of_its_paths() -> None:
    location = PageLocation(("/a/first.jpg", "/b/copy.jpg"), 1)
    assert Relevant("copy.jpg").matches(location.paths, location.page_number)
    assert not Relevant("copy.jpg", page=2).matches(location.paths, location.page_number)


def test_answer_matching() -> None:
    assert exact_match(" 190.00. ", ["190.00"])
    assert exact_match("190", ["190.00"])  # plain numbers compare by value
    assert exact_match("1,234.50", ["1234.5"])
    assert exact_match("Acme SDN BHD", ["acme sdn  bhd"])
    # an amount is the same amount whatever currency is written beside it (the gold "$8.20" or "RM7.00")
    assert exact_match("RM 190.00", ["190.00"]) and exact_match("8.20", ["$8.20"]) and exact_match("7.00", ["RM7.00"])
    assert exact_match("12.50 EUR", ["12.5"]) and not exact_match("RM 190.01", ["190.00"])
    assert not exact_match("RM", ["190.00"]) and not exact_match("USD 9", ["RM 19"])
    assert not exact_match("190.00 [1]", ["190.00"])
    assert contains_answer("TOTAL RM 9.00\nCASH 10.00", ["9.00"])
    assert contains_answer("Total: 9.00.", ["9.00"])
    assert not contains_answer("TOTAL 19.00", ["9.00"])
    assert not contains_answer("TOTAL 9.005", ["9.00"])
    assert not contains_answer("TOTAL 9.00", [])


# --- question sets -------------------------------------------------------------------------------------------


def test_question_sets_round_trip_and_report_bad_lines(tmp_path: Path) -> None:
    questions = [
        Question("q1", "total at acme", (Relevant("a.jpg"),), ("9.00",)),
        Question("q2", "page three", (Relevant("docs/x.pdf", 3), Relevant("y.pdf")), ()),
        Question("q3", "total at acme", (Relevant("a.jpg"),), ("9.00",),
                 (GoldRegion("a.jpg", (0.5, 0.8, 0.7, 0.85)), GoldRegion("b.pdf", (0.0, 0.0, 1.0, 0.5), 2))),
    ]
    path = write_questions(tmp_path / "set.jsonl", questions)
    assert load_questions(path) == questions
    assert json.loads(path.read_text().splitlines()[1])["relevant"] == [{"path": "docs/x.pdf", "page": 3}, "y.pdf"]

    def bad(line: str) -> str:
        target = tmp_path / "bad.jsonl"
        target.write_text('{"id": "ok", "query": "q", "relevant": ["a.jpg"]}\n' + line + "\n")
        with pytest.raises(InputError) as caught:
            load_questions(target)
        return str(caught.value)

    assert "bad.jsonl:2" in bad("{not json")
    assert "'relevant'" in bad('{"id": "b", "query": "q", "relevant": []}')
    assert "page" in bad('{"id": "b", "query": "q", "relevant": [{"path": "x.pdf", "page": 0}]}')
    assert "'query'" in bad('{"id": "b", "relevant": ["a.jpg"]}')
    assert "repeats" in bad('{"id": "ok", "query": "q", "relevant": ["a.jpg"]}')
    region = '{"id": "b", "query": "q", "relevant": ["a.jpg"], "regions": %s}'
    assert "'regions' must be a list" in bad(region % '{"path": "a.jpg"}')
    assert "a region is" in bad(region % '[{"box": [0, 0, 1, 1]}]')
    for box in ("[0, 0, 1]", "[0.5, 0, 0.2, 1]", "[0, 0, 1, 1.5]", '["0", 0, 1, 1]', "[true, 0, 1, 1]"):
        assert "a region's box" in bad(region % f'[{{"path": "a.jpg", "box": {box}}}]'), box
    assert "a region's page" in bad(region % '[{"path": "a.jpg", "box": [0, 0, 1, 1], "page": 0}]')


def test_passages_are_clean_distinctive_pieces_of_a_page() -> None:
    text = "Quarterly report of the heron company\n|§~ e!l ,, ~~ ||\nShort\n" + " ".join(f"w{i}x" for i in range(25))
    found = passages(text, min_words=4, max_words=10)
    assert found[0] == "Quarterly report of the heron company"
    assert all(4 <= len(p.split()) <= 10 for p in found)
    assert not is_clean("|§~ e!l ,, ~~ ||")
    ranked = best_passages("the the the the\nheron egret osprey kestrel", {"heron": 3.0, "egret": 2.0, "the": 0.1})
    assert ranked[0].text == "heron egret osprey kestrel"


# --- end to end on generated PDFs ----------------------------------------------------------------------------

# Short lines: the A6 test pages wrap long ones, and the extractive answerer quotes whole lines.
REPORT_PAGES = [
    "Annual report\nThe heron foundation\nthanks its volunteers.",
    "Finance chapter\nEgret fund reserves\nTotal 48213.75 EUR",
    "Outlook chapter\nThe osprey programme\nadds twelve new sites.",
]
MEMOS = {
    "kestrel.pdf": "Kestrel survey memo\n17 nests on 03/04/2023\nInvoice total 311.20",
    "plover.pdf": "Plover beach closure\nWarden rota for summer",
    "curlew.pdf": "Curlew tagging memo\nReceipt number 99172\nPaid 57.80 EUR cash",
}


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Services:
    settings = Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
        ingest=IngestSettings(workers=0, ocr="never"),
        # all weight on BM25: the random retrievers still run, but cannot reorder the fused ranking
        retrieval=RetrievalSettings(weights={"clip": 0.0, "colpali": 0.0, "text": 0.0, "lexical": 1.0}),
    )
    services = build_services(settings, embedders=tiny_embedders)
    corpus = tmp_path / "corpus"
    make_pdf(corpus / "reports" / "annual.pdf", REPORT_PAGES)
    for name, text in MEMOS.items():
        make_pdf(corpus / "memos" / name, [text])
    make_image(corpus / "photos" / "p0.png", 0)
    run_index(services, [corpus])
    yield services
    services.close()


QUESTIONS = [
    Question("page-2", "egret fund reserves total", (Relevant("annual.pdf", 2),), ("48213.75",)),
    Question("page-3", "osprey programme new sites", (Relevant("reports/annual.pdf", 3),), ()),
    Question("whole-file", "heron foundation volunteers", (Relevant("annual.pdf"),), ()),
    Question("wrong-page", "annual egret fund reserves", (Relevant("annual.pdf", 1),), ()),  # page 2 ranks first
    Question("kestrel", "kestrel survey: what was the invoice total?", (Relevant("kestrel.pdf"),), ("311.20",)),
    Question("curlew", "curlew tagging: how much was paid?", (Relevant("memos/curlew.pdf"),), ("57.80",)),
    Question("unknown", "plover beach closure", (Relevant("missing.pdf"),), ()),
]


def test_small_eval_end_to_end_with_page_level_relevance(services: Services, tmp_path: Path) -> None:
    report = evaluate(services, QUESTIONS, answerer=ExtractiveAnswerer())
    assert report.meaningless and report.unresolved == ["unknown"]
    assert set(report.rankings) == {"clip", "colpali", "text", "lexical", "dates", FUSED}
    ranks = {r.id: r.first_relevant_rank for r in report.per_question}
    assert {q: ranks[q]["lexical"] for q in ranks} == {
        "page-2": 1, "page-3": 1, "whole-file": 1, "wrong-page": 2, "kestrel": 1, "curlew": 1, "unknown": None,
    }
    assert all(ranks[q][FUSED] == ranks[q]["lexical"] for q in ranks)
    for name in ("lexical", FUSED):
        metrics = report.rankings[name]
        assert metrics.questions == 7
        assert metrics.recall[1] == pytest.approx(5 / 7)
        assert metrics.recall[5] == pytest.approx(6 / 7)
        assert metrics.mrr == pytest.approx((5 + 0.5) / 7)
        assert metrics.ndcg == pytest.approx((5 + 1 / math.log2(3)) / 7)
        assert metrics.latency_p95_ms >= metrics.latency_p50_ms > 0

    answers = report.answers
    assert answers is not None and answers.answerer == "extractive" and answers.questions == 3
    by_id = {r.id: r for r in report.per_question}
    assert by_id["page-2"].evidence and "48213.75" in by_id["page-2"].evidence
    assert answers.answer_in_top_page == 1.0  # each answer is on the page ranked first
    assert answers.answer_in_evidence == pytest.approx(
        sum(bool(by_id[q].answer_in_evidence) for q in ("page-2", "kestrel", "curlew")) / 3
    )
    # the extractive answer leads with the amount its evidence line gives: exact match is scored on that value
    assert answers.exact_match == 1.0 and by_id["page-2"].answer.startswith("48213.75 [1]\n")

    saved = json.loads(report.write_json(tmp_path / "report.json").read_text())
    assert saved["rankings"]["fused"]["recall"]["@1"] == pytest.approx(5 / 7)
    assert saved["answers"]["answerer"] == "extractive"
    picture = plot_recall(report, tmp_path / "recall.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generated_known_item_set_finds_its_own_pages(services: Services) -> None:
    questions = generate_questions(services, 20, seed=1)
    # every page with text qualifies: 3 report pages + 3 memos (the photo has no text)
    assert len(questions) == 6
    relevant = {(Path(q.relevant[0].path).name, q.relevant[0].page) for q in questions}
    assert relevant == {("annual.pdf", 1), ("annual.pdf", 2), ("annual.pdf", 3)} | {(n, 1) for n in MEMOS}
    assert all(q.answers == () for q in questions)
    assert generate_questions(services, 20, seed=1) == questions  # same seed, same set
    assert len(generate_questions(services, 2, seed=1)) == 2
    report = evaluate(services, questions)
    assert report.unresolved == []
    assert report.rankings["lexical"].recall[1] == 1.0
    assert report.answers is None


def test_eval_command_generates_runs_and_writes(
    services: Services, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMRAG_DATA_DIR", str(services.storage_dir))
    monkeypatch.setenv("MMRAG_DATABASE__URL", database_url)
    monkeypatch.setenv("MMRAG_EMBEDDERS__PROFILE", "tiny-random")
    monkeypatch.setattr(eval_module.console, "width", 200)
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # two commands, so "eval" is a subcommand as in the real CLI
    runner = CliRunner()

    generated = tmp_path / "gen.jsonl"
    report_path = tmp_path / "out" / "report.json"
    result = runner.invoke(app, ["eval", str(generated), "--generate", "4", "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert len(load_questions(generated)) == 4
    assert "MEANINGLESS" in result.output and "fused" in result.output and "R@10" in result.output
    assert report_path.with_suffix(".png").is_file()
    assert json.loads(report_path.read_text())["questions"] == 4

    questions = tmp_path / "set.jsonl"
    write_questions(questions, QUESTIONS[:2])
    result = runner.invoke(
        app, ["eval", str(questions), "--report", str(tmp_path / "r2.json"), "--answerer", "extractive", "--no-plot"]
    )
    assert result.exit_code == 0, result.output
    assert "answer in evidence" in result.output
    assert not (tmp_path / "r2.png").exists()

    assert runner.invoke(app, ["eval"]).exit_code != 0  # neither a file nor --generate


def test_cited_regions_are_scored_against_gold_regions(services: Services, tmp_path: Path) -> None:
    # the gold box of "311.20" from poppler's word boxes: another reader of the page than the PDFium one indexed
    from mmrag.ingest.pdf_pages import _PopplerSource

    words = _PopplerSource(tmp_path / "corpus" / "memos" / "kestrel.pdf", ()).info(1).words
    total = next(w for w in words if w.text == "311.20")
    kestrel, curlew = (q for q in QUESTIONS if q.id in ("kestrel", "curlew"))
    questions = [
        replace(kestrel, regions=(GoldRegion("kestrel.pdf", total.box),)),
        replace(curlew, regions=(GoldRegion("curlew.pdf", (0.9, 0.9, 1.0, 1.0)),)),  # not where its answer is
        replace(curlew, id="curlew-no-gold"),
    ]
    answers = evaluate(services, questions, answerer=ExtractiveAnswerer()).answers
    assert answers is not None and answers.exact_match == 1.0
    assert answers.region_questions == 2 and answers.region_hit_rate == 0.5
    assert 0.25 < answers.mean_iou < 0.5  # one near 1, one 0
