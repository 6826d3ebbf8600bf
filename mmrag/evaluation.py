"""Retrieval and answer evaluation for `mmrag eval`: question sets, relevance matching, metrics, the report, the plot.

Question set (JSON lines, one question per line)::

    {"id": "q1", "query": "...", "relevant": ["scan-017.jpg", {"path": "reports/2023.pdf", "page": 3}],
     "answers": ["190.00"]}

A relevant item is a file or one page of a file. A path matches a document when it equals the trailing components
of any path the document was indexed under: "scan-017.jpg" matches by file name, "reports/2023.pdf" by the last two
components, an absolute path only itself. With "page" it matches that page only (1-based, as stored), otherwise any
page of the file. `answers` may be empty: the question then counts for retrieval only.

Metrics, binary relevance, over the pages each ranking returns (k = 1, 5, 10):
- recall@k: relevant items found in the top k over min(k, relevant items); capped like BEIR's R_cap@k, so a
  question with two equally good receipts scores 1.0 at k=1 when either is first (plain recall would cap it at 0.5).
  A relevant item is found by the first page that matches it; later pages of the same file earn nothing, so a
  ranking cannot score twice on one relevant file.
- MRR: 1 / rank of the first relevant page, 0 when none is in the ranking (which is max(k) deep).
- nDCG@5: DCG of the gains over the DCG of an ideal ranking with min(5, relevant items) ones first.
- latency p50/p95 (ms): wall time of each retriever's `retrieve()` call and of the fused `search()` call, after one
  untimed warm-up query (model loading is not query latency).
- answers, over questions that have answers: exact match (the answer text equals a gold answer after case, space and
  surrounding punctuation are normalised; two plain numbers are equal when their values are: "190" ≡ "190.00"), and
  answer-in-evidence (a gold answer occurs, as a whole token, in the quote of the answer's first citation).
  answer-in-top-page (a gold answer occurs in the text of the fused top-1 page) is the ceiling that retrieval and
  the page text put on answer-in-evidence.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mmrag.errors import ConfigError, InputError
from mmrag.protocols import Answerer
from mmrag.services import Services
from mmrag.store import repository
from mmrag.store.models import Document, DocumentPath, Page
from mmrag.layout import iou
from mmrag.qa import check_citations
from mmrag.types import Answer, DocumentStatus

log = logging.getLogger(__name__)

FUSED = "fused"
DEFAULT_KS = (1, 5, 10)
NDCG_K = 5


# --- question sets -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relevant:
    """A relevant file (page None: any of its pages) or one page of it."""

    path: str
    page: int | None = None

    def matches(self, paths: Iterable[str], page_number: int) -> bool:
        if self.page is not None and self.page != page_number:
            return False
        return any(path_matches(self.path, path) for path in paths)

    def to_json(self) -> str | dict[str, Any]:
        return self.path if self.page is None else {"path": self.path, "page": self.page}


@dataclass(frozen=True)
class GoldRegion:
    """Where a question's answer is: a box ([x0, y0, x1, y1], 0-1 of the page image, origin top-left) on a page of
    a relevant file (page None: its first)."""

    path: str
    box: tuple[float, float, float, float]
    page: int | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"path": self.path, "box": list(self.box)}
        return found if self.page is None else {**found, "page": self.page}


@dataclass(frozen=True)
class Question:
    id: str
    query: str
    relevant: tuple[Relevant, ...]
    answers: tuple[str, ...] = ()
    regions: tuple[GoldRegion, ...] = ()  # where the answer is; a cited region is scored against them

    def to_json(self) -> dict[str, Any]:
        found = {
            "id": self.id,
            "query": self.query,
            "relevant": [item.to_json() for item in self.relevant],
            "answers": list(self.answers),
        }
        return {**found, "regions": [r.to_json() for r in self.regions]} if self.regions else found


def path_matches(wanted: str, recorded: str) -> bool:
    """Whether `wanted` names `recorded`: equal trailing path components (an absolute `wanted` must equal it)."""
    flavour = PureWindowsPath if "\\" in wanted or "\\" in recorded else PurePosixPath
    wanted_parts = flavour(wanted).parts
    recorded_parts = flavour(recorded).parts
    if not wanted_parts:
        return False
    if flavour(wanted).is_absolute():
        return wanted_parts == recorded_parts
    wanted_parts = tuple(part for part in wanted_parts if part != ".")
    return len(wanted_parts) <= len(recorded_parts) and recorded_parts[-len(wanted_parts) :] == wanted_parts


def parse_question(obj: object, where: str) -> Question:
    """One question from its JSON object; InputError names `where` (file:line) and the offending field."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a question must be a JSON object, got {type(obj).__name__}")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: 'query' must be a non-empty string, got {query!r}")
    raw_relevant = obj.get("relevant")
    if not isinstance(raw_relevant, list) or not raw_relevant:
        raise InputError(f"{where}: 'relevant' must be a non-empty list, got {raw_relevant!r}")
    relevant = []
    for item in raw_relevant:
        if isinstance(item, str) and item.strip():
            relevant.append(Relevant(item.strip()))
        elif isinstance(item, dict) and isinstance(item.get("path"), str) and item["path"].strip():
            relevant.append(Relevant(item["path"].strip(), _page_number(item, where, "a relevant page")))
        else:
            raise InputError(f"{where}: a relevant item is a file name or {{\"path\", \"page\"}}, got {item!r}")
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
    question_id = obj.get("id", where)
    regions = tuple(_gold_region(item, where) for item in _list_of(obj, "regions", where))
    return Question(str(question_id), query.strip(), tuple(relevant), tuple(a for a in answers if a.strip()), regions)


