"""The `mmrag` CLI as a user runs it: index (progress + summary), re-run, status, search by text and image, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.cli import app
from tests.conftest import cli_environment
from tests.factories import add_bad_files, make_corpus


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    return cli_environment(monkeypatch, tmp_path, database_url)


def test_cli_index_status_search_delete(cli_env: Path) -> None:
    runner = CliRunner()
    corpus = cli_env / "corpus"
    files = make_corpus(corpus, images=2, pdfs=1)
    add_bad_files(corpus)

    first = runner.invoke(app, ["index", str(corpus)])
    assert first.exit_code == 0, first.output
    assert "MEANINGLESS" in first.output  # the tiny-random profile says so
    assert "failed files" in first.output and "empty" in first.output
    row = next(line for line in first.output.splitlines() if line.strip().startswith("│") and "3" in line)
    assert row.split("│")[1].strip() == "3"  # indexed

    again = runner.invoke(app, ["index", str(corpus)])
    assert again.exit_code == 0, again.output
    cells = [line.split("│") for line in again.output.splitlines() if line.count("│") >= 6]
    assert [c.strip() for c in cells[-1][1:4]] == ["0", "7", "0"]  # indexed, unchanged, failed

    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "job 2: done" in status.output

    text = runner.invoke(app, ["search", "invoice number 1001", "-k", "3", "--retriever", "lexical"])
    assert text.exit_code == 0, text.output
    assert "doc0.pdf" in text.output

    image = runner.invoke(app, ["search", "--image", str(files["img1"]), "-k", "1"])
    assert image.exit_code == 0, image.output
    assert "img1.png" in image.output

    gone = runner.invoke(app, ["delete", "--path", str(files["pdf0"])])
    assert gone.exit_code == 0, gone.output
    after = runner.invoke(app, ["search", "invoice number 1001", "-k", "10"])
    assert "doc0.pdf" not in after.output


def test_cli_reports_errors_without_a_traceback(cli_env: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(cli_env / "does-not-exist")])
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception) or "does not exist" in result.output
