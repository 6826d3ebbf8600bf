"""SROIE eval: index the 200 receipt scans, run `mmrag eval` on questions.jsonl, tune fusion weights by 2-fold CV.

    python -m bench sroie --data-dir /tmp/sroie-eval [--index] [--tune] [--ocr-check]

The shared data (../shared/data/sroie) is read, never copied: bench/results/sroie.json holds aggregate figures
only (no queries, no page text). It skips cleanly when the data folder is absent.

--tune fits the weighted-RRF parameters (the dense text and dates retrievers' weights against BM25's 1.0, and
rrf_k) on one half of the questions and reports them on the other half, both ways round (2-fold cross-validation,
halves split by question order: even / odd). The per-retriever rankings are computed once; fusion is re-run offline
with fuse().

--ocr-check compares the indexed page text with the annotated text lines in box/ (share of ground-truth words the
OCR found) and counts receipts whose OCR holds the annotated total and date: the ceiling OCR puts on retrieval
and on answer-in-evidence.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from mmrag.config import RetrievalSettings, Settings
from mmrag.evaluation import (
    EvalReport,
    GoldRegion,
    Question,
    contains_answer,
    evaluate,
    judge,
    load_questions,
    page_locations,
    plot_recall,
    summarize,
)
from mmrag.services import build_services
from mmrag.store import repository

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sroie"
DEFAULT_OUT = REPO / "bench" / "results" / "sroie.json"
TEXT_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0)
DATES_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
RRF_KS = (1, 2, 5, 10, 20, 60)
console = Console()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench sroie", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the sroie folder (img/ key/ box/ questions)")
    parser.add_argument("--data-dir", type=Path, required=True, help="scratch MMRAG data dir (outside the repo)")
    parser.add_argument("--index", action="store_true", help="(re)index img/ first; unchanged files are skipped")
    parser.add_argument("--tune", action="store_true", help="2-fold CV grid search of the fusion weights")
    parser.add_argument("--ocr-check", action="store_true", help="OCR text against the annotated lines and keys")
    parser.add_argument("--answerer", default="extractive", help="answerer kind, or none")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    if not (args.data / "questions.jsonl").is_file():
        log.warning("skipping the SROIE eval: %s has no questions.jsonl (the shared evaluation data)", args.data)
        return 0
    settings = Settings(data_dir=args.data_dir)
    services = build_services(settings)
    summary: dict = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(args.data_dir),
    }
    try:
        if args.index:
            from mmrag.indexing import run_index

            job = run_index(services, [args.data / "img"])
            summary["index"] = {
                "pages": job.pages_indexed, "seconds": round(job.seconds, 1),
                "pages_per_second": round(job.pages_per_second, 3), "counts": job.counts,
            }
            console.print(
                f"indexed {job.pages_indexed} pages in {job.seconds:.1f} s: {job.pages_per_second:.2f} pages/s"
            )
        questions = with_gold_regions(load_questions(args.data / "questions.jsonl"), args.data)
        answerer = None
        if args.answerer != "none":
            from mmrag.answer import ANSWERERS

            answerer = ANSWERERS.create(args.answerer, settings.answerer)
        began = time.perf_counter()
        report = evaluate(services, questions, answerer=answerer)
        summary["eval_seconds"] = round(time.perf_counter() - began, 1)
        print_report(report)
        summary["report"] = {key: value for key, value in report.to_dict().items() if key != "per_question"}
        if args.tune:
            summary["tuning"] = tune(services, questions)
        if args.ocr_check:
            summary["ocr"] = ocr_check(services, args.data)
        summary["text"] = text_left(services)
        console.print(
            f"pages without usable text (under {USABLE_CHARS} characters): {summary['text']['without_usable_text']} "
            f"of {summary['text']['pages']} ({summary['text']['by_source']})"
        )
    finally:
        services.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot_recall(summary["report"], args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def with_gold_regions(questions: list[Question], data: Path) -> list[Question]:
    """Each question with its gold regions: the annotated lines (box/NNN.csv: four corners, then the text) of its
    relevant receipts that hold one of its answers, as boxes normalised to the receipt's image."""
    found = []
    for question in questions:
        regions = []
        for relevant in question.relevant:
            name = Path(relevant.path).name
            boxes = data / "box" / f"{Path(name).stem}.csv"
            if not boxes.is_file():
                continue
            with Image.open(data / "img" / name) as image:
                width, height = image.size
            for row in csv.reader(boxes.read_text(encoding="utf-8", errors="replace").splitlines()):
                if len(row) < 9 or not contains_answer(",".join(row[8:]), question.answers):
                    continue
                xs, ys = [float(v) for v in row[0:8:2]], [float(v) for v in row[1:8:2]]
                box = (min(xs) / width, min(ys) / height, max(xs) / width, max(ys) / height)
                if box[0] < box[2] and box[1] < box[3]:
                    regions.append(GoldRegion(relevant.path, tuple(min(max(v, 0.0), 1.0) for v in box)))
        found.append(replace(question, regions=tuple(regions)))
    return found


