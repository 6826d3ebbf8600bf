"""The web UI in a real browser: Debian's Chromium driven by Playwright against a live `mmrag serve` app on tiny
models. Search by text and by image, the page viewer drawing a hit's highlights, a streamed answer whose citation
opens the viewer at its region, and the key prompt when keys are on. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.captions import describe_page
from mmrag.services import Services, build_services
from tests.api.conftest import live_server, make_settings
from tests.factories import make_image, make_pdf

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INVOICE = ["Invoice INV-2024-0117\nIssued by Acme Tools GmbH\nTotal due: 1,250.00 EUR\nPayment within 30 days",
           "Delivery address: 12 Harbour Street, Bristol"]


class _Describer:
    """An answerer that describes images (protocols.Describes), the same sentence for each: the UI's alt text."""

    name = "describer"
    CAPTION = "A plain red square on a white background."

    def describe(self, image: object) -> str:
        return self.CAPTION


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _screenshot(page: object, tmp_path: Path, name: str) -> None:
    """Kept with the test's files; also in MMRAG_UI_SCREENSHOTS (a folder) when set, which is how the README's
    pictures are made."""
    page.screenshot(path=str(tmp_path / name))  # type: ignore[attr-defined]
    if os.environ.get("MMRAG_UI_SCREENSHOTS"):
        target = Path(os.environ["MMRAG_UI_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, target / name)


def test_search_view_and_ask_in_a_browser(services: Services, browser: object, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "invoice.pdf", INVOICE)
    photo = make_image(tmp_path / "red.png", 0, size=(320, 240))
    app = create_app(services=services, answerer=ExtractiveAnswerer())
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        context = browser.new_context(viewport={"width": 1100, "height": 800})  # type: ignore[attr-defined]
        page = context.new_page()
        loaded: list[int] = []
        page.on("response", lambda r: loaded.append(len(r.body())) if r.url.startswith(base_url + "/ui") or
                r.url == base_url + "/" else None)
        page.goto(base_url + "/")
        assert page.title() == "mmrag" and 0 < sum(loaded) < 64_000  # the page's own weight: 29 KB today

        # upload in the library, watch the job finish, see the documents listed
        page.click("nav button[data-view='library']")
        page.set_input_files("#files", [str(pdf), str(photo)])
        page.click("#upload-form button[type='submit']")
        page.wait_for_function("document.querySelector('#job-status').textContent.startsWith('done')")
        assert page.locator("#job-bar").evaluate("bar => bar.value") == 1
        page.wait_for_function("document.querySelectorAll('#documents tbody tr').length === 2")
        assert "invoice.pdf" in page.locator("#documents").inner_text()
        assert page.locator("#documents-caption").inner_text() == "Documents 1–2 of 2"
        assert page.locator("#documents-next").is_disabled() and page.locator("#documents-previous").is_disabled()
        hits = client.post("/v1/search", json={"query": "invoice total due"}).json()["hits"]
        assert {hit["name"] for hit in hits} == {"invoice.pdf", "red.png"}  # the names they were uploaded as
        # the photo described (through mmrag.captions, by an answerer that describes every image alike)
        photo_id = next(hit["page_id"] for hit in hits if hit["name"] == "red.png")
        assert describe_page(services, _Describer(), photo_id).caption == _Describer.CAPTION
        page.click("nav button[data-view='search']")

        # search by text: a grid of hits, each a thumbnail with its name and score
        page.fill("#query", "invoice total due")
        page.press("#query", "Enter")
        page.wait_for_selector("#results li img[src^='blob:']")
        cards = page.locator("#results li")
        assert cards.count() == 3  # the invoice's two pages and the photo
        invoice = cards.filter(has_text="invoice.pdf · p. 1")  # shown by the name it was uploaded as
        assert "fused" in invoice.locator("button").get_attribute("title")
        _screenshot(page, tmp_path, "ui-search.png")

        # filters: only images; a metadata filter that is no key=value pair is refused in a sentence
        page.click("#filters summary")
        page.select_option("#filter-kind", "image")
        page.press("#query", "Enter")
        page.wait_for_function("document.querySelector('#search-status').textContent === '1 results'")
        assert "red.png" in page.locator("#results").inner_text()
        page.fill("#filter-metadata", "nonsense")
        page.press("#query", "Enter")
        page.wait_for_selector("#notice:not([hidden])")
        assert "key=value" in page.locator("#notice").inner_text()
        page.fill("#filter-metadata", "")
        page.fill("#filter-collection", "nowhere")
        page.select_option("#filter-kind", "")
        page.press("#query", "Enter")
        page.wait_for_function("document.querySelector('#notice').textContent.includes('nowhere')")
        page.fill("#filter-collection", "")
        page.press("#query", "Enter")
        page.wait_for_function("document.querySelectorAll('#results li').length === 3")

        # by keyboard alone: a card opens with Enter, the viewer closes with Escape; every image says what it shows
        alts = page.locator("#results img").evaluate_all("imgs => imgs.map(i => i.alt)")
        assert all(alts) and sum(_Describer.CAPTION in alt for alt in alts) == 1  # the photo's caption is its alt text
        invoice.locator("button").focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#viewer[open]")
        page.keyboard.press("Escape")
        page.wait_for_function("!document.querySelector('#viewer').open")

        # the page viewer draws the hit's highlights over the page
        invoice.locator("button").click()
        page.wait_for_selector("#viewer[open] #viewer-image[src^='blob:']")
        words = page.locator("#viewer-boxes .box.text_layer")
        assert words.count() >= 2  # "Invoice", "Total"...
        frame = page.locator(".page-frame").bounding_box()
        box = words.first.bounding_box()
        assert frame and box and box["width"] > 2 and box["height"] > 2
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"] + 1
        _screenshot(page, tmp_path, "ui-viewer.png")
        # the document's other pages, one step at a time
        assert page.locator("#viewer-previous").is_disabled() and page.locator("#viewer-next").is_enabled()
        page.click("#viewer-next")
        page.wait_for_function("document.querySelector('#viewer-title').textContent.endsWith('page 2')")
        assert page.locator("#viewer-next").is_disabled() and page.locator("#viewer-boxes .box").count() == 0
        page.click("#viewer-previous")
        page.wait_for_function("document.querySelector('#viewer-title').textContent.endsWith('page 1')")
        # the original file, saved under the name it was uploaded as
        with page.expect_download() as saving:
            page.click("#viewer-original")
        assert saving.value.suggested_filename == "invoice.pdf"
        assert Path(saving.value.path()).read_bytes() == pdf.read_bytes()
        # "similar": a search by the page's own image
        page.click("#viewer-similar")
        page.wait_for_function("document.querySelector('#query').placeholder.includes('invoice.pdf p. 1')")
        page.wait_for_selector("#results li img[src^='blob:']")
        assert page.locator("#viewer").evaluate("dialog => dialog.open") is False

        # search by image: a picture dropped on the search view
        picture = base64.b64encode(photo.read_bytes()).decode()
        page.evaluate(
            """(data) => {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                const drop = new DataTransfer();
                drop.items.add(new File([bytes], "red.png", { type: "image/png" }));
                document.getElementById("search-view").dispatchEvent(
                    new DragEvent("drop", { dataTransfer: drop, bubbles: true, cancelable: true }));
            }""",
            picture,
        )
        page.wait_for_function("document.querySelector('#query').placeholder.includes('red.png')")
        page.wait_for_selector("#results li img[src^='blob:']")
        assert page.locator("#results li").count() >= 1 and page.locator("#notice").is_hidden()

        # ask: the answer streams in, its citation opens the viewer at the cited region
        page.click("nav button[data-view='ask']")
        page.fill("#question", "What is the total due on invoice INV-2024-0117?")
        page.press("#question", "Enter")
        page.wait_for_selector("#citations li button")
        assert page.locator("#answer").inner_text().startswith("1,250.00 [1]")
        _screenshot(page, tmp_path, "ui-answer.png")
        page.locator("#citations li button").first.click()
        page.wait_for_selector("#viewer[open] #viewer-boxes .box.cited")
        assert page.locator("#viewer-boxes .box.cited").count() >= 1

        # a question the pages do not answer is said plainly, not as an error
        page.click("#viewer-close")
        page.fill("#question", "Who painted the Sistine Chapel ceiling?")
        page.press("#question", "Enter")
        page.wait_for_selector("#answer.unsupported")
        assert page.locator("#answer").inner_text() == "The indexed pages do not answer this."
        assert page.locator("#notice").is_hidden()

        # delete a document (confirmed) and see it gone from the list and from search
        page.click("nav button[data-view='library']")
        page.wait_for_function("document.querySelectorAll('#documents tbody tr').length === 2")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[aria-label='Delete invoice.pdf']")
        page.wait_for_function("document.querySelectorAll('#documents tbody tr').length === 1")
        assert "invoice.pdf" not in page.locator("#documents").inner_text()
        page.click("nav button[data-view='search']")
        page.fill("#query", "invoice total due")
        page.press("#query", "Enter")
        page.wait_for_function("document.querySelector('#search-status').textContent === '1 results'")
        assert "invoice.pdf" not in page.locator("#results").inner_text()
        context.close()


def test_a_file_over_the_upload_limit_is_refused_in_a_sentence(
    tmp_path: Path, database_url: str, tiny_embedders, browser: object  # noqa: ANN001 - Embedders
) -> None:
    settings = make_settings(tmp_path / "data", database_url, max_upload_bytes=512)
    services = build_services(settings, embedders=tiny_embedders)
    try:
        with live_server(create_app(services=services, answerer=ExtractiveAnswerer())) as base_url:
            context = browser.new_context(viewport={"width": 390, "height": 800})  # type: ignore[attr-defined]
            page = context.new_page()  # at a phone's width: no view is wider than the screen
            page.goto(base_url + "/")
            for view in ("search", "ask", "library"):
                page.click(f"nav button[data-view='{view}']")
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), view
            page.click("nav button[data-view='library']")
            page.set_input_files("#files", [str(make_pdf(tmp_path / "big.pdf", INVOICE * 3))])
            page.click("#upload-form button[type='submit']")
            page.wait_for_selector("#notice:not([hidden])")
            assert page.locator("#notice").inner_text() == "That file is too large for this server."
            assert page.locator("#upload-progress").is_hidden()
            context.close()
    finally:
        services.close()


def test_a_server_with_keys_asks_for_one(tmp_path: Path, database_url: str, tiny_embedders, browser: object) -> None:  # noqa: ANN001
    settings = make_settings(tmp_path / "data", database_url, keys={"right-key": ["*"]})
    services = build_services(settings, embedders=tiny_embedders)
    try:
        with live_server(create_app(services=services, answerer=ExtractiveAnswerer())) as base_url:
            context = browser.new_context()  # type: ignore[attr-defined]
            page = context.new_page()
            page.goto(base_url + "/")
            assert page.locator("#key-form").is_hidden()
            page.fill("#query", "anything")
            page.press("#query", "Enter")
            page.wait_for_selector("#key-form:not([hidden])")
            assert "needs an API key" in page.locator("#notice").inner_text()
            page.fill("#key", "wrong-key")
            page.press("#key", "Enter")
            page.press("#query", "Enter")
            page.wait_for_selector("#key-form:not([hidden])")
            page.fill("#key", "right-key")
            page.press("#key", "Enter")
            page.press("#query", "Enter")
            page.wait_for_function("document.querySelector('#search-status').textContent === 'Nothing found.'")
            assert page.locator("#notice").is_hidden()
            context.close()
    finally:
        services.close()



def test_more_results_on_scroll_and_documents_a_page_at_a_time(
    services: Services, browser: object, tmp_path: Path
) -> None:
    photos = [make_image(tmp_path / f"photo-{n:02d}.png", n, size=(64, 48)) for n in range(26)]
    with live_server(create_app(services=services, answerer=ExtractiveAnswerer())) as base_url:
        context = browser.new_context(viewport={"width": 1100, "height": 700})  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(base_url + "/")
        page.click("nav button[data-view='library']")
        page.set_input_files("#files", [str(p) for p in photos])
        page.click("#upload-form button[type='submit']")
        page.wait_for_function("document.querySelector('#job-status').textContent.startsWith('done')")
        page.wait_for_function("document.querySelector('#documents-caption').textContent === 'Documents 1–20 of 26'")
        assert page.locator("#documents tbody tr").count() == 20 and page.locator("#documents-previous").is_disabled()
        page.click("#documents-next")
        page.wait_for_function("document.querySelector('#documents-caption').textContent === 'Documents 21–26 of 26'")
        assert page.locator("#documents tbody tr").count() == 6 and page.locator("#documents-next").is_disabled()
        page.click("#documents-previous")
        page.wait_for_function("document.querySelectorAll('#documents tbody tr').length === 20")

        # the grid asks for the next hits when its end scrolls into view
        page.click("nav button[data-view='search']")
        page.fill("#query", "photo")
        page.press("#query", "Enter")
        page.wait_for_function("document.querySelectorAll('#results li').length === 24")
        page.locator("#more").scroll_into_view_if_needed()
        page.wait_for_function("document.querySelectorAll('#results li').length === 26")
        page.wait_for_function("document.querySelector('#search-status').textContent === '26 results'")
        ids = page.locator("#results li button").evaluate_all("cards => cards.map(c => c.textContent)")
        assert len(set(ids)) == 26  # the second request's hits are the next ones, none again
        context.close()
