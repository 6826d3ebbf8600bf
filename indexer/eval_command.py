"""`mmrag eval`: run a question set (or generate one from the collection) and print, save and plot the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmrag import Settings

console = Console()
err_console = Console(stderr=True)

DEFAULT_GENERATED = Path("generated-questions.jsonl")


def eval_command(
    questions: Annotated[
        Optional[Path],
        typer.Argument(
            help="Question set, JSON lines: {id, query, relevant (file names or {path, page}), answers}. "
            f"With --generate, where the generated set is written (default {DEFAULT_GENERATED})."
        ),
    ] = None,
    generate: Annotated[
        Optional[int],
        typer.Option(
            "--generate",
            min=1,
            help="Build N known-item questions from the collection's own pages (no labelling), save them, run them.",
        ),
    ] = None,
    report: Annotated[Path, typer.Option("--report", help="Where the JSON report is written.")] = Path(
        "eval-report.json"
    ),
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="PNG of recall@k per retriever (default: the report path, .png).")
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Skip the PNG.")] = False,
    answerer: Annotated[
        Optional[str],
        typer.Option(
            "--answerer",
            help="Answerer to score: extractive, transformers, openai, or none (default: the configured one).",
        ),
    ] = None,
    answer_pages: Annotated[int, typer.Option("--answer-pages", min=1, help="Fused hits handed to the answerer.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed for --generate.")] = 0,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")] = "default",
    profile: Annotated[
        Optional[str],
        typer.Option(
            "--profile", help="Embedder profile: default (real weights) or tiny-random (plumbing checks only)."
        ),
    ] = None,
) -> None:
    """Measure retrieval (recall@1/5/10, MRR, nDCG@5, latency) per retriever, fused, and answers: table, JSON, PNG."""
    from mmrag import build_services, evaluate, load_questions, plot_recall, write_questions

    if questions is None and generate is None:
        raise typer.BadParameter("give a QUESTIONS file, or --generate N to build one from the collection")
    settings = Settings()
    if profile is not None:
        settings.embedders.profile = profile  # type: ignore[assignment]
    services = build_services(settings)
    try:
        if generate is not None:
            from mmrag import generate_questions

            target = questions or DEFAULT_GENERATED
            question_set = generate_questions(services, generate, collection=collection, seed=seed)
            if not question_set:
                err_console.print(f"[red]no page of collection {collection!r} has text to build a question from[/]")
                raise typer.Exit(1)
            write_questions(target, question_set)
            console.print(f"wrote {len(question_set)} known-item questions (verbatim passages) to {target}")
        else:
            assert questions is not None
            question_set = load_questions(questions)
        scorer = _answerer(settings, answerer)
        columns = (TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("eval", total=len(question_set))
            result = evaluate(
                services,
                question_set,
                collection=collection,
                answerer=scorer,
                answer_pages=answer_pages,
                on_question=lambda: bar.advance(task),
            )
    finally:
        services.close()

    if result.meaningless:
        err_console.print(
            "[bold yellow]profile tiny-random: models are random-init; every score below is MEANINGLESS "
            "(plumbing check only).[/]"
        )
    console.print(_ranking_table(result))
    if result.answers is not None:
        console.print(_answer_table(result))
    if result.unresolved:
        console.print(
            f"{len(result.unresolved)} questions name no indexed page as relevant and score 0 "
            f"(e.g. {', '.join(result.unresolved[:5])}): is the right collection indexed?",
            style="yellow",
        )
    result.write_json(report)
    console.print(f"report: {report}")
    if not no_plot:
        picture = plot_recall(result, plot or report.with_suffix(".png"))
        console.print(f"plot: {picture}")


def _answerer(settings: Settings, kind: str | None):  # noqa: ANN202 - Answerer | None, imported lazily
    if kind == "none":
        return None
    from mmrag import ANSWERERS

    return ANSWERERS.create(kind or settings.answerer.kind, settings.answerer)


def _ranking_table(result) -> Table:  # noqa: ANN001 - EvalReport, imported lazily
    ks = result.ks
    table = Table(title=f"retrieval · collection {result.collection!r} · {result.questions} questions")
    table.add_column("ranking")
    for column in [*(f"R@{k}" for k in ks), "MRR", "nDCG@5", "p50 ms", "p95 ms"]:
        table.add_column(column, justify="right")
    for name, metrics in result.rankings.items():
        table.add_row(
            f"[bold]{name}[/]" if name == "fused" else name,
            *(f"{metrics.recall[k]:.3f}" for k in ks),
            f"{metrics.mrr:.3f}",
            f"{metrics.ndcg:.3f}",
            f"{metrics.latency_p50_ms:.1f}",
            f"{metrics.latency_p95_ms:.1f}",
        )
    return table


def _answer_table(result) -> Table:  # noqa: ANN001 - EvalReport, imported lazily
    answers = result.answers
    table = Table(title=f"answers · {answers.questions} questions with gold answers")
    columns = ["answerer", "exact match", "answer in evidence", "answer in top page", "supported", "p50 ms", "p95 ms"]
    cells = [
        answers.answerer,
        f"{answers.exact_match:.3f}",
        f"{answers.answer_in_evidence:.3f}",
        f"{answers.answer_in_top_page:.3f}",
        f"{answers.supported:.3f}",
        f"{answers.latency_p50_ms:.1f}",
        f"{answers.latency_p95_ms:.1f}",
    ]
    if answers.region_questions:  # the question set gives gold regions
        from mmrag.evaluation import REGION_HIT_IOU

        columns += [f"region hit (IoU>={REGION_HIT_IOU})", "mean IoU"]
        cells += [f"{answers.region_hit_rate:.3f}", f"{answers.mean_iou:.3f}"]
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*cells)
    return table
