"""The `mmrag` command line (Typer): index, status, delete, search, tag, serve, ask."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import mmrag
from mmrag import Settings
from indexer.describe_command import describe_command
from indexer.eval_command import eval_command
from indexer.models_command import models_app
from mmrag import RETRIEVERS, MmragError

# No local variables in tracebacks, whatever Typer's default: a frame that opened a PDF may hold its password.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Multimodal RAG: index images and PDFs, search them.",
)
console = Console()
err_console = Console(stderr=True)
SHOWN = 20  # failed files and failed pages listed in a summary; the rest are counted ("and N more")

ProfileOption = Annotated[
    Optional[str],
    typer.Option("--profile", help="Embedder profile: default (real weights) or tiny-random (plumbing checks only)."),
]
CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]


def _settings(profile: str | None) -> Settings:
    settings = Settings()
    if profile is not None:
        settings.embedders.profile = profile  # type: ignore[assignment]
    return settings


def _services(profile: str | None = None):  # noqa: ANN202 - Services, imported lazily to keep --help fast
    from mmrag import build_services

    return build_services(_settings(profile))


PATH_ROOM = 32  # characters a hit's path gets in a table at least


def shorten_middle(path: str, width: int) -> str:
    """`path` in at most `width` characters where it can be: its start and its end, "…" between. The file name is
    never cut (hits in one folder differ there), and whole parent folders are kept before it while they fit in half
    the room."""
    if len(path) <= width:
        return path
    parts = path.split("/")
    tail = parts[-1]
    for part in reversed(parts[1:-1]):
        if len(part) + 1 + len(tail) > width // 2:
            break
        tail = f"{part}/{tail}"
    head = max(0, width - len(tail) - 2)
    return f"{path[:head]}…/{tail}"


def _shown_path(path: str, name: str, width: int) -> str:
    """A hit's path for a table; an upload (stored under its hash) with the name it was sent with first."""
    shown = shorten_middle(path, width)
    return shown if not name or name == Path(path).name else f"{name}\n{shown}"


