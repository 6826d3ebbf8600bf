"""The `mmrag` CLI as a user runs it: index (progress + summary), re-run, status, search by text and image, delete;
encrypted PDFs opened with a password file, failed files loaded again, failed files and pages in the status."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from indexer.cli import app
from mmrag.store.db import build_engine
from tests.conftest import cli_environment
from tests.factories import add_bad_files, make_corpus, make_pdf
from tests.partial_pdfs import make_encrypted_pdf, make_pdf_with_failing_pages, sql_text


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
    assert "vectors: faiss files in" in status.output and "unavailable" not in status.output

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


SECRET = "correct horse 42"  # the user password (blanks and all: the rest of a rule's line is its password)
WRONG = "tr0ub4dor-wrong"


def _no_secret(secret: str, *texts: str, records: list[logging.LogRecord], engine: Engine) -> None:
    for text in texts:
        assert secret not in text
    for record in records:
        assert secret not in record.getMessage() and secret not in (record.exc_text or "")
    assert secret not in sql_text(engine)


def test_cli_password_file_opens_encrypted_pdfs_and_retry_failed_loads_failed_files_again(
    cli_env: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    corpus = cli_env / "corpus"
    make_encrypted_pdf(corpus / "locked.pdf", ["sealed ledger 4711"], SECRET, "owner-only-pw")
    make_pdf(corpus / "open.pdf", ["an ordinary page"])
    right = cli_env / "right.txt"
    right.write_text(f"# the ledger\n*.pdf   {SECRET}\n")
    wrong = cli_env / "wrong.txt"
    wrong.write_text(f'"{corpus}/*"  {WRONG}\n')
    outputs = []

    def index(*options: str) -> list[str]:
        result = runner.invoke(app, ["index", str(corpus), *options])
        assert result.exit_code == 0, result.output
        outputs.append(result.output + result.stderr)
        cells = [line.split("│") for line in result.output.splitlines() if line.count("│") >= 8]
        return [c.strip() for c in cells[-1][1:5]]  # indexed, unchanged, duplicate, failed

    assert index() == ["1", "0", "0", "1"]
    assert "needs a password to open" in outputs[-1]
    # The same file, failed under this very ingestion: settled, unless the job has passwords for it
    assert index() == ["0", "2", "0", "0"]
    assert index("--password-file", str(wrong)) == ["0", "1", "0", "1"]
    assert "the password given for it did not open it" in outputs[-1]
    assert index() == ["0", "2", "0", "0"]
    assert index("--retry-failed") == ["0", "1", "0", "1"]  # --retry-failed loads it again, whatever it failed for
    assert index("--password-file", str(right)) == ["1", "1", "0", "0"]

    found = runner.invoke(app, ["search", "sealed ledger 4711", "--retriever", "lexical", "-k", "1"])
    assert found.exit_code == 0 and "locked.pdf" in found.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "failed files" not in status.output
    engine = build_engine(database_url)
    try:
        for secret in (SECRET, WRONG):
            _no_secret(secret, *outputs, found.output, status.output, records=caplog.records, engine=engine)
    finally:
        engine.dispose()


def test_cli_a_bad_password_file_stops_before_any_work(cli_env: Path, database_url: str) -> None:
    runner = CliRunner()
    corpus = cli_env / "corpus"
    make_pdf(corpus / "open.pdf", ["an ordinary page"])
    bad = cli_env / "bad.txt"
    bad.write_text("# fine\n*.pdf good-one\nlonely-secret-token\n")  # line 3 has no password

    def said(result: Result) -> str:  # the error box's text, unwrapped
        return " ".join(result.output.replace("│", " ").split())

    refused = runner.invoke(app, ["index", str(corpus), "--password-file", str(bad)])
    assert refused.exit_code == 2
    assert "Invalid value for --password-file" in said(refused) and "line 3: expected a pattern" in said(refused)
    assert "lonely-secret-token" not in refused.output and "good-one" not in refused.output
    missing = runner.invoke(app, ["index", str(corpus), "--password-file", str(cli_env / "nope.txt")])
    assert missing.exit_code == 2 and "cannot read the password file" in said(missing)
    assert "no jobs yet" in runner.invoke(app, ["status"]).output  # nothing was indexed, no job was made
    help_text = runner.invoke(app, ["index", "--help"]).output
    assert "--password-file" in help_text and "--retry-failed" in help_text


def test_cli_status_lists_failed_files_and_failed_pages_bounded(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer import cli

    monkeypatch.setattr(cli, "SHOWN", 2)  # the lists stop at two; the rest are counted
    runner = CliRunner()
    corpus = cli_env / "corpus"
    partial = make_pdf_with_failing_pages(corpus / "partial.pdf", failing=3)
    add_bad_files(corpus)  # four files that fail whole

    indexed = runner.invoke(app, ["index", str(corpus)])
    assert indexed.exit_code == 0, indexed.output
    assert "failed pages (3)" in indexed.output and "and 1 more failed pages" in indexed.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    out = status.output
    assert "indexed 1 · unchanged 0 · duplicate 0 · failed 4 · pages 1 · failed pages 3" in out
    assert "failed files (4)" in out and "and 2 more failed files" in out
    assert "failed pages (3)" in out and "and 1 more failed pages" in out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if str(partial) in line]
    assert [row[1] for row in rows] == ["2", "3"]  # page numbers, in order
    assert all("over the limit" in row[2] for row in rows)
    collections = [line for line in out.splitlines() if line.count("│") == 8 and "default" in line]
    assert [c.strip() for c in collections[0].split("│")[1:-1]] == ["default", "1", "4", "0", "1", "3", "0"]


def test_cli_search_by_a_date_range(cli_env: Path) -> None:
    runner = CliRunner()
    corpus = cli_env / "corpus"
    make_pdf(corpus / "october.pdf", ["GIN KEE HARDWARE receipt dated 18/10/2017 total 42.35"])
    make_pdf(corpus / "november.pdf", ["GIN KEE HARDWARE receipt 03 Nov 2017 total 17.00"])
    assert runner.invoke(app, ["index", str(corpus)]).exit_code == 0

    def search(*options: str) -> Result:
        return runner.invoke(app, ["search", "gin kee hardware", "-r", "lexical", *options])

    everything, november = search(), search("--date-from", "2017-11-01", "--date-to", "2017-11-30")
    assert "october.pdf" in everything.output and "november.pdf" in everything.output
    assert november.exit_code == 0 and "november.pdf" in november.output and "october.pdf" not in november.output
    backwards = search("--date-from", "2017-12-01", "--date-to", "2017-11-01")
    assert backwards.exit_code == 2 and "--date-from is after --date-to" in backwards.output
    assert search("--date-from", "18/10/2017").exit_code == 2  # not YYYY-MM-DD


def test_cli_status_says_when_the_qdrant_server_is_down(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.api.test_cli import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MMRAG_INDEX__BACKEND", "qdrant")
    monkeypatch.setenv("MMRAG_INDEX__QDRANT__URL", url)
    monkeypatch.setenv("MMRAG_INDEX__QDRANT__TIMEOUT_S", "5")
    status = CliRunner().invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert f"vectors: qdrant server {url}" in status.output and "unavailable" in status.output
    assert "Traceback" not in status.output
    from mmrag.index.qdrant_index import close_clients

    close_clients()


def test_paths_in_tables_keep_their_names() -> None:
    from indexer.cli import shorten_middle

    path = "/home/someone/projects/receipts/data/sroie/img/X51005268408.jpg"
    assert shorten_middle(path, 200) == path
    short = shorten_middle(path, 40)
    assert len(short) <= 40 and short.endswith("/img/X51005268408.jpg") and short.startswith("/home/")
    assert "…" in short
    # a name longer than the room is kept whole
    long_name = "/a/b/" + "n" * 50 + ".pdf"
    assert shorten_middle(long_name, 20).endswith("n" * 50 + ".pdf")


def test_search_hits_in_one_deep_folder_can_be_told_apart(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newcomer's first search on the shared receipts showed ten rows of the same cut prefix."""
    from indexer import cli

    deep = cli_env / "a-rather-long-folder-name" / "with-more-levels" / "and-then-some" / "receipts"
    for i in range(4):
        make_pdf(deep / f"receipt-{i:04d}.pdf", [f"Gin Kee hardware receipt {i} total 12.{i}0"])
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(deep)]).exit_code == 0
    monkeypatch.setattr(cli.console, "width", 100)  # an ordinary terminal
    found = runner.invoke(app, ["search", "gin kee hardware receipt", "-r", "lexical", "-k", "4"])
    assert found.exit_code == 0, found.output
    flat = found.output.replace("│", "").replace("\n", "")
    for i in range(4):
        assert f"receipt-{i:04d}.pdf" in "".join(flat.split()), found.output
