"""`python -m bench ui` on a small collection: it drives a real Chromium (its own Playwright session, so it lives apart
from test_ui.py's shared browser) and measures the page's first load exactly."""

from __future__ import annotations

from pathlib import Path


def test_the_ui_benchmark_measures_the_page_in_the_browser(tmp_path: Path) -> None:
    import json

    from api.routes.ui import UI_DIR
    from bench import ui

    out = tmp_path / "ui.json"
    assert ui.main(["--pages", "60", "--queries", "2", "--words-per-page", "20", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["first_load_bytes"] == sum(path.stat().st_size for path in UI_DIR.iterdir())  # the page and its files
    assert row["results_painted_p50_ms"] > 0 and row["thumbnail_shown_p50_ms"] > 0