class _RichProgress:
    """Draws the job's progress: files done of total, pages per second, time left."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("indexing", total=None, pages=0, rate=0.0)
        self.pages = 0

    def start(self, total_files: int) -> None:
        self.progress.update(self.task, total=total_files)

    def advance(self, files: int = 1, pages: int = 0) -> None:
        self.pages += pages
        elapsed = self.progress.tasks[0].elapsed or 0.0
        rate = self.pages / elapsed if elapsed > 0 else 0.0
        self.progress.update(self.task, advance=files, pages=self.pages, rate=rate)


def _meaningless_warning() -> None:
    err_console.print(
        "[bold yellow]profile tiny-random: models are random-init; every score below is MEANINGLESS "
        "(plumbing check only).[/]"
    )


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to index (walked recursively).")],
    collection: CollectionOption = "default",
    profile: ProfileOption = None,
    password_file: Annotated[
        Optional[Path],
        typer.Option(
            "--password-file",
            help="Passwords for encrypted PDFs: one rule a line, PATTERN PASSWORD (a pattern without / matches the "
            "file name, one with / the absolute path; every matching rule is tried in order; # starts a comment). "
            "The passwords are never printed, logged or stored.",
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Load again the files that failed before. Without it a failed file is tried again only when it "
            "changed, or when mmrag's ingestion (its code or a PDF or image decoder) did since it failed.",
        ),
    ] = False,
    reembed: Annotated[
        bool,
        typer.Option(
            "--reembed",
            help="The configured model of a retriever changed since the collection was indexed: delete that "
            "retriever's vectors and embed every page again with the new model, from the stored page images and "
            "text (no file is read again). Without it such a collection stops the job with an error naming both.",
        ),
    ] = False,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            metavar="auto|ADDRESS",
            help="Run the job on a Ray cluster: decode/render/OCR as Ray tasks, the models in Ray actors (GPU ones "
            "where the cluster has GPUs), SQL and the stores written here. `auto`: the cluster RAY_ADDRESS or `ray "
            "start` on this host names, else a local one; or an address (ray://head:10001). Every node must see the "
            "corpus and the storage directory (MMRAG_SHARED_DIR) at the same paths. Settings: MMRAG_RAY__*.",
        ),
    ] = None,
) -> None:
    """Index images and PDFs; re-running resumes an interrupted job and skips unchanged files."""
    from mmrag import ConfigError, build_services, run_index, start_worker_server
    from mmrag.ingest.cleanup import use_process_temp_dir
    from mmrag.ingest.passwords import PasswordBook

    passwords = None
    if password_file is not None:
        try:  # before any work: a bad file stops here
            passwords = PasswordBook.read(password_file)
        except ConfigError as exc:  # its message names the file and the line, never a line's text
            raise typer.BadParameter(str(exc), param_hint="--password-file") from None
    settings = _settings(profile)
    if ray is not None:
        settings.ray.address = ray
    # Before the models' libraries are imported: what they write to a temporary directory goes into one of this
    # process's, which the next job removes if this one is killed.
    use_process_temp_dir()
    services = build_services(settings)
    if settings.ray.address is None:  # on Ray the cluster's tasks load the files: no local workers
        start_worker_server(services.settings)  # its torch import overlaps with the model loading in run_index
    try:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[pages]} pages · {task.fields[rate]:.1f} pages/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console, transient=False) as bar:
            report = run_index(
                services, paths, collection=collection, progress=_RichProgress(bar), passwords=passwords,
                retry_failed=retry_failed, reembed=reembed,
            )
        failed_pages = _job_failed_pages(services, report.job_id) if report.counts["failed_pages"] else []
    finally:
        services.close()
    if report.meaningless:
        _meaningless_warning()
    if report.resumed:
        console.print(f"resumed job {report.job_id}")
    if any(report.recovered.values()):
        console.print(f"recovered after an interrupted run: {report.recovered}")
    table = Table(title=f"job {report.job_id} · collection {report.collection!r}")
    for column in ("indexed", "unchanged", "duplicate", "failed", "pages", "failed pages", "no text", "seconds",
                   "pages/s"):
        table.add_column(column, justify="right")
    c = report.counts
    # Files and pages over the whole job (a resumed job's earlier runs included); time and rate are this run's.
    table.add_row(
        str(c["indexed"]), str(c["unchanged"]), str(c["duplicate"]), str(c["failed"]), str(c["pages"]),
        str(c["failed_pages"]), str(c["pages_without_text"]), f"{report.seconds:.1f}", f"{report.pages_per_second:.2f}",
    )
    console.print(table)
    if report.resumed and report.pages_indexed != c["pages"]:
        console.print(f"this run indexed {report.pages_indexed} of the job's {c['pages']} pages "
                      f"({report.pages_per_second:.2f} pages/s)")
    console.print(f"retrievers on: {', '.join(report.retrievers_on) or 'none'}")
    for name, reason in report.retrievers_off.items():
        console.print(f"retriever off: {name}: {reason}", style="yellow")
    _print_failures(report.failures[:SHOWN], c["failed"])
    _print_failed_pages(failed_pages, c["failed_pages"])


def _job_failed_pages(services, job_id: int) -> list[tuple[str, int, str]]:  # noqa: ANN001 - Services, lazily
    from mmrag import job_status

    return job_status(services, job_id, None, items_limit=0, failures_limit=0, failed_pages_limit=SHOWN).failed_pages


def _print_models(settings: Settings, indexed: dict[tuple[str, str], list[tuple[str, int, int]]]) -> None:
    """The model each retriever loads and why that one, then the models each collection's vectors were made with
    (a collection is queried with the model it was indexed with: `mmrag index --reembed` moves it to another)."""
    from mmrag.embedders import model_choices

    console.print("models:")
    for name, choice in model_choices(settings.embedders).items():
        console.print(f"  {name}: {choice.model} ({choice.why})")
    for (collection, retriever), models in sorted(indexed.items()):
        made = ", ".join(f"{model} (dim {dim}, {pages} pages)" for model, dim, pages in models)
        console.print(f"  collection {collection!r} {retriever} vectors: {made}")


def _print_failures(failures: list[tuple[str, str]], total: int) -> None:
    """The first failed files (path, reason) of `total`."""
    if not failures:
        return
    table = Table(title=f"failed files ({total})")
    table.add_column("path", overflow="fold")
    table.add_column("reason")
    for path, reason in failures:
        table.add_row(path, reason.removeprefix(f"{path}: "))
    console.print(table)
    if total > len(failures):
        console.print(f"and {total - len(failures)} more failed files")


def _print_failed_pages(failed_pages: list[tuple[str, int, str]], total: int) -> None:
    """The first pages (path, page number, reason) of `total` that indexed documents could not have."""
    if not failed_pages:
        return
    table = Table(title=f"failed pages ({total}): the documents' other pages are indexed")
    table.add_column("path", overflow="fold")
    table.add_column("page", justify="right")
    table.add_column("reason")
    for path, page_number, reason in failed_pages:
        table.add_row(path, str(page_number), reason.removeprefix(f"page {page_number}: "))
    console.print(table)
    if total > len(failed_pages):
        console.print(f"and {total - len(failed_pages)} more failed pages")


def _print_duplicates(report) -> None:  # noqa: ANN001 - mmrag.DuplicatesReport, imported lazily
    """A collection's near-duplicate groups: a summary line, then its largest groups page by page."""
    console.print(
        f"near-duplicates in {report.collection} (clip cosine >= {report.threshold:g}): {report.groups} groups, "
        f"{report.pages_in_groups} pages, of {report.compared} compared"
        + (f" ({report.without_vector} pages have no clip vector)" if report.without_vector else "")
    )
    if not report.largest:
        return
    table = Table(title=f"largest near-duplicate groups of {report.collection}")
    for column, justify in (("group", "right"), ("page", "right"), ("path", "left"), ("similarity", "right")):
        table.add_column(column, justify=justify, overflow="fold" if column == "path" else None)
    for number, group in enumerate(report.largest, 1):
        for page in group.pages:
            where = page.path if page.page_number == 1 else f"{page.path} p.{page.page_number}"
            table.add_row(str(number), str(page.page_id), where, f"{page.similarity:.3f}")
    console.print(table)
    if report.groups > len(report.largest):
        console.print(f"and {report.groups - len(report.largest)} more groups")


