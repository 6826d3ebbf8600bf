"""Captions (mmrag.captions): the VLM answerer describes pages, once per content, and BM25 finds them by their caption.

The OpenAI-compatible answerer talks to a real chat-completions server on 127.0.0.1 (tests.answer's), which counts
the requests; the transformers answerer is a tiny random-init Qwen2-VL (its captions mean nothing: the plumbing is
checked). Real jobs, real SQL (SQLite and PostgreSQL), real BM25.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.answer.openai_compat import OpenAICompatAnswerer
from mmrag.answer.prompt import CAPTION_PROMPT, clean_caption
from mmrag.captions import describe_page, describe_pages
from mmrag.errors import AnswererRejectedError, CaptionsUnavailableError, NotFoundError
from mmrag.indexing import run_index
from mmrag.protocols import Describes
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store.models import Caption, Document, Page
from tests.answer.test_openai_compat import ChatServer, Reply, server  # noqa: F401 - `server`: a fixture
from tests.factories import make_pdf
from tests.test_pipeline import make_settings
from tests.test_tags import ColourClip, photo

ZEPPELIN = "A red zeppelin drifting over a green field."
HARBOUR = "Fishing boats moored in a blue harbour."


def make_corpus(root: Path) -> dict[str, Path]:
    return {
        "red": photo(root / "photos" / "red.png", "red", "green"),
        "blue": photo(root / "photos" / "blue.png", "blue", height=44),
        "letter": make_pdf(root / "letter.pdf", ["Invoice 42 for garden chairs"]),
    }


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    services = build_services(make_settings(tmp_path, database_url), embedders=Embedders(clip=ColourClip()))
    yield services
    services.close()


@pytest.fixture
def answerer(server: ChatServer) -> Iterator[OpenAICompatAnswerer]:
    with OpenAICompatAnswerer(base_url=server.base_url, model="qwen2.5-vl", max_image_side=64, timeout_s=5.0,
                              max_retries=0) as answerer:  # fmt: skip
        yield answerer


def page_ids(services: Services, collection: str = "default") -> dict[str, int]:
    """File name → page id (first page) of the collection's documents."""
    with services.sessions() as session:
        from mmrag.store.models import Collection, DocumentPath

        rows = session.execute(
            select(DocumentPath.path, Page.id)
            .join(Page, Page.document_id == DocumentPath.document_id)
            .join(Collection, Collection.id == DocumentPath.collection_id)
            .where(Collection.name == collection, Page.page_number == 1)
        )
        return {Path(path).name: page_id for path, page_id in rows}


def lexical_hits(services: Services, text: str, collection: str = "default") -> list[int]:
    return [hit.page_id for hit in search(services, collection, text=text, k=10, retrievers=["lexical"])]


def test_describe_writes_searchable_captions_once_per_content(
    tmp_path: Path, services: Services, server: ChatServer, answerer: OpenAICompatAnswerer
) -> None:
    files = make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    # A copy of the red photo, indexed into another collection before it was described.
    copy_dir = tmp_path / "copies"
    copy_dir.mkdir()
    shutil.copy(files["red"], copy_dir / "red-copy.png")
    run_index(services, [copy_dir], collection="other")
    ids, other = page_ids(services), page_ids(services, "other")
    assert lexical_hits(services, "zeppelin") == [] and lexical_hits(services, "zeppelin", "other") == []

    # The photos are described by page id: the server says what each shows in that order.
    expected = sorted([(ids["red.png"], ZEPPELIN), (ids["blue.png"], HARBOUR)])
    server.replies.extend(Reply(text=f"Alt text: {caption}") for _, caption in expected)
    report = describe_pages(services, answerer)  # default: the photos of "default" without a caption

    # The two photos; the PDF page is no photo.
    assert [(p.page_id, p.caption, p.model, p.cached) for p in report.pages] == [
        (page_id, caption, "openai:qwen2.5-vl", False) for page_id, caption in expected
    ]
    assert (report.described, report.cached, report.failed) == (2, 0, [])
    assert len(server.requests) == 2
    content = server.requests[[i for i, _ in expected].index(ids["red.png"])]["body"]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"] and content[1]["text"] == CAPTION_PROMPT
    prefix, encoded = content[0]["image_url"]["url"].split(",", 1)
    sent = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert prefix == "data:image/jpeg;base64" and sent.format == "JPEG" and max(sent.size) == 60  # 60x40, as stored

    # Searchable: in its collection, and the copy in the other one (its collection's BM25 was rewritten too).
    assert lexical_hits(services, "zeppelin") == [ids["red.png"]]
    assert lexical_hits(services, "harbour boats") == [ids["blue.png"]]
    assert lexical_hits(services, "zeppelin", "other") == [other["red-copy.png"]]
    assert lexical_hits(services, "garden chairs") == [ids["letter.pdf"]]  # page text still indexed

    # Nothing left to describe; the copy is described from the cache, no request made.
    assert describe_pages(services, answerer).pages == []
    assert describe_pages(services, answerer, collection="other").pages == []
    found = describe_page(services, answerer, other["red-copy.png"])
    assert (found.caption, found.cached) == (ZEPPELIN, True)
    assert len(server.requests) == 2
    with services.sessions() as session:
        (row,) = session.scalars(select(Caption).where(Caption.caption == ZEPPELIN))
        sha256 = session.scalar(select(Document.sha256).join(Page).where(Page.id == ids["red.png"]))
        assert (row.sha256, row.page_number, row.model) == (sha256, 1, "openai:qwen2.5-vl")

    # A copy indexed after the caption was written has it at once: searchable, never described.
    third = tmp_path / "third"
    third.mkdir()
    shutil.copy(files["red"], third / "red-again.png")
    run_index(services, [third], collection="third")
    assert lexical_hits(services, "zeppelin", "third") == [page_ids(services, "third")["red-again.png"]]
    assert describe_pages(services, answerer, collection="third").pages == []
    assert len(server.requests) == 2


