"""Retrievers as plug-ins: retrievers defined only in this file are registered, then indexed, searched, fused, deleted
and served by /v1/search (and listed in its OpenAPI document) with no other file changed. One of them is a
multi-vector retriever of dimension 320 (a ColQwen3-style model), stored and searched like the 128-dimension one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.config import (
    ClipSettings,
    ColpaliSettings,
    EmbedderSettings,
    Settings,
    TextEmbedderSettings,
)
from mmrag.indexing import delete_documents, run_index
from mmrag.retrieval import search
from mmrag.retrievers import RETRIEVERS, Embedders, SingleVectorRetriever, load_embedders
from mmrag.retrievers.colpali import ColpaliRetriever
from mmrag.services import Services, build_services
from mmrag.store.models import PageEmbedding
from tests.api.conftest import live_server
from tests.factories import make_pdf
from tests.test_pipeline import make_settings

PAGES = {
    "invoice.pdf": "Invoice from Acme Tools, total due 1250 EUR",
    "menu.pdf": "Lunch menu: tomato soup, grilled salmon",
    "report.pdf": "Quarterly report: revenue grew in the third quarter",
}


def _grams(text: str) -> list[int]:
    """Hashed character trigrams of the lowercased text (stable across processes, unlike hash())."""
    text = f"  {text.lower()}  "
    return [int.from_bytes(hashlib.blake2b(text[i : i + 3].encode(), digest_size=4).digest()) for i in range(len(text) - 2)]


class CharGramEmbedder:
    """Text -> one normalised bag of hashed character trigrams: a deterministic model of its own."""

    model_id = "test:chargrams"
    revision = "1"
    dim = 64

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            np.add.at(vectors[row], [g % self.dim for g in _grams(text)], 1.0)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


class WordTokenEmbedder:
    """Page text or a query -> one normalised 320-dimension vector per word: a late-interaction model of its own,
    embedding page text (so the test needs no image model of that size)."""

    model_id = "test:words-320"
    revision = "1"
    dim = 320

    def _tokens(self, text: str) -> np.ndarray:
        words = text.lower().replace(",", " ").replace(":", " ").split() or ["(empty)"]
        tokens = np.zeros((len(words), self.dim), dtype=np.float32)
        for row, word in enumerate(words):
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest())
            tokens[row] = np.random.default_rng(seed).standard_normal(self.dim)
        return tokens / np.linalg.norm(tokens, axis=1, keepdims=True)

    def embed_page_texts(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self._tokens(text) for text in texts]

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self._tokens(text) for text in texts]


class CharGramRetriever(SingleVectorRetriever):
    name = "chargrams"
    modality = "text"
    weight = 2.0

    def load(self, settings: Settings) -> CharGramEmbedder:
        return CharGramEmbedder()


class WordTokenRetriever(ColpaliRetriever):
    """The ColPali retriever's store and search (exact or candidates), over page text instead of page images."""

    name = "words320"
    modality = "text"

    def enabled(self, settings: Settings) -> bool:
        return True

    def load(self, settings: Settings) -> WordTokenEmbedder:
        return WordTokenEmbedder()

    def input_spec(self, embedder: object, settings: Settings, data_dir: Path) -> None:
        return None

    def embed_pages(self, embedder, pages, settings):  # type: ignore[no-untyped-def]
        from mmrag.retrievers import Embedded

        keep = self.pages_it_embeds(pages.texts)
        texts = [text for text, k in zip(pages.texts, keep, strict=True) if k]
        tokens = embedder.embed_page_texts(texts)
        return Embedded(ids=pages.ids[np.array(keep, dtype=bool)], vectors=tokens, counts=[len(t) for t in tokens])


@pytest.fixture
def plugins() -> Iterator[None]:
    for retriever in (CharGramRetriever, WordTokenRetriever):
        RETRIEVERS.register(retriever)
    try:
        yield
    finally:
        for name in ("chargrams", "words320"):
            RETRIEVERS.unregister(name)