def _list_of(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{where}: '{key}' must be a list, got {value!r}")
    return value


def _gold_region(item: object, where: str) -> GoldRegion:
    """One {"path", "box", "page"?} of a question's "regions"."""
    if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].strip():
        raise InputError(f"{where}: a region is {{\"path\", \"box\": [x0, y0, x1, y1], \"page\"?}}, got {item!r}")
    box = item.get("box")
    if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                              and 0 <= v <= 1 for v in box)
            or not (box[0] < box[2] and box[1] < box[3])):
        raise InputError(f"{where}: a region's box is [x0, y0, x1, y1], 0-1 of the page, x0 < x1 and y0 < y1; "
                         f"got {box!r}")
    page = _page_number(item, where, "a region's page")
    return GoldRegion(item["path"].strip(), (float(box[0]), float(box[1]), float(box[2]), float(box[3])), page)


def _page_number(item: dict[str, Any], where: str, what: str) -> int | None:
    """An item's optional "page": None, or an integer >= 1; InputError naming `what` otherwise."""
    page = item.get("page")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int) or page < 1):
        raise InputError(f"{where}: {what} must be an integer >= 1 (1-based), got {page!r}")
    return page


def load_questions(path: Path) -> list[Question]:
    """Questions from a JSON-lines file (blank lines skipped); ids must be unique."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the question set: {exc.strerror or exc}") from exc
    questions: list[Question] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON: {exc.msg}") from exc
        question = parse_question(obj, where)
        if question.id in seen:
            raise InputError(f"{where}: question id {question.id!r} repeats an earlier one")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise InputError(f"{path}: the question set is empty")
    return questions


def write_questions(path: Path, questions: Iterable[Question]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    return path


# --- metrics (pure functions over one ranking) -----------------------------------------------------------------


@dataclass(frozen=True)
class PageLocation:
    """What relevance is judged on: every path the page's document was seen under, and the page number."""

    paths: tuple[str, ...]
    page_number: int


def judge(ranking: Sequence[PageLocation], relevant: Sequence[Relevant]) -> list[bool]:
    """Gain at each rank: True where a page is the first to match a relevant item not matched higher up."""
    found: set[int] = set()
    gains = []
    for location in ranking:
        hit = next(
            (
                index
                for index, item in enumerate(relevant)
                if index not in found and item.matches(location.paths, location.page_number)
            ),
            None,
        )
        if hit is not None:
            found.add(hit)
        gains.append(hit is not None)
    return gains


def recall_at(gains: Sequence[bool], relevant: int, k: int) -> float:
    """Relevant items in the top k over min(k, relevant) (capped recall)."""
    if relevant <= 0:
        raise ValueError("recall needs at least one relevant item")
    return sum(gains[:k]) / min(k, relevant)


def reciprocal_rank(gains: Sequence[bool]) -> float:
    return next((1.0 / rank for rank, gain in enumerate(gains, start=1) if gain), 0.0)


