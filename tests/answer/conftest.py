"""Fixtures for the answerer tests: retrieved pages rendered from a real PDF, tiny VLM checkpoints, an offline hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.config import IngestSettings
from mmrag.ingest import describe, iter_pages
from mmrag.types import RetrievedPage
from tests.embedders.conftest import hf_cache, offline_hub  # noqa: F401 - importing fixtures registers them here
from tests.ingest.samples import text_pdf

from .samples import PAGE_TEXTS, save_tiny_vlm


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> list[RetrievedPage]:
    """A receipt, an invoice and a hotel bill: a real PDF rendered and text-extracted by the real ingest code,
    each page's image stored as the pipeline stores it, in retrieval order."""
    root = tmp_path_factory.mktemp("corpus")
    pdf = text_pdf(root / "bills.pdf", list(PAGE_TEXTS))  # A4: no receipt line wraps
    retrieved = []
    for rank, page in enumerate(iter_pages(describe(pdf), IngestSettings(ocr="never", dpi=72))):
        image_path = root / f"page-{page.page_number}.png"
        page.image.save(image_path)
        retrieved.append(
            RetrievedPage(
                page_id=100 + page.page_number,
                document_id=7,
                page_number=page.page_number,
                path=str(pdf),
                score=round(1.0 - rank / 10, 2),
                text=page.text,
                image_path=image_path,
            )
        )
    assert [page.text for page in retrieved] == list(PAGE_TEXTS)  # the text layer kept every line
    return retrieved


@pytest.fixture(scope="session", params=["qwen2_vl", "idefics3"])
def tiny_vlm_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init generative VLM saved as a transformers checkpoint, one per supported family."""
    return save_tiny_vlm(request.param, tmp_path_factory.mktemp("checkpoints") / f"tiny-{request.param}")