@pytest.fixture
def services(plugins: None, tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Iterator[Services]:
    settings = make_settings(tmp_path, database_url)
    models = {**tiny_embedders.models, "chargrams": CharGramEmbedder(), "words320": WordTokenEmbedder()}
    services = build_services(settings, embedders=Embedders(models, meaningless=True))
    corpus = tmp_path / "corpus"
    for name, text in PAGES.items():
        make_pdf(corpus / name, [text])
    run_index(services, [corpus])
    yield services
    services.close()


def _names(hits: Sequence[object]) -> list[str]:
    return [Path(hit.path).name for hit in hits]  # type: ignore[attr-defined]


def test_registered_retrievers_load_through_the_registry(plugins: None, tmp_path: Path) -> None:
    off = EmbedderSettings(
        profile="tiny-random",
        clip=ClipSettings(enabled=False),
        colpali=ColpaliSettings(enabled=False),
        text=TextEmbedderSettings(enabled=False),
    )
    embedders = load_embedders(Settings(data_dir=tmp_path, embedders=off))
    assert embedders.on() == ["chargrams", "words320"]
    assert isinstance(embedders.get("chargrams"), CharGramEmbedder)
    assert set(embedders.off) == {"clip", "colpali", "text", "bipage"}  # bipage: off by default


def test_a_plugin_retriever_is_indexed_searched_fused_and_deleted(services: Services) -> None:
    stores = services.collections.stores(1)
    assert len(stores.get("chargrams")) == 3 and len(stores.get("words320")) == 3
    with services.sessions() as session:
        rows = session.scalars(select(PageEmbedding).where(PageEmbedding.retriever.in_(["chargrams", "words320"])))
        recorded = {(row.retriever, row.model, row.dim) for row in rows}
    assert recorded == {("chargrams", "test:chargrams", 64), ("words320", "test:words-320", 320)}

    alone = search(services, "default", text="tomato soup menu", retrievers=["chargrams"], k=3)
    assert _names(alone)[0] == "menu.pdf" and set(alone[0].scores) == {"chargrams"}
    late = search(services, "default", text="quarterly revenue", retrievers=["words320"], k=3)
    assert _names(late)[0] == "report.pdf" and late[0].scores["words320"] > late[1].scores["words320"]

    fused = search(services, "default", text="tomato soup", k=3)
    assert {"chargrams", "words320", "lexical"} <= set(fused[0].scores)
    assert "chargrams" in fused[0].retriever and _names(fused)[0] == "menu.pdf"

    [menu] = [hit.document_id for hit in fused if Path(hit.path).name == "menu.pdf"]
    delete_documents(services, "default", document_ids=[menu])
    stores = services.collections.stores(1)
    assert len(stores.get("chargrams")) == 2 and len(stores.get("words320")) == 2
    assert "menu.pdf" not in _names(search(services, "default", text="tomato soup", retrievers=["chargrams"]))


def test_a_320_dimension_multivector_store_searches_through_candidates_as_exactly(
    plugins: None, tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url)
    services = build_services(settings, embedders=Embedders({"words320": WordTokenEmbedder()}, meaningless=True))
    try:
        for name, text in PAGES.items():
            make_pdf(tmp_path / "corpus" / name, [text])
        run_index(services, [tmp_path / "corpus"])
        store = services.collections.stores(1).get("words320")
        assert store.dim == 320 and store.tokens(store.ids()[0]).shape[1] == 320
        results = {}
        for mode in ("exact", "candidates"):
            services.settings.index.multivector_search = mode
            hits = search(services, "default", text="invoice total", retrievers=["words320"], k=3)
            results[mode] = [(Path(h.path).name, round(h.scores["words320"], 5)) for h in hits]
        assert services.collections.derived.candidate_index(1, "words320") is not None  # the path taken
    finally:
        services.close()
    assert results["candidates"] == results["exact"] and results["exact"][0][0] == "invoice.pdf"


def test_the_api_serves_and_documents_a_plugin_retriever(services: Services) -> None:
    app = create_app(services=services, answerer=ExtractiveAnswerer())
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        response = client.post("/v1/search", json={"query": "tomato soup", "retrievers": ["chargrams"], "k": 2})
        assert response.status_code == 200, response.text
        hits = response.json()["hits"]
        assert Path(hits[0]["path"]).name == "menu.pdf" and set(hits[0]["scores"]) == {"chargrams"}

        fields = {"query": (None, "quarterly revenue"), "retrievers": (None, "words320")}
        form = client.post("/v1/search", files=fields)  # multipart, as an image search sends it
        assert form.status_code == 200 and Path(form.json()["hits"][0]["path"]).name == "report.pdf"

        unknown = client.post("/v1/search", json={"query": "soup", "retrievers": ["nope"]})
        assert unknown.status_code == 422 and "chargrams" in unknown.text

        ready = client.get("/ready").json()
        assert {"chargrams", "words320", "lexical"} <= set(ready["retrievers_on"])

        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        enum = schemas["SearchRequest"]["properties"]["retrievers"]["anyOf"][0]["items"]["enum"]
        assert enum == RETRIEVERS.names() and "chargrams" in enum
        assert schemas["SearchForm"]["properties"]["retrievers"]["items"]["enum"] == RETRIEVERS.names()


PLUGIN_MODULE = '''
"""A retriever shipped by another package: it registers itself when mmrag loads the entry point."""
import numpy as np
from mmrag.retrievers import RETRIEVERS, SingleVectorRetriever


class Ones:
    model_id, revision, dim = "plugin:ones", "1", 8

    def embed_texts(self, texts):
        return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)


@RETRIEVERS.register
class OnesRetriever(SingleVectorRetriever):
    name = "ones"
    modality = "text"

    def load(self, settings):
        return Ones()
'''


def _install(site: Path, name: str, module: str, source: str) -> None:
    """A distribution as pip leaves it on a path: its module and a dist-info naming it as an mmrag retriever."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mmrag.retrievers]\n{module} = {module}\n")


def test_an_installed_package_adds_a_retriever_through_its_entry_point(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    site.mkdir()
    _install(site, "mmrag_ones", "mmrag_ones", PLUGIN_MODULE)
    _install(site, "mmrag_broken", "mmrag_broken", "raise RuntimeError('this plug-in is broken')\n")
    code = (
        "from mmrag.config import EmbedderSettings, Settings, ClipSettings, ColpaliSettings, TextEmbedderSettings\n"
        "from mmrag.retrievers import RETRIEVERS, load_embedders\n"
        "off = EmbedderSettings(clip=ClipSettings(enabled=False), colpali=ColpaliSettings(enabled=False),"
        " text=TextEmbedderSettings(enabled=False))\n"
        "print(RETRIEVERS.names(), load_embedders(Settings(embedders=off)).on())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path[1:]]), "MMRAG_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "['clip', 'colpali', 'text', 'lexical', 'dates', 'bipage', 'ones'] ['ones']"
    assert "mmrag_broken" in done.stderr and "this plug-in is broken" in done.stderr  # logged, and mmrag still runs


def test_weights_naming_an_unknown_retriever_are_a_config_error(plugins: None, tmp_path: Path) -> None:
    from mmrag.config import RetrievalSettings
    from mmrag.errors import ConfigError

    settings = Settings(data_dir=tmp_path, retrieval=RetrievalSettings(weights={"chargrams": 0.5, "nope": 1.0}))
    with pytest.raises(ConfigError, match=r"retrieval.weights: unknown retrievers \['nope'\]; known: .*chargrams"):
        build_services(settings, embedders=Embedders(), migrate=False)


def test_an_image_query_limited_to_retrievers_that_take_no_images_says_so(services: Services) -> None:
    from PIL import Image

    from mmrag.errors import ConfigError

    image = Image.new("RGB", (32, 32), "red")
    assert search(services, "default", image=image, k=1)  # CLIP takes it
    with pytest.raises(ConfigError, match=r"an image query needs a retriever that takes images \(clip\); asked for: "
                                          r"chargrams, lexical"):
        search(services, "default", image=image, retrievers=["chargrams", "lexical"])