def test_a_caption_of_a_page_with_text_reaches_a_reader_in_another_process(
    tmp_path: Path, database_url: str, services: Services, server: ChatServer, answerer: OpenAICompatAnswerer
) -> None:
    """A page BM25 already holds keeps its id when its caption is added: a reader holding a copy of the index (a
    query service) must still see the new text once the writer saved it."""
    make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    letter = page_ids(services)["letter.pdf"]
    reader = build_services(make_settings(tmp_path, database_url), embedders=Embedders(clip=ColourClip()))
    try:
        assert lexical_hits(reader, "garden") == [letter]  # the reader holds the index now
        assert lexical_hits(reader, "zeppelin") == []
        server.replies.append(Reply(text=f"A letter with a drawing of a {ZEPPELIN.lower()}"))
        report = describe_pages(services, answerer, page_ids=[letter])
        assert [(p.page_id, p.cached) for p in report.pages] == [(letter, False)]
        assert lexical_hits(reader, "zeppelin") == [letter]
        assert lexical_hits(reader, "garden chairs") == [letter]  # its text and its caption
        assert lexical_hits(services, "zeppelin") == [letter]

        # --force describes it again and replaces the caption, for readers too
        server.replies.append(Reply(text=HARBOUR))
        again = describe_page(services, answerer, letter, force=True)
        assert (again.caption, again.cached, len(server.requests)) == (HARBOUR, False, 2)
        assert lexical_hits(reader, "zeppelin") == [] and lexical_hits(reader, "harbour") == [letter]
    finally:
        reader.close()


def test_only_a_vlm_answerer_describes_and_failures_are_clear(
    tmp_path: Path, services: Services, server: ChatServer, answerer: OpenAICompatAnswerer
) -> None:
    files = make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    run_index(services, [files["letter"]], collection="other")
    ids = page_ids(services)
    assert isinstance(answerer, Describes) and not isinstance(ExtractiveAnswerer(), Describes)
    with pytest.raises(CaptionsUnavailableError, match="MMRAG_ANSWERER__KIND=transformers or openai"):
        describe_pages(services, ExtractiveAnswerer())
    with pytest.raises(CaptionsUnavailableError):
        describe_page(services, ExtractiveAnswerer(), ids["red.png"])
    with pytest.raises(NotFoundError, match="page 999999"):
        describe_page(services, answerer, 999999)
    with pytest.raises(NotFoundError, match="in collection 'other'"):
        describe_pages(services, answerer, collection="other", page_ids=[ids["red.png"]])
    with pytest.raises(NotFoundError, match="collection 'nope'"):
        describe_pages(services, answerer, collection="nope")
    # a scope that does not hold the page's collection hides it
    with pytest.raises(NotFoundError):
        describe_page(services, answerer, ids["red.png"], frozenset({"other"}))

    # The server refuses: the run ends with its error and writes nothing; an empty caption is no caption.
    server.replies.append(Reply(status=400, raw_body=b'{"error": {"message": "image too large"}}'))
    with pytest.raises(AnswererRejectedError, match="image too large"):
        describe_pages(services, answerer)
    server.replies.append(Reply(text="  "))
    with pytest.raises(Exception, match="empty caption"):
        describe_page(services, answerer, ids["red.png"])
    with services.sessions() as session:
        assert session.scalars(select(Caption)).all() == []


