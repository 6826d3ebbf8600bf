"""Acceptance 3: a schemathesis run against the app's OpenAPI schema (all its phases: coverage, fuzzing, stateful;
valid and invalid requests), the app served by uvicorn over a small indexed collection with API keys off. No
response may be a server error (5xx) or break the schema the API documents. SQLite and PostgreSQL.

schemathesis runs as its CLI: its pytest plugin does not work with pytest 9 (it writes Item._nodeid).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from tests.api.conftest import live_server, make_settings
from tests.factories import make_image, make_pdf

SEED = 20260101  # fixed, so a failure here reproduces; drop --seed to explore
MAX_EXAMPLES = 25  # per operation and phase


def test_no_server_error_and_no_schema_violation(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders, answerer: ExtractiveAnswerer
) -> None:
    root = tmp_path / "corpus"
    make_pdf(root / "invoice.pdf", ["Invoice 17\nTotal due: 1,250.00 EUR", "Delivery to Bristol"])
    make_image(root / "photo.png", 4)
    services = build_services(
        make_settings(tmp_path / "data", database_url, job_roots={"corpus": root}), embedders=tiny_embedders
    )
    try:
        run_index(services, [root])
        with live_server(create_app(services=services, answerer=answerer)) as base_url:
            run = subprocess.run(
                [
                    str(Path(sys.executable).with_name("schemathesis")), "run", f"{base_url}/openapi.json",
                    "--checks", "not_a_server_error,response_schema_conformance",
                    "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
                    "--no-color", "--generation-database", "none",
                    # Captions need a VLM answerer; under this run's extractive one, 503 is the documented answer
                    # (tests/api/test_describe.py covers the route with a chat-completions server).
                    "--exclude-path", "/v1/pages/{page_id}/describe",
                ],
                cwd=tmp_path, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
    finally:
        services.close()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout and " failed" not in run.stdout.split("SUMMARY")[-1]
