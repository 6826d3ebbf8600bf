"""ChromaIndex specifics: chroma never embeds by itself, and a missing chromadb says which extra to install."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import BackendUnavailableError
from mmrag.index.chroma_index import ChromaIndex
from tests.contract.oracles import clustered_vectors


# chromadb warns about its own stored config format when `.configuration` is read; not something we write.
@pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")
def test_the_collection_has_no_embedding_function(tmp_path: Path) -> None:
    index = ChromaIndex.open(tmp_path, name="clip", model="m", dim=8)
    index.add(np.array([1, 2]), clustered_vectors(2, 8))
    index.flush()
    for opened in (index, ChromaIndex.open(tmp_path, name="clip", model="m", dim=8)):
        collection = opened._collection
        # Even bypassing our API, text alone cannot get into the collection: there is nothing to embed it.
        with pytest.raises(ValueError, match="embedding function"):
            collection.add(ids=["3"], documents=["some page text"])
        assert collection.count() == 2
        assert collection.configuration["hnsw"]["space"] == "ip"


def test_our_api_cannot_add_without_vectors(tmp_path: Path) -> None:
    index = ChromaIndex.open(tmp_path, name="clip", model="m", dim=8)
    for bad in (None, [], "page text", np.zeros(8, np.float32)):
        with pytest.raises(ValueError):
            index.add(np.array([1]), bad)
    assert len(index) == 0


def test_collections_are_separate_per_name(tmp_path: Path) -> None:
    clip = ChromaIndex.open(tmp_path, name="clip", model="clip-model", dim=8)
    text = ChromaIndex.open(tmp_path, name="text", model="text-model", dim=4)
    clip.add(np.array([1]), clustered_vectors(1, 8))
    text.add(np.array([1, 2]), clustered_vectors(2, 4))
    assert (len(clip), len(text)) == (1, 2)


def test_missing_chromadb_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "chromadb", None)  # makes `import chromadb` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"mmrag\[chroma\]"):
        ChromaIndex.open(tmp_path, name="clip", model="m", dim=8)