def ndcg_at(gains: Sequence[bool], relevant: int, k: int) -> float:
    """Binary-relevance nDCG@k: DCG over the DCG of min(k, relevant) relevant items ranked first."""
    if relevant <= 0:
        raise ValueError("nDCG needs at least one relevant item")
    dcg = sum(1.0 / math.log2(rank + 1) for rank, gain in enumerate(gains[:k], start=1) if gain)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, relevant) + 1))
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = " \t\n.,;:!?\"'()[]{}<>"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """NFKC, case-folded, one space between words, surrounding punctuation stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip(_EDGE_PUNCTUATION)


_CURRENCY = re.compile(r"^(?:rm|myr|usd|eur|gbp|sgd|\$|€|£)\s*|\s*(?:rm|myr|usd|eur|gbp|sgd|\$|€|£)$")


def _number(text: str) -> float | None:
    """The amount `text` writes, a currency before or after it ignored ("$8.20", "RM 7.00", "12.50 EUR")."""
    text = _CURRENCY.sub("", text)
    return float(text.replace(",", "")) if _PLAIN_NUMBER.fullmatch(text) else None


def exact_match(prediction: str, golds: Sequence[str]) -> bool:
    predicted = normalize_answer(prediction)
    for gold in golds:
        expected = normalize_answer(gold)
        if predicted == expected:
            return True
        a, b = _number(predicted), _number(expected)
        if a is not None and b is not None and a == b:
            return True
    return False


def contains_answer(text: str, golds: Sequence[str]) -> bool:
    """Whether a gold answer occurs in `text` as a whole token: "9.00" is not found inside "19.00" or "9.005"."""
    haystack = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    for gold in golds:
        needle = normalize_answer(gold)
        if needle and re.search(rf"(?<![\w.,]){re.escape(needle)}(?!\w|[.,]\d)", haystack):
            return True
    return False


# --- the report ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingMetrics:
    """One ranking's (a retriever's, or the fused one's) metrics averaged over the questions."""

    questions: int
    recall: dict[int, float]  # k → mean capped recall@k
    mrr: float
    ndcg: float  # nDCG@NDCG_K
    latency_p50_ms: float
    latency_p95_ms: float
    recall_curve: list[float]  # recall@1..max_k, for the plot


@dataclass(frozen=True)
class AnswerMetrics:
    answerer: str
    questions: int  # questions with gold answers
    exact_match: float
    answer_in_evidence: float
    answer_in_top_page: float
    supported: float  # share of answers the answerer marked supported
    latency_p50_ms: float
    latency_p95_ms: float
    # Over the questions with gold regions: the share whose first citation has a region overlapping one of them with
    # IoU >= REGION_HIT_IOU, and the mean of the best IoU (0 for a question with no cited region on its page).
    region_questions: int = 0
    region_hit_rate: float = 0.0
    mean_iou: float = 0.0


@dataclass(frozen=True)
class QuestionResult:
    id: str
    first_relevant_rank: dict[str, int | None]  # ranking name → rank of the first relevant page (None: not in top k)
    answer: str | None = None
    evidence: str | None = None
    exact_match: bool | None = None
    answer_in_evidence: bool | None = None


@dataclass(frozen=True)
class EvalReport:
    collection: str
    questions: int
    ks: tuple[int, ...]
    rankings: dict[str, RankingMetrics]  # retriever name → metrics, and FUSED
    answers: AnswerMetrics | None
    per_question: list[QuestionResult]
    unresolved: list[str]  # question ids whose relevant items match no indexed page
    meaningless: bool  # tiny-random models: the numbers test plumbing only
    settings: dict[str, Any]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ks"] = list(self.ks)
        for metrics in data["rankings"].values():
            metrics["recall"] = {f"@{k}": value for k, value in metrics["recall"].items()}
        return data

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def summarize(
    gains_by_question: Sequence[tuple[Sequence[bool], int]], latencies_ms: Sequence[float], ks: Sequence[int]
) -> RankingMetrics:
    """Mean metrics over questions given each question's (gains, number of relevant items)."""
    n = len(gains_by_question)
    max_k = max(ks)

    def mean(values: Iterable[float]) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    return RankingMetrics(
        questions=n,
        recall={k: mean(recall_at(g, r, k) for g, r in gains_by_question) for k in ks},
        mrr=mean(reciprocal_rank(g) for g, _ in gains_by_question),
        ndcg=mean(ndcg_at(g, r, NDCG_K) for g, r in gains_by_question),
        latency_p50_ms=percentile(latencies_ms, 50),
        latency_p95_ms=percentile(latencies_ms, 95),
        recall_curve=[mean(recall_at(g, r, k) for g, r in gains_by_question) for k in range(1, max_k + 1)],
    )


# --- the runner ------------------------------------------------------------------------------------------------