@app.command()
def status(
    job: Annotated[Optional[int], typer.Argument(help="Job id (default: the latest).")] = None,
    duplicates: Annotated[
        bool, typer.Option("--duplicates", help="Also group each collection's near-duplicate photos and pages by "
                           "their CLIP vectors (loads the models) and list the largest groups.")
    ] = False,
    threshold: Annotated[
        Optional[float], typer.Option("--threshold", min=0.0, max=1.0, help="--duplicates: the least cosine "
                                      "similarity (default: MMRAG_RETRIEVAL__NEAR_DUPLICATE_THRESHOLD).")
    ] = None,
) -> None:
    """Show a job's state, counts, failed files and failed pages, and the size of each collection."""
    from mmrag import collection_names, index_sizes, indexed_models, job_status, latest_job_status

    services = _services()
    try:
        limits = {"items_limit": 0, "failures_limit": SHOWN, "failed_pages_limit": SHOWN}
        found = job_status(services, job, None, **limits) if job is not None else latest_job_status(services, **limits)
        if found is not None:
            finished = found.finished_at or "-"
            console.print(f"job {found.id}: {found.state} · started {found.started_at} · finished {finished}")
            console.print("  " + " · ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in found.counts.items() if k != "pending" or v
            ))
            console.print(f"  retrievers on: {', '.join(found.retrievers_on) or 'none'}")
            for name, reason in found.retrievers_off.items():
                console.print(f"  retriever off: {name}: {reason}", style="yellow")
            if found.error:
                console.print(f"  error: {found.error}", style="red")
            _print_failures(found.failures, found.counts["failed"])
            _print_failed_pages(found.failed_pages, found.counts["failed_pages"])
        else:
            console.print("no jobs yet")
        table = Table(title="collections")
        for column in ("collection", "indexed", "failed", "deleted", "pages", "failed pages", "no text"):
            table.add_column(column, justify="right")
        sizes = index_sizes(services)
        for name in collection_names(services):
            table.add_row(
                name, *(str(sizes.documents.get((name, status), 0)) for status in ("indexed", "failed", "deleted")),
                str(sizes.pages.get(name, 0)), str(sizes.failed_pages.get(name, 0)),
                str(sizes.pages_without_text.get(name, 0)),
            )
        console.print(table)
        backend, problem = services.vector_backend()
        console.print(f"vectors: {backend}")
        if problem is not None:
            console.print(f"  unavailable: {problem}", style="red")
        _print_models(services.settings, indexed_models(services))
        if duplicates:
            from mmrag import near_duplicate_groups

            for name in collection_names(services):
                _print_duplicates(near_duplicate_groups(services, name, threshold=threshold, largest=SHOWN))
    finally:
        services.close()


