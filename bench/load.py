"""Load test: many clients searching a live `mmrag serve` at once, under each fusion setting, side by side.

    python -m bench load --data-dir /tmp/sroie-eval [--data ../shared/data/sroie] [--clients 50] [--seconds 20]

For each setting (`default`: the shipped weights, which leave the dense text retriever out, so a query costs no
text embedding; `with-dense-text`: it weighted 0.05 as before) a fresh `mmrag serve` is started on 127.0.0.1 over
the same data dir (index it first: `python -m bench sroie --index`), `--clients` threads each send the set's
questions to POST /v1/search (k=10) in a loop for `--seconds`, and the table gives searches/s, latency p50/p95 (ms)
and errors.
Client and server share this machine's cores: the figures are the service's on them, client cost included.
Writes bench/results/load.json (or --out): figures only, no queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sroie"
DEFAULT_OUT = REPO / "bench" / "results" / "load.json"
SETTINGS = {
    "default": {},
    "with-dense-text": {"MMRAG_RETRIEVAL__WEIGHTS": json.dumps({"text": 0.05})},  # the weight it had before
}
console = Console()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with questions.jsonl")
    parser.add_argument("--data-dir", type=Path, required=True, help="an indexed MMRAG data dir (outside the repo)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    questions_file = args.data / "questions.jsonl"
    if not questions_file.is_file():
        log.warning("skipping the load test: %s has no questions.jsonl (the shared evaluation data)", args.data)
        return 0
    queries = [json.loads(line)["query"] for line in questions_file.read_text().splitlines() if line.strip()]
    rows = {name: run_setting(name, args, queries) for name in args.settings}
    table = Table(title=f"{args.clients} clients searching a live mmrag serve for {args.seconds:.0f} s each")
    for column in ("setting", "searches", "searches/s", "p50 ms", "p95 ms", "errors"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(name, str(row["searches"]), f"{row['searches_per_second']:.1f}", f"{row['p50_ms']:.1f}",
                      f"{row['p95_ms']:.1f}", str(row["errors"]))
    console.print(table)
    summary = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "clients": args.clients, "seconds": args.seconds, "questions": len(queries), "settings": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


def run_setting(name: str, args: argparse.Namespace, queries: list[str]) -> dict:
    port = _free_port()
    env = {**os.environ, "MMRAG_DATA_DIR": str(args.data_dir), **SETTINGS[name]}
    server = subprocess.Popen(
        [sys.executable, "-c", "from indexer.cli import main; main()", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--log-level",
         "warning"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server)
        with httpx.Client(base_url=base, timeout=60) as warm:  # models and the BM25 index load on first use
            warm.post("/v1/search", json={"query": queries[0], "k": 10}).raise_for_status()
        return _hammer(base, queries, args.clients, args.seconds)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _hammer(base: str, queries: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            i = offset
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    reply = http.post("/v1/search", json={"query": queries[i % len(queries)], "k": 10})
                    ok = reply.status_code == 200
                    problem = f"HTTP {reply.status_code}"
                except httpx.HTTPError as exc:
                    ok, problem = False, type(exc).__name__
                took = 1000 * (time.perf_counter() - began)
                with lock:
                    (latencies.append(took) if ok else errors.append(problem))
                i += clients

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    array = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "searches": len(latencies), "searches_per_second": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(array, 50)), "p95_ms": float(np.percentile(array, 95)),
        "errors": len(errors), "error_kinds": sorted(set(errors)),
    }


def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mmrag serve exited with {server.returncode}: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mmrag serve at {base} was not ready within {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