def test_clean_caption() -> None:
    assert clean_caption('  Caption:  "A red  square\n on white."  ') == "A red square on white."
    long = clean_caption("word " * 200)
    assert len(long) <= 500 and long.endswith("…")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.answer.samples import save_tiny_vlm

    return save_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("checkpoints") / "tiny-qwen2_vl")


def test_the_transformers_answerer_describes_a_photo_once(tmp_path: Path, services: Services, tiny_vlm: Path) -> None:
    from mmrag.answer.vlm import load_vlm

    vlm = load_vlm(str(tiny_vlm), device="cpu", max_new_tokens=12, max_image_side=112)
    generated = []
    generate = vlm.model.generate
    vlm.model.generate = lambda **kwargs: generated.append(kwargs) or generate(**kwargs)  # type: ignore[method-assign]
    # Random weights write random characters (the tiny tokenizer's tokens); a bias makes the tiny model spell one
    # known word over and over (" kite kite ki"), so the plumbing from generation to BM25 can be checked.
    token = vlm.processor.tokenizer.convert_tokens_to_ids
    spelled = [token(char) for char in ("Ġ", "k", "i", "t", "e")]
    assert None not in spelled
    bias = {(spelled[0],): 50.0} | {pair: 100.0 for pair in zip(spelled, spelled[1:] + spelled[:1])}
    vlm.model.generation_config.sequence_bias = bias
    word = "kite"
    make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    ids = page_ids(services)

    first = describe_page(services, vlm, ids["red.png"])
    assert isinstance(first.caption, str) and first.caption and not first.cached
    assert first.model == f"transformers:{tiny_vlm}"
    (call,) = generated
    assert call["max_new_tokens"] == 12 and call["pixel_values"].numel() > 0  # the photo went in
    assert word in first.caption.split()
    assert lexical_hits(services, word) == [ids["red.png"]]

    again = describe_page(services, vlm, ids["red.png"])
    assert (again.caption, again.cached, len(generated)) == (first.caption, True, 1)


def test_the_describe_command(
    tmp_path: Path, database_url: str, services: Services, server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from indexer.cli import app
    from tests.conftest import cli_environment

    make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    ids = page_ids(services)
    from indexer import describe_command

    cli_environment(monkeypatch, tmp_path, database_url)  # the same data dir and database as `services`
    monkeypatch.setattr(describe_command.console, "width", 300)  # captions printed whole
    for name, value in {"KIND": "openai", "BASE_URL": server.base_url, "MODEL": "qwen2.5-vl", "MAX_RETRIES": "0"}.items():
        monkeypatch.setenv(f"MMRAG_ANSWERER__{name}", value)
    server.replies.extend([Reply(text=ZEPPELIN), Reply(text=HARBOUR)])
    runner = CliRunner()

    first = runner.invoke(app, ["describe", "--limit", "1"])
    assert first.exit_code == 0, first.output
    assert "1 pages described by openai:qwen2.5-vl, 0 from cache, 0 failed" in first.output
    second = runner.invoke(app, ["describe"])  # the photo left
    assert "1 pages described by openai:qwen2.5-vl, 0 from cache" in second.output, second.output
    assert (ZEPPELIN in first.output) != (ZEPPELIN in second.output)  # one photo each
    again = runner.invoke(app, ["describe", "--page", str(ids["red.png"]), "--page", str(ids["blue.png"])])
    assert "0 pages described by openai:qwen2.5-vl, 2 from cache" in again.output, again.output
    assert len(server.requests) == 2
    assert lexical_hits(services, "zeppelin") != [] and lexical_hits(services, "harbour") != []

    monkeypatch.setenv("MMRAG_ANSWERER__KIND", "extractive")
    refused = runner.invoke(app, ["describe"])
    assert isinstance(refused.exception, CaptionsUnavailableError)