def print_report(report: EvalReport) -> None:
    table = Table(title=f"SROIE · {report.questions} questions")
    for column in ("ranking", "R@1", "R@5", "R@10", "MRR", "nDCG@5", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right")
    for name, m in report.rankings.items():
        table.add_row(
            name, *(f"{m.recall[k]:.3f}" for k in (1, 5, 10)), f"{m.mrr:.3f}", f"{m.ndcg:.3f}",
            f"{m.latency_p50_ms:.1f}", f"{m.latency_p95_ms:.1f}",
        )
    console.print(table)
    if report.answers is not None:
        a = report.answers
        console.print(
            f"answers ({a.answerer}, {a.questions} q): exact match {a.exact_match:.3f} · answer-in-evidence "
            f"{a.answer_in_evidence:.3f} · answer-in-top-page {a.answer_in_top_page:.3f} · supported {a.supported:.3f}"
            f" · region hit {a.region_hit_rate:.3f} (IoU >= 0.5, {a.region_questions} q) · mean IoU {a.mean_iou:.3f}"
        )


def tune(services, questions) -> dict:  # noqa: ANN001 - Services, list[Question]
    """Fusion parameters (text weight, dates weight, rrf_k; lexical at 1.0) chosen by MRR on held-out questions,
    never on the questions they are reported on: 2-fold (even/odd halves, both ways round) and leave-one-out. Ties
    go to the smaller text weight, then the dates weight nearest the shipped one, then the larger rrf_k."""
    from mmrag.retrieval import fuse, fusion_weight, retrieve
    from mmrag.retrievers import RETRIEVERS

    with services.sessions() as session:
        collection_id = repository.get_collection(session, "default").id
        locations = page_locations(session, collection_id)
    depth = services.settings.retrieval.depth
    every = RETRIEVERS.names()  # a retriever the shipped weights leave out (weight 0) is tuned too
    rankings = [retrieve(services, collection_id, text=q.query, depth=depth, retrievers=every) for q in questions]
    grid = list(itertools.product(TEXT_WEIGHTS, DATES_WEIGHTS, RRF_KS))
    shipped_dates = fusion_weight("dates", RetrievalSettings())

    def gains(i: int, text_weight: float, dates_weight: float, rrf_k: int) -> tuple[list[bool], int]:
        settings = RetrievalSettings(weights={"text": text_weight, "lexical": 1.0, "dates": dates_weight}, rrf_k=rrf_k)
        fused = fuse(rankings[i], settings)[:10]
        ranking = [locations[page_id] for page_id, _, _ in fused if page_id in locations]
        return judge(ranking, questions[i].relevant), len(questions[i].relevant)

    table = {params: [gains(i, *params) for i in range(len(questions))] for params in grid}
    mrr = {params: [summarize([row], [], (1,)).mrr for row in rows] for params, rows in table.items()}

    def best(indices: list[int]) -> tuple[float, float, int]:
        return max(grid, key=lambda p: (round(sum(mrr[p][i] for i in indices), 9), -p[0], -abs(p[1] - shipped_dates),
                                        p[2]))

    def held_out(chosen: dict[int, tuple[float, int]]) -> dict:
        metrics = summarize([table[params][i] for i, params in chosen.items()], [], (1, 5, 10))
        return {"recall@1": metrics.recall[1], "recall@5": metrics.recall[5], "recall@10": metrics.recall[10],
                "mrr": metrics.mrr}

    everyone = list(range(len(questions)))
    halves = [everyone[0::2], everyone[1::2]]
    two_fold: dict[int, tuple[float, int]] = {}
    folds = []
    for fit, report_on in (halves, halves[::-1]):
        params = best(fit)
        folds.append({"text_weight": params[0], "dates_weight": params[1], "rrf_k": params[2],
                      "fit_questions": len(fit)})
        two_fold.update({i: params for i in report_on})
    loo = {i: best([j for j in everyone if j != i]) for i in everyone}
    shipped = RetrievalSettings()
    shipped_params = (fusion_weight("text", shipped), shipped_dates, shipped.rrf_k)
    if shipped_params not in table:
        table[shipped_params] = [gains(i, *shipped_params) for i in range(len(questions))]
    final = best(everyone)
    result = {
        "grid": {"text_weight": TEXT_WEIGHTS, "dates_weight": DATES_WEIGHTS, "rrf_k": RRF_KS},
        "shipped": {"text_weight": shipped_params[0], "dates_weight": shipped_params[1], "rrf_k": shipped_params[2],
                    "in_sample": held_out(dict.fromkeys(everyone, shipped_params))},
        "two_fold": {"folds": folds, "held_out": held_out(two_fold)},
        "leave_one_out": {"choices": sorted({str(p) for p in loo.values()}), "held_out": held_out(loo)},
        "chosen_on_all": {
            "text_weight": final[0], "dates_weight": final[1], "rrf_k": final[2],
            "in_sample": held_out(dict.fromkeys(everyone, final)),
        },
    }
    for name in ("two_fold", "leave_one_out"):
        h = result[name]["held_out"]
        console.print(
            f"{name}: held-out R@1 {h['recall@1']:.3f} R@5 {h['recall@5']:.3f} R@10 {h['recall@10']:.3f} "
            f"MRR {h['mrr']:.3f}"
        )
    console.print(f"2-fold picks: {folds}; leave-one-out picks: {result['leave_one_out']['choices']}")
    console.print(f"chosen on all questions: text={final[0]} dates={final[1]} rrf_k={final[2]}; shipped "
                  f"{shipped_params}: {result['shipped']['in_sample']}")
    return result


USABLE_CHARS = 40  # a receipt's merchant and date alone take more


def text_left(services) -> dict:  # noqa: ANN001 - Services
    """How many indexed pages ended with no usable text, by where their text came from."""
    from sqlalchemy import select

    from mmrag.ingest.text import count_chars
    from mmrag.store.models import Page

    with services.sessions() as session:
        rows = session.execute(select(Page.text, Page.text_source)).all()
    short = [source for text, source in rows if count_chars(text) < USABLE_CHARS]
    by_source = {source: short.count(source) for source in sorted(set(short))}
    return {"pages": len(rows), "without_usable_text": len(short), "by_source": by_source}


def ocr_check(services, data: Path) -> dict:  # noqa: ANN001 - Services
    """Share of annotated words the OCR found, and of receipts whose OCR holds the annotated total and date."""
    from mmrag.analysis import date_keys, tokenize

    with services.sessions() as session:
        collection_id = repository.get_collection(session, "default").id
        texts = dict(repository.page_texts(session, collection_id))
        locations = page_locations(session, collection_id)
    by_name = {Path(path).name: texts[page_id] for page_id, loc in locations.items() for path in loc.paths}
    word_recall, totals, dates = [], [], []
    for key_file in sorted((data / "key").glob("*.json")):
        name = key_file.stem + ".jpg"
        if name not in by_name:
            continue
        text = by_name[name]
        key = json.loads(key_file.read_text())
        found = set(tokenize(text))
        truth = []
        with (data / "box" / f"{key_file.stem}.csv").open(encoding="utf-8", errors="replace") as rows:
            for row in csv.reader(rows):
                truth += tokenize(",".join(row[8:])) if len(row) >= 9 else []
        word_recall.append(sum(token in found for token in truth) / max(1, len(truth)))
        totals.append(contains_answer(text, [key["total"]]))
        wanted = set(date_keys(key["date"]))
        dates.append(bool(wanted & set(date_keys(text))) or key["date"].casefold() in text.casefold())
    n = len(word_recall)
    result = {
        "receipts": n,
        "word_recall": sum(word_recall) / n,
        "total_in_text": sum(totals) / n,
        "date_in_text": sum(dates) / n,
    }
    console.print(
        f"OCR over {n} receipts: ground-truth words found {result['word_recall']:.3f} · total in text "
        f"{result['total_in_text']:.3f} · date in text {result['date_in_text']:.3f}"
    )
    return result
