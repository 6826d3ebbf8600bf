"""`mmrag models`: list the configured models (on disk or not), pull them from the hub, verify that they load."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmrag import MmragError, Settings

console = Console()
err_console = Console(stderr=True)

models_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="The models the configuration uses: list them, pull them from the Hugging Face hub, verify they load.",
)

ProfileOption = Annotated[
    Optional[str],
    typer.Option("--profile", help="Embedder profile: default (real weights) or tiny-random (plumbing checks only)."),
]
NamesArgument = Annotated[
    Optional[list[str]],
    typer.Argument(help="Roles (clip, colpali, text, answerer) or configured model ids; none: every configured one."),
]


def _settings(profile: str | None) -> Settings:
    settings = Settings()
    if profile is not None:
        settings.embedders.profile = profile  # type: ignore[assignment]
    return settings


def _fail(error: BaseException) -> typer.Exit:
    # soft_wrap: the error stays one line however narrow the terminal; escape: "[Errno 111]" is not markup.
    err_console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
    return typer.Exit(1)


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return str(size)


def _selected(settings: Settings, names: Sequence[str] | None):  # noqa: ANN202 - list[RequiredModel], lazily
    from mmrag.weights import required_models, select

    models = select(required_models(settings), names or ())
    if not models:
        console.print("no models are configured (every retriever that embeds is disabled, and the answerer needs none)")
    return models


@models_app.command("list")
def list_models(profile: ProfileOption = None) -> None:
    """Each configured model: in the local cache or not, its size on disk, its licence (from its model card)."""
    from mmrag.weights import inspect_model

    try:
        settings = _settings(profile)
        models = _selected(settings, None)
        states = [inspect_model(model) for model in models]
    except MmragError as error:
        raise _fail(error) from None
    table = Table(title=f"models · profile {settings.embedders.profile}")
    for column in ("role", "model", "present", "size", "licence", "where"):
        table.add_column(column, overflow="fold")
    for state in states:
        where = state.model.note if not state.missing and state.model.note else ""
        where = "\n".join(filter(None, [where, *map(str, state.paths), *state.missing]))
        present = "[green]yes[/]" if state.present else "[red]no[/]"
        table.add_row(state.model.role, escape(state.model.model), present, _size(state.size_bytes),
                      escape(state.licence or "-"), escape(where))
    console.print(table)
    if settings.embedders.profile == "tiny-random":
        console.print("profile tiny-random: its CLIP and ColPali models are random-init and built in memory; "
                      "there is nothing to download for them", soft_wrap=True)
    if any(not state.present and state.model.downloadable for state in states):
        console.print("`mmrag models pull` downloads the missing ones (needs network access to the hub)")


@models_app.command("pull")
def pull(names: NamesArgument = None, profile: ProfileOption = None) -> None:
    """Download the configured models (or the NAMES given) into the Hugging Face cache (HF_HOME, HF_ENDPOINT)."""
    from mmrag.weights import inspect_model, pull as pull_model

    try:
        settings = _settings(profile)
        for model in _selected(settings, names):
            state = inspect_model(model)
            if state.present:
                known = ", ".join(filter(None, [model.note, _size(state.size_bytes) if state.paths else ""]))
                said = "is already here" if model.downloadable else "needs no download"
                console.print(f"{model.role}: {escape(model.model)} {said} ({escape(known)})", highlight=False,
                              soft_wrap=True)
                continue
            # A model mmrag cannot fetch (a missing local directory, weights open_clip fetches from a URL) fails
            # here with the reason, as an offline hub does.
            # Printed only once the download starts: offline, the first line a user sees is the error's sentence.
            state = pull_model(model, announce=lambda what, role=model.role: console.print(
                f"{role}: pulling {escape(what)}", highlight=False, soft_wrap=True))
            console.print(f"{model.role}: {escape(model.model)} pulled ({_size(state.size_bytes)}, licence "
                          f"{escape(state.licence or 'not given')})", highlight=False)
    except MmragError as error:
        raise _fail(error) from None


@models_app.command("verify")
def verify(names: NamesArgument = None, profile: ProfileOption = None) -> None:
    """Load each configured model (or the NAMES given) with mmrag's own loader and embed a probe."""
    from mmrag.weights import verify as verify_model

    try:
        settings = _settings(profile)
        models = _selected(settings, names)
    except MmragError as error:
        raise _fail(error) from None
    table = Table(title="verified models")
    for column in ("role", "model", "dim", "load s", "probe s", "probe"):
        table.add_column(column, overflow="fold")
    failures: list[MmragError] = []
    for model in models:
        console.print(f"{model.role}: loading {escape(model.model)}", highlight=False)
        try:
            done = verify_model(settings, model)
        except MmragError as error:
            failures.append(error)
            continue
        probe = done.detail + (" · random-init, meaningless" if done.meaningless else "")
        probe_seconds = "-" if done.probe_seconds is None else f"{done.probe_seconds:.3f}"
        table.add_row(done.role, escape(done.model), str(done.dim or "-"), f"{done.load_seconds:.2f}", probe_seconds,
                      escape(probe))
    if table.row_count:
        console.print(table)
    for error in failures:
        err_console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
    if failures:
        raise typer.Exit(1)
