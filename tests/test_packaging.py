"""The package edge: the wheel carries the migrations inside mmrag and installs no top-level bench, and an installed
wheel migrates a database from any working directory; `alembic upgrade head` still works from the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

pytestmark = pytest.mark.slow  # builds a wheel and runs pip, Python and Alembic in subprocesses

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"alembic_version", "collections", "documents", "document_paths", "pages", "page_embeddings", "jobs",
          "job_items", "page_failures", "page_dates", "page_words", "page_tags", "tag_labels", "captions"}  # fmt: skip
# What `pip wheel .` reads: a copy keeps the build's egg-info and build/ out of the checkout.
SOURCES = ("pyproject.toml", "README.md", "mmrag", "api", "indexer")


def run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH (a test run points it at the checkout) or any MMRAG_* setting."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH" and not key.startswith("MMRAG_")}
    return env | extra


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
         str(source)], cwd=source)  # fmt: skip
    (built,) = out.glob("mmrag-*.whl")
    return built


def test_wheel_ships_migrations_in_the_package_and_no_bench(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_levels == {"api", "indexer", "mmrag"}  # bench stays in the repository
    migrations = {name for name in names if name.startswith("mmrag/migrations/")}
    expected = {"mmrag/migrations/env.py", "mmrag/migrations/script.py.mako"} | {
        f"mmrag/migrations/versions/{path.name}" for path in (ROOT / "mmrag/migrations/versions").glob("*.py")
    }
    assert migrations == expected
    assert len(expected) >= 5  # env.py, the template and at least the three revisions of today
    # the web UI's files, served from the package by `mmrag serve` (api/routes/ui.py)
    assert {"api/ui/index.html", "api/ui/app.js", "api/ui/app.css"} <= set(names)


def test_installed_wheel_migrates_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        cwd=tmp_path)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "from pathlib import Path\n"
        "import mmrag\n"
        "from mmrag.store.db import build_engine, upgrade\n"
        f"assert Path(mmrag.__file__).resolve().is_relative_to({str(site.resolve())!r}), mmrag.__file__\n"
        "engine = build_engine('sqlite:///migrated.db')\n"
        "upgrade(engine)\n"
        "engine.dispose()\n"
    )
    run([sys.executable, "-c", script], cwd=elsewhere, env=clean_environment(PYTHONPATH=str(site)))
    engine = create_engine(f"sqlite:///{elsewhere / 'migrated.db'}")
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


def test_alembic_command_line_upgrades_from_the_repository(tmp_path: Path) -> None:
    database = tmp_path / "cli.db"
    alembic = Path(sys.executable).with_name("alembic")
    run([str(alembic), "upgrade", "head"], cwd=ROOT, env=clean_environment(MMRAG_DATABASE__URL=f"sqlite:///{database}"))
    engine = create_engine(f"sqlite:///{database}")
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()
