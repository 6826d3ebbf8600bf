"""`mmrag ask` from the command line, and acceptance 5: the README's `mmrag serve` + curl recipe, run as written."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.cli import app
from tests.conftest import cli_environment
from tests.api.conftest import INVOICE_PAGES
from tests.factories import make_image, make_pdf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return cli_environment(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'mmrag.db'}")


def test_cli_ask_answers_with_citations_or_says_it_cannot(cli_env: Path) -> None:
    runner = CliRunner()
    make_pdf(cli_env / "corpus" / "invoice.pdf", INVOICE_PAGES)
    assert runner.invoke(app, ["index", str(cli_env / "corpus")]).exit_code == 0

    answered = runner.invoke(app, ["ask", "What is the total due?", "-k", "2"])
    assert answered.exit_code == 0, answered.output
    assert "Total due: 1,250.00 EUR [1]" in answered.output
    assert "citations · answerer extractive" in answered.output and "invoice.pdf" in answered.output
    assert "MEANINGLESS" in answered.output  # the tiny-random profile says so

    plain = runner.invoke(app, ["ask", "What is the total due?", "--no-stream"])
    assert plain.exit_code == 0 and "Total due: 1,250.00 EUR [1]" in plain.output

    unanswered = runner.invoke(app, ["ask", "Who won the 1954 world cup?"])
    assert unanswered.exit_code == 1
    assert "The indexed pages do not answer this." in unanswered.output and "not supported" in unanswered.output

    missing = runner.invoke(app, ["ask", "anything", "--collection", "nope"])
    assert missing.exit_code != 0


def readme_recipe() -> str:
    section = (ROOT / "README.md").read_text()
    recipe = section.split("### Try it with curl", 1)[1]
    return re.search(r"```bash\n(.*?)```", recipe, re.DOTALL).group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_readme_serve_and_curl_recipe_works_as_written(tmp_path: Path) -> None:
    """The recipe runs in a fresh folder holding invoice.pdf and photo.png; only the port is chosen by the test."""
    make_pdf(tmp_path / "invoice.pdf", INVOICE_PAGES)
    make_image(tmp_path / "photo.png", 5)
    os.symlink(ROOT / ".venv", tmp_path / ".venv")  # the recipe runs from the repository: .venv/bin/mmrag
    env = {key: value for key, value in os.environ.items() if not key.startswith("MMRAG_")}
    env["MMRAG_API__PORT"] = str(free_port())
    script = "set -euo pipefail\n" + readme_recipe() + "wait\n"
    process = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the recipe's own server included
    assert process.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert '"status":"ready"' in stdout
    assert '"state":"done"' in stdout and '"failures":[]' in stdout
    assert stdout.count('"hits":[{') == 2  # text and image search both found pages
    assert '"supported":true' in stdout and "Total due: 1,250.00 EUR" in stdout
    assert "event: retrieved" in stdout and "event: token" in stdout and "event: answer" in stdout
    assert '"total":2' in stdout and '{"document_id":1,"status":"deleted"}' in stdout
    assert (tmp_path / "thumbnail.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG
