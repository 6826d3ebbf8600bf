"""kill -9 a real indexing process at several moments; re-running finishes with every file indexed exactly once,
and removes what the killed runs left (their temporary directories, their worker pools' semaphores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from mmrag.config import DatabaseSettings, EmbedderSettings, Settings
from mmrag.ingest import cleanup
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from mmrag.store.models import Document, DocumentPath, JobItem, Page, PageEmbedding
from tests.factories import make_image, make_pdf
from tests.leftovers import backdate, mapped, semaphores

ROOT = Path(__file__).resolve().parents[1]


def _indexed_documents(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Document).where(Document.status == "indexed")) or 0
    except Exception:  # noqa: BLE001 - the schema may not exist yet while the child starts
        return 0
    finally:
        engine.dispose()


def _start(corpus: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "index", str(corpus)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so kill -9 takes the worker processes too
    )


def _kill_when(process: subprocess.Popen[bytes], url: str, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"indexer ended before the kill: {process.stderr.read().decode()[-2000:]}")
        done = _indexed_documents(url)
        if done >= at_least:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return done
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("indexer made no progress before the timeout")


@contextmanager
def _watching_ocr_files(system_temp: Path, job_dirs: Path) -> Iterator[tuple[set[str], set[str]]]:
    """The names of pytesseract's files seen in the system's temporary directory and in the jobs' directories, looked
    for every few milliseconds while the block runs (each lives as long as one page's OCR)."""
    in_system, in_jobs = set(), set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            in_system.update(p.name for p in system_temp.glob("tess_*"))
            in_jobs.update(p.name for p in job_dirs.glob("*/tess_*"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield in_system, in_jobs
    finally:
        stop.set()
        watcher.join()


def assert_each_file_indexed_once(session: Session, files: list[Path]) -> None:
    """After kills and a resume: every file is one document, at its own path, indexed."""
    paths = session.execute(select(DocumentPath.path, DocumentPath.document_id)).all()
    assert sorted(p for p, _ in paths) == sorted(str(f.resolve()) for f in files)
    assert len({d for _, d in paths}) == len(files)
    assert session.scalars(select(Document.status)).all() == ["indexed"] * len(files)


def crash_corpus_page_ids(session: Session) -> set[int]:
    """After kills and a resume: the ids of the crash corpus's pages, each file with all its pages and no more
    (24 photos of one page, 4 PDFs of 3)."""
    page_ids = set(session.scalars(select(Page.id)))
    assert len(page_ids) == 24 + 4 * 3
    per_doc = session.execute(select(Page.document_id, func.count()).group_by(Page.document_id)).all()
    assert sorted(n for _, n in per_doc) == sorted([1] * 24 + [3] * 4)
    return page_ids


def make_crash_corpus(corpus: Path) -> list[Path]:
    """24 images and 4 PDFs of 3 pages: 28 files, 36 pages, enough batches for three kills to land mid-job."""
    files = [make_image(corpus / "img" / f"{i:02d}.png", i) for i in range(24)]
    return files + [make_pdf(corpus / "pdf" / f"{i}.pdf", [f"pdf {i} page {n}" for n in range(3)]) for i in range(4)]


@pytest.mark.slow
def test_kill_9_then_resume_indexes_every_file_exactly_once(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    files = make_crash_corpus(corpus)
    # the indexer's system temporary directory, where what it leaves shows; short, as a system's is (a socket's path
    # one level below it must stay under 108 bytes: tmp_path is too deep)
    system_temp = Path(tempfile.mkdtemp(prefix="sys-"))
    job_dirs = tmp_path / "data" / cleanup.TEMP_DIR_NAME
    env = {
        **os.environ,
        "MMRAG_DATA_DIR": str(tmp_path / "data"),
        "MMRAG_DATABASE__URL": database_url,
        "MMRAG_EMBEDDERS__PROFILE": "tiny-random",
        "MMRAG_INGEST__WORKERS": "1",  # real worker processes and queues
        "MMRAG_INGEST__OCR": "always",  # pytesseract's temporary files on every page
        "MMRAG_BATCH_PAGES": "2",
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(system_temp),
    }
    semaphores_before = semaphores()
    with _watching_ocr_files(system_temp, job_dirs) as (ocr_files_in_system_temp, ocr_files_in_job_dirs):
        # Kill after the first commit, mid-way and near the end; each kill lands wherever the process happens to be.
        for at_least in (1, 9, 20):
            seen = _kill_when(_start(corpus, env), database_url, at_least)
            assert seen < len(files), "the kill came too late to test anything"

        # What the kills left: the last run's temporary directory (each run's start removed its predecessor's), and
        # the worker pools' semaphores, mapped by no one.
        assert len(list(job_dirs.iterdir())) == 1
        # and in the system temp, the killed process's own directory (torch's files, the fork server's socket)
        assert [p.name.startswith(cleanup.PROCESS_DIR_PREFIX) for p in system_temp.iterdir()] == [True]
        left = {path for path in semaphores() - semaphores_before if not mapped(path)}
        assert len(left) >= 3  # a pool has five (its queues' locks and semaphore)
        # A job removes a semaphore no process maps only once it is a minute old (an hour while a process of this
        # user cannot be read, as a sandbox's init can be): this resume comes seconds after the kill.
        for path in left:
            backdate(path, cleanup.UNREADABLE_MAX_AGE_S + 60)
        final = _start(corpus, env)
        _, stderr = final.communicate(timeout=300)
        assert final.returncode == 0, stderr.decode()[-3000:]

    assert {path for path in left if path.exists() and not mapped(path)} == set()
    assert list(job_dirs.iterdir()) == []
    assert ocr_files_in_system_temp == set() and list(system_temp.glob("tess_*")) == []
    # nor anything else: the processes' own directories went with them (at exit, or by the next job's start)
    assert list(system_temp.iterdir()) == []
    system_temp.rmdir()
    assert ocr_files_in_job_dirs, "no OCR file was seen at all: the check above proves nothing"

    settings = Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
    )
    services = build_services(settings, embedders=tiny_embedders)
    try:
        with services.sessions() as session:
            assert_each_file_indexed_once(session, files)
            page_ids = crash_corpus_page_ids(session)
            item_states = session.scalars(select(JobItem.state).where(JobItem.job_id == 1)).all()
            assert sorted(set(item_states)) == ["indexed"] and len(item_states) == len(files)
            # Every run took up the files still pending: the last ones were attempted by all four runs.
            attempts = session.scalars(select(JobItem.attempts).where(JobItem.job_id == 1)).all()
            assert min(attempts) >= 1 and max(attempts) == 4
            for retriever in ("clip", "colpali", "text"):
                vouched = session.scalars(select(PageEmbedding.page_id).where(PageEmbedding.retriever == retriever))
                assert set(vouched) == page_ids or retriever == "text"
        for name, store in services.collections.stores(1).by_retriever().items():
            ids = [int(i) for i in store.ids()]
            assert len(ids) == len(set(ids)), f"duplicate vectors in {name}"
            if name == "text":
                assert set(ids) <= page_ids
            else:
                assert set(ids) == page_ids, name
    finally:
        services.close()