@app.command()
def delete(
    document: Annotated[Optional[list[int]], typer.Option("--document", "-d", help="Document id.")] = None,
    path: Annotated[Optional[list[Path]], typer.Option("--path", "-p", help="A path the document was seen at.")] = None,
    collection: CollectionOption = "default",
    profile: ProfileOption = None,
) -> None:
    """Delete documents (their pages and vectors) by id or by path."""
    from mmrag import delete_documents

    if not document and not path:
        raise typer.BadParameter("give --document ID or --path PATH")
    services = _services(profile)
    try:
        deleted = delete_documents(
            services, collection, document_ids=document or [], paths=[str(p) for p in path or []]
        )
    finally:
        services.close()
    console.print(f"deleted documents: {', '.join(map(str, deleted))}")


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="Text query.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Image query (image→image via CLIP).")] = None,
    k: Annotated[int, typer.Option("-k", help="How many hits.")] = 10,
    retriever: Annotated[
        Optional[list[str]],
        typer.Option("--retriever", "-r", help=f"Only these retrievers: {', '.join(RETRIEVERS.names())} (default all)."),
    ] = None,
    date_from: Annotated[
        Optional[datetime], typer.Option("--date-from", formats=["%Y-%m-%d"], help="Only pages holding a date on or "
                                         "after this one (YYYY-MM-DD), as their text prints it.")
    ] = None,
    date_to: Annotated[
        Optional[datetime], typer.Option("--date-to", formats=["%Y-%m-%d"], help="... on or before this one.")
    ] = None,
    tag: Annotated[
        Optional[list[str]],
        typer.Option("--tag", "-t", help="Only photos holding this zero-shot tag (repeat: all of them)."),
    ] = None,
    collection: CollectionOption = "default",
    profile: ProfileOption = None,
) -> None:
    """Search a collection by text or by image; prints rank, score, path and page."""
    from mmrag import load_image
    from mmrag import search as run_search
    from mmrag.types import SearchFilters

    if (query is None) == (image is None):
        raise typer.BadParameter("give a text QUERY or --image FILE (not both)")
    if date_from is not None and date_to is not None and date_from > date_to:
        raise typer.BadParameter("--date-from is after --date-to", param_hint="--date-from")
    filters = SearchFilters(date_from=date_from.date() if date_from else None,
                            date_to=date_to.date() if date_to else None, tags=tuple(tag or ()))
    services = _services(profile)
    try:
        settings = services.settings
        picture = load_image(image, max_pixels=settings.ingest.max_pixels) if image is not None else None
        results = run_search(services, collection, text=query, image=picture, k=k, retrievers=retriever,
                             filters=filters)
        meaningless = services.embedders(()).meaningless
    finally:
        services.close()
    if meaningless:
        _meaningless_warning()
    room = max(PATH_ROOM, console.width * 2 // 5)
    shown = [_shown_path(result.path, result.name, room) for result in results]
    table = Table(title=f"{query!r}" if query is not None else f"image {image}")
    table.add_column("#")
    table.add_column("score")
    # The path keeps its room (shortened to it in the middle) and the scores wrap instead: never cut at its end.
    table.add_column("path", no_wrap=True)
    table.add_column("page")
    table.add_column("retrievers", overflow="fold")
    tagged = any(result.tags for result in results)  # a column only where photos have tags
    if tagged:
        table.add_column("tags", overflow="fold")
    for rank, (result, path) in enumerate(zip(results, shown, strict=True), start=1):
        per = " ".join(f"{name}={value:.3f}" for name, value in sorted(result.scores.items()))
        tags = [", ".join(f"{t.name} {t.score:.2f}" for t in result.tags)] if tagged else []
        table.add_row(str(rank), f"{result.score:.4f}", path, str(result.page_number), per, *tags)
    console.print(table)
    if not results:
        console.print("no hits")


@app.command("tag")
def tag_photos(
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="A labels file (one a line, '#' comments): the collection's "
                                     "list from now on, for this re-tag and its later jobs.")
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the settings' list (MMRAG_TAGS__LABELS_FILE or "
                                        "the default one).")] = False,
    collection: CollectionOption = "default",
    profile: ProfileOption = None,
) -> None:
    """Tag a collection's photos again (zero-shot, CLIP) from their stored vectors; prints the tags' counts."""
    from mmrag import read_labels, retag, tag_counts

    if labels is not None and reset:
        raise typer.BadParameter("give --labels FILE or --reset, not both")
    chosen = read_labels(labels) if labels is not None else None
    services = _services(profile)
    try:
        report = retag(services, collection, chosen, reset=reset)
        counts = tag_counts(services, [collection], limit=SHOWN)
    finally:
        services.close()
    if report.meaningless:
        _meaningless_warning()
    console.print(f"{collection}: {report.photos} photos tagged with {report.labels} labels from their "
                  f"{report.source}; {report.tagged} kept at least one tag")
    table = Table(title="tags")
    table.add_column("tag")
    table.add_column("photos", justify="right")
    for count in counts:
        table.add_row(count.tag, str(count.count))
    console.print(table)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="Interface (default MMRAG_API__HOST).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port (default MMRAG_API__PORT, 8080).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Run the query service (HTTP API): models load at start; /docs has the interactive API reference."""
    import uvicorn

    settings = Settings()
    # By import string with factory=True, so uvicorn builds the app (indexer/ never imports api/). One process on
    # purpose: the app runs index jobs one at a time, which a second worker process would not know about.
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.api.host,
        port=port or settings.api.port,
        log_level=log_level,
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[int, typer.Option("-k", help="Pages retrieved and shown to the answerer.")] = 5,
    collection: Annotated[
        Optional[list[str]], typer.Option("--collection", "-c", help="Collection (repeatable; default: default).")
    ] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print the answer as it is written.")] = True,
    profile: ProfileOption = None,
) -> None:
    """Answer a question from the indexed pages, citing them (the answerer comes from MMRAG_ANSWERER__*)."""
    from mmrag import build_answerer_or_extractive

    services = _services(profile)
    try:
        answerer, off = build_answerer_or_extractive(services.settings.answerer)
        if off:
            err_console.print(f"[yellow]{off}[/]")
        collections = collection or ["default"]
        if stream:
            pages: list = []
            for event in mmrag.ask_stream(services, answerer, question, collections, k=k):
                if isinstance(event, mmrag.Retrieved):
                    pages = event.pages
                elif isinstance(event, mmrag.Token):
                    console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
                else:
                    answer = event.answer  # Answered comes last, always
            console.print()
        else:
            answer, pages = mmrag.ask(services, answerer, question, collections, k=k)
            console.print(answer.text, markup=False, highlight=False)
        meaningless = services.embedders(()).meaningless
    finally:
        services.close()
    if meaningless:
        _meaningless_warning()
    if not answer.supported:
        console.print(f"not supported by the {len(pages)} pages retrieved ({answer.answerer})", style="yellow")
        raise typer.Exit(1)
    table = Table(title=f"citations · answerer {answer.answerer}")
    for column in ("#", "path", "page", "score", "quote", "regions (x0 y0 x1 y1, 0-1 of the page)"):
        table.add_column(column, overflow="fold")
    room = max(PATH_ROOM, console.width // 3)
    for number, citation in enumerate(answer.citations, start=1):
        table.add_row(str(number), shorten_middle(citation.path, room), str(citation.page_number), f"{citation.score:.4f}", citation.quote,
                      "\n".join(f"{r.box[0]:.3f} {r.box[1]:.3f} {r.box[2]:.3f} {r.box[3]:.3f} {r.source} {r.score:.2f}"
                                for r in citation.regions))
    console.print(table)


app.command("eval", help="Measure retrieval and answers on a question set, or on one generated from your pages.")(
    eval_command
)

app.add_typer(models_app, name="models")
app.command("describe")(describe_command)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # bm25s sets its own logger to DEBUG at import; filter at the handler so that cannot reach the terminal
        handler.setLevel(logging.WARNING)
    try:
        app()
    except MmragError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
