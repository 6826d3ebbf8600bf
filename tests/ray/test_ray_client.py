"""The compose recipe's path: a head started by `ray start --head` (token auth off, as docker-compose.yml sets it)
and `mmrag index --ray ray://HOST:PORT` through Ray Client from a process that is no node of the cluster; and an
address nobody answers is one clear error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import make_corpus

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def head(tmp_path: Path) -> Iterator[str]:
    """A Ray head in a process group of its own (`ray start --block`), killed with it at the end."""
    client_port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    # Ray's own temporary directory (/tmp/ray): with another (--temp-dir), the client server's per-client process
    # exits at once (Ray 2.60) and every ray:// connection fails.
    process = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={_free_port()}", f"--ray-client-server-port={client_port}",
         "--num-cpus=2", "--include-dashboard=false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the client server listens once the head is up
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", client_port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        # A head this young can refuse a Ray Client connection (its per-client server exits at once; mmrag's connect
        # tries again for it): wait until a plain client connects, so the job below meets a settled head.
        address = f"ray://127.0.0.1:{client_port}"
        probe = f"import ray; ray.init({address!r}); ray.shutdown()"
        for _ in range(6):
            if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0:
                break
            time.sleep(2)
        yield address
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _index(address: str, corpus: Path, data: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MMRAG_DATA_DIR": str(data),
           "MMRAG_EMBEDDERS__PROFILE": "tiny-random", "MMRAG_INGEST__OCR": "never", "PYTHONPATH": str(ROOT),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "indexer.cli", "index", "--ray", address, str(corpus)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_a_job_through_ray_client(head: str, tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus", images=3, pdfs=1)
    done = _index(head, tmp_path / "corpus", tmp_path / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.count("│") > 5)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:5] == ["4", "0", "0", "0", "5"]  # indexed, unchanged, duplicate, failed, pages


def test_an_address_nobody_answers_is_one_clear_error(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus", images=1, pdfs=0)
    failed = _index(f"127.0.0.1:{_free_port()}", tmp_path / "corpus", tmp_path / "data", timeout=60)
    assert failed.returncode != 0
    assert "cannot reach the Ray cluster at '127.0.0.1:" in " ".join(failed.stderr.split()), failed.stderr[-2000:]
