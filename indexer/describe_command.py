"""`mmrag describe`: captions (alt text) of pages by the configured VLM answerer, cached by content, searchable."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mmrag import Settings

console = Console()
err_console = Console(stderr=True)

SHOWN = 20  # captions printed after a run


def describe_command(
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection (default: default; with --page, only checks the pages are "
                     "in it)."),
    ] = None,
    page: Annotated[
        list[int] | None, typer.Option("--page", help="Describe this page id (repeatable; any page, not only "
                                          "photos). Default: the collection's photos without a caption."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Describe at most N pages.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Describe again pages whose content already has a caption.")
    ] = False,
) -> None:
    """Caption pages with the VLM answerer (MMRAG_ANSWERER__KIND=transformers or openai): one or two sentences
    each, cached by content (a copy is never described twice) and searchable like page text."""
    from mmrag import build_answerer, build_services, describe_pages

    settings = Settings()
    services = build_services(settings)
    answerer = build_answerer(settings.answerer)  # not the extractive fallback: captions need the model itself
    try:
        columns = (TextColumn("[bold]describing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("describe", total=None)
            report = describe_pages(
                services,
                answerer,
                collection=collection,
                page_ids=page or (),
                limit=limit,
                force=force,
                on_start=lambda total: bar.update(task, total=total),
                on_page=lambda _: bar.advance(task),
            )
    finally:
        close = getattr(answerer, "close", None)
        if close is not None:
            close()
        services.close()
    console.print(f"{report.described} pages described by {answerer.name}, {report.cached} from cache, "
                  f"{len(report.failed)} failed")  # fmt: skip
    for page_id, why in report.failed[:SHOWN]:
        err_console.print(f"[yellow]page {page_id}: {why}[/]")
    if report.pages:
        table = Table(title="captions")
        for column in ("page", "caption", "by", "cached"):
            table.add_column(column, overflow="fold")
        for described in report.pages[:SHOWN]:
            table.add_row(str(described.page_id), described.caption, described.model, "yes" if described.cached else "")
        console.print(table)