def page_locations(session: Session, collection_id: int) -> dict[int, PageLocation]:
    """Page id → every recorded path of its document and its page number, for the collection's indexed pages."""
    # Relevance may name any path a duplicate was seen under, so this reads all DocumentPath rows, which
    # repository.describe_pages (first path only) does not.
    paths: dict[int, list[str]] = {}
    for document_id, path in session.execute(
        select(DocumentPath.document_id, DocumentPath.path).where(DocumentPath.collection_id == collection_id)
    ):
        paths.setdefault(document_id, []).append(path)
    rows = session.execute(
        select(Page.id, Page.document_id, Page.page_number)
        .join(Document, Document.id == Page.document_id)
        .where(Document.collection_id == collection_id, Document.status == DocumentStatus.INDEXED)
    )
    return {page_id: PageLocation(tuple(sorted(paths.get(doc_id, ()))), number) for page_id, doc_id, number in rows}


def evaluate(
    services: Services,
    questions: Sequence[Question],
    *,
    collection: str = "default",
    ks: Sequence[int] = DEFAULT_KS,
    answerer: Answerer | None = None,
    answer_pages: int = 5,
    on_question: Callable[[], None] | None = None,
) -> EvalReport:
    """Run every question through each loaded retriever, the fused search and (optionally) an answerer."""
    from mmrag.retrieval import fusion_weight, retrieve, retrieved_pages, search
    from mmrag.retrievers import RETRIEVERS

    if not questions:
        raise ConfigError("no questions to evaluate")
    ks = tuple(sorted(set(ks)))
    if ks[0] < 1:
        raise ConfigError(f"k must be >= 1, got {ks[0]}")
    max_k = max(max(ks), NDCG_K)
    with services.sessions() as session:
        collection_id = repository.get_collection(session, collection).id
        locations = page_locations(session, collection_id)
    unresolved = _unresolved(questions, locations)

    # Warm-up: loads models and the BM25 index, so the first timed query measures a query, not a load.
    # Every retriever's own ranking is judged, one weighted 0 (left out of fusion) included.
    every = RETRIEVERS.names()
    names = [r.retriever for r in retrieve(services, collection_id, text=questions[0].query, depth=max_k,
                                           retrievers=every)]
    search(services, collection, text=questions[0].query, k=max_k)

    gains: dict[str, list[tuple[list[bool], int]]] = {name: [] for name in [*names, FUSED]}
    latencies: dict[str, list[float]] = {name: [] for name in [*names, FUSED]}
    answer_rows: list[tuple[bool, bool, bool, bool, float]] = []
    region_ious: list[float] = []
    results: list[QuestionResult] = []

    def judged(page_ids: Sequence[int], relevant: Sequence[Relevant]) -> list[bool]:
        ranking = [locations[p] for p in page_ids if p in locations]  # SQL is the truth: drop unswept pages
        return judge(ranking, relevant)

    for question in questions:
        first_rank: dict[str, int | None] = {}
        n_relevant = len(question.relevant)
        for name in names:
            began = time.perf_counter()
            (hits,) = retrieve(services, collection_id, text=question.query, depth=max_k, retrievers=[name])
            latencies[name].append(1000 * (time.perf_counter() - began))
            g = judged([hit.page_id for hit in hits.hits][:max_k], question.relevant)
            gains[name].append((g, n_relevant))
            first_rank[name] = _first(g)
        began = time.perf_counter()
        fused = search(services, collection, text=question.query, k=max_k)
        latencies[FUSED].append(1000 * (time.perf_counter() - began))
        g = judged([result.page_id for result in fused], question.relevant)
        gains[FUSED].append((g, n_relevant))
        first_rank[FUSED] = _first(g)

        result = QuestionResult(question.id, first_rank)
        if answerer is not None and question.answers:
            pages = retrieved_pages(services, fused[:answer_pages])
            began = time.perf_counter()
            answer = answerer.answer(question.query, pages)
            elapsed = 1000 * (time.perf_counter() - began)
            answer = check_citations(answer, pages)  # as /v1/ask has it: honest citations, with their regions
            evidence = answer.citations[0].quote if answer.citations else ""
            em = exact_match(answer.value or answer.text, question.answers)
            if question.regions:
                region_ious.append(_best_iou(answer, question.regions, locations))
            in_evidence = bool(evidence) and contains_answer(evidence, question.answers)
            in_top_page = bool(fused) and contains_answer(fused[0].text, question.answers)
            answer_rows.append((em, in_evidence, in_top_page, answer.supported, elapsed))
            result = QuestionResult(question.id, first_rank, answer.text, evidence, em, in_evidence)
        results.append(result)
        if on_question is not None:
            on_question()

    answer_metrics = _answer_metrics(answerer.name, answer_rows, region_ious) if answerer is not None else None
    settings = services.settings
    return EvalReport(
        collection=collection,
        questions=len(questions),
        ks=ks,
        rankings={name: summarize(gains[name], latencies[name], ks) for name in gains},
        answers=answer_metrics,
        per_question=results,
        unresolved=unresolved,
        meaningless=services.embedders().meaningless,
        settings={
            # the weights fusion used: the settings' where they name one, else each retriever's own
            "retrieval": {
                **settings.retrieval.model_dump(),
                "weights": {name: fusion_weight(name, settings.retrieval) for name in names},
            },
            "embedders": {"profile": settings.embedders.profile, "text_model": settings.embedders.text.model},
            "ingest": {"ocr": settings.ingest.ocr, "ocr_lang": settings.ingest.ocr_lang, "dpi": settings.ingest.dpi},
            "retrievers": names,
            "answer_pages": answer_pages,
        },
    )


def _unresolved(questions: Sequence[Question], locations: Mapping[int, PageLocation]) -> list[str]:
    """The questions that name no indexed page as relevant (they score 0), with a warning."""
    unresolved = [
        q.id
        for q in questions
        if not any(item.matches(loc.paths, loc.page_number) for item in q.relevant for loc in locations.values())
    ]
    if unresolved:
        log.warning(
            "%d of %d questions name no indexed page as relevant (first: %s); they score 0",
            len(unresolved), len(questions), unresolved[0],
        )
    return unresolved


REGION_HIT_IOU = 0.5


def _best_iou(answer: Answer, gold: Sequence[GoldRegion], locations: Mapping[int, PageLocation]) -> float:
    """The best IoU between a region of the answer's first citation and a gold region on the same page."""
    if not answer.citations:
        return 0.0
    cited = answer.citations[0]
    where = locations.get(cited.page_id)
    if where is None:
        return 0.0
    on_page = [g for g in gold if Relevant(g.path, g.page or 1).matches(where.paths, where.page_number)]
    return max((iou(r.box, g.box) for r in cited.regions for g in on_page), default=0.0)


def _answer_metrics(
    answerer: str, rows: Sequence[tuple[bool, bool, bool, bool, float]], region_ious: Sequence[float] = ()
) -> AnswerMetrics:
    """Shares of (exact match, answer in evidence, answer in top page, supported) and latency over answered rows;
    region hit rate and mean IoU over the questions with gold regions."""
    n = len(rows)

    def share(column: int) -> float:
        return sum(row[column] for row in rows) / n if n else 0.0

    latencies = [row[4] for row in rows]
    return AnswerMetrics(
        answerer=answerer,
        questions=n,
        exact_match=share(0),
        answer_in_evidence=share(1),
        answer_in_top_page=share(2),
        supported=share(3),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        region_questions=len(region_ious),
        region_hit_rate=sum(v >= REGION_HIT_IOU for v in region_ious) / len(region_ious) if region_ious else 0.0,
        mean_iou=sum(region_ious) / len(region_ious) if region_ious else 0.0,
    )


def _first(gains: Sequence[bool]) -> int | None:
    return next((rank for rank, gain in enumerate(gains, start=1) if gain), None)


# --- the plot --------------------------------------------------------------------------------------------------


def plot_recall(report: EvalReport | Mapping[str, Any], path: Path) -> Path:
    """A PNG of recall@k (k = 1..max) per retriever, with the fused ranking drawn boldest."""
    # A bare Figure (no pyplot): no global backend switch and no figure registry in the caller's process.
    from matplotlib.figure import Figure  # imported here: slow to import, and only `mmrag eval` draws

    data = report.to_dict() if isinstance(report, EvalReport) else report
    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    axes = figure.subplots()
    for name, metrics in data["rankings"].items():
        curve = metrics["recall_curve"]
        ks = range(1, len(curve) + 1)
        style = {"linewidth": 2.8, "color": "black", "zorder": 3} if name == FUSED else {"linewidth": 1.6}
        axes.plot(ks, curve, marker="o", markersize=3, label=name, **style)
    axes.set_xlabel("k")
    axes.set_ylabel("recall@k")
    axes.set_ylim(0, 1.02)
    axes.set_xticks(range(1, max(len(m["recall_curve"]) for m in data["rankings"].values()) + 1))
    axes.grid(alpha=0.3)
    title = f"{data['collection']}: {data['questions']} questions"
    if data.get("meaningless"):
        title += " (tiny-random: meaningless)"
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
