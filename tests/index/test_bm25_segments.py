"""Segmented BM25 (mmrag/index/bm25.py behind Bm25Index): the scores of bm25s's lucene method, whatever the history
of adds, deletes, merges, saves and loads; saves that write only what changed."""

from __future__ import annotations

import random
from pathlib import Path

import bm25s
import numpy as np
import pytest

from mmrag.analysis import analyze, query_terms
from mmrag.index import bm25
from mmrag.index.bm25 import rank
from mmrag.index.lexical import Bm25Index

WORDS = [f"w{i}" for i in range(200)] + ["total", "12.50", "RM9.00", "2018-03-04", "receipt", "invoice", "café"]


def _page(rng: random.Random) -> str:
    vocabulary = WORDS[: rng.randint(5, len(WORDS))]  # Zipf-like: low words on every page, high ones on few
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 50)))


def _query(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))


def test_scores_are_bm25s_lucene_scores() -> None:
    rng = random.Random(1)
    pages = [(3 * i + 7, _page(rng)) for i in range(300)]  # some empty: they count in N and the average length
    reference = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    reference.index([analyze(text) for _, text in pages], show_progress=False)
    index = Bm25Index(ngram=0)
    index.rebuild(pages)
    compared = 0
    for query in [_query(rng) for _ in range(60)] + ["w1 w1 total", "nothing-like-this"]:
        terms = query_terms(query)
        token_ids = reference.get_tokens_ids(terms)  # a repeated query term counts twice there too
        expected = reference.get_scores_from_ids(token_ids) if token_ids else np.zeros(len(pages))
        got = dict(rank(index._segments, "words", terms, len(pages), k1=1.5, b=0.75))
        assert set(got) == {page_id for (page_id, _), score in zip(pages, expected) if score > 0}
        for (page_id, _), score in zip(pages, expected):
            if score > 0:
                assert got[page_id] == pytest.approx(float(score), rel=1e-5)
                compared += 1
    assert compared > 1000


def _assert_same_results(left: Bm25Index, right: Bm25Index, rng: random.Random) -> None:
    for query in [_query(rng) for _ in range(80)] + ["w3 w3", "recipt", "RM9.00 2018-03-04"]:
        a, b = left.search(query, 10), right.search(query, 10)
        assert [hit.page_id for hit in a] == [hit.page_id for hit in b], query
        assert [hit.score for hit in a] == pytest.approx([hit.score for hit in b], rel=1e-5), query


def test_adds_deletes_replacements_saves_and_loads_rank_as_one_rebuild(tmp_path: Path) -> None:
    rng = random.Random(2)
    index, live = Bm25Index(), {}
    next_id = 1
    for step in range(25):
        batch = [(next_id + i, _page(rng)) for i in range(rng.randint(1, 40))]
        next_id += len(batch)
        if live and step % 4 == 1:
            batch += [(page_id, _page(rng)) for page_id in rng.sample(sorted(live), 3)]  # edited: replaced
        index.add(batch)
        live.update(batch)
        gone = rng.sample(sorted(live), min(len(live), rng.randint(0, 15)))
        assert index.remove([*gone, 10**9]) == len(gone)  # an id never held is ignored
        for page_id in gone:
            del live[page_id]
        if step % 3 == 0:
            index.save(tmp_path)
            index = Bm25Index.load(tmp_path)
        assert len(index) == len(live)
    assert len(index.segment_sizes()) > 1  # the test has to cover scores summed over segments
    fresh = Bm25Index()
    fresh.rebuild(sorted(live.items()))
    assert index.fingerprint == fresh.fingerprint
    assert np.array_equal(index.ids(), np.array(sorted(live)))
    _assert_same_results(index, fresh, rng)
    index.save(tmp_path)
    assert np.array_equal(Bm25Index.saved_ids(tmp_path), np.array(sorted(live)))
    _assert_same_results(Bm25Index.load(tmp_path), fresh, rng)


def test_a_save_writes_the_new_segment_and_deletions_only(tmp_path: Path) -> None:
    rng = random.Random(3)
    index = Bm25Index()
    index.rebuild([(i, _page(rng)) for i in range(1, 201)])
    index.save(tmp_path)
    first = {path.name: path.stat() for path in (tmp_path / "seg-000001-000").iterdir()}
    index.add([(i, _page(rng)) for i in range(201, 206)])
    index.remove([7, 8])
    index.save(tmp_path)
    assert index.segment_sizes() == [198, 5]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "CURRENT", "commit-000001.json", "commit-000002.json", "manifest.json",
        "seg-000001-000", "seg-000001-000.deleted-000002.npy", "seg-000002-001",
    ]
    for path in (tmp_path / "seg-000001-000").iterdir():  # the big segment's files were not rewritten
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first[path.name].st_ino, first[path.name].st_mtime_ns)
    assert sorted(np.load(tmp_path / "seg-000001-000.deleted-000002.npy")) == [6, 7]  # rows of pages 7 and 8
    loaded = Bm25Index.load(tmp_path)
    assert 7 not in loaded.ids() and 205 in loaded.ids() and len(loaded) == 203


def test_a_reader_of_the_previous_commit_still_finds_its_files(tmp_path: Path) -> None:
    rng = random.Random(4)
    index = Bm25Index()
    index.rebuild([(i, _page(rng)) for i in range(1, 101)])
    index.save(tmp_path)
    previous = (tmp_path / "CURRENT").read_text()
    index.add([(i, _page(rng)) for i in range(101, 201)])  # merges into one new segment: the old one goes later
    index.save(tmp_path)
    (tmp_path / "CURRENT").write_text(previous)  # as a reader that read CURRENT before the switch sees it
    assert len(Bm25Index.load(tmp_path)) == 100
    (tmp_path / "CURRENT").write_text("commit-000002.json")
    index.add([(201, "one more")])
    index.save(tmp_path)
    assert not (tmp_path / previous).exists() and not (tmp_path / "seg-000001-000").exists()


def test_segments_merge_like_a_binary_counter() -> None:
    rng = random.Random(5)
    index = Bm25Index(ngram=0)
    added = 0
    for _ in range(64):
        size = rng.randint(5, 20)
        index.add([(added + i, _page(rng)) for i in range(size)])
        added += size
        sizes = index.segment_sizes()
        assert sum(sizes) == added
        assert all(newer * bm25.MERGE_FACTOR < older for older, newer in zip(sizes, sizes[1:])), sizes
    assert len(index.segment_sizes()) <= np.log2(added / 5) + 1


def test_a_mostly_deleted_segment_is_rewritten_and_an_emptied_one_dropped() -> None:
    rng = random.Random(6)
    index = Bm25Index()
    index.rebuild([(i, _page(rng)) for i in range(100)])
    index.add([(i, _page(rng)) for i in range(100, 110)])
    assert index.segment_sizes() == [100, 10]
    index.remove(range(40))
    assert index._segments[0].rows == 100  # 40% deleted: kept, rows flagged
    index.remove(range(40, 55))
    assert index._segments[0].rows == 45 and index._segments[0].live == 45  # 55% deleted: rewritten
    index.remove(range(100, 110))
    assert index.segment_sizes() == [45]
    index.remove(range(200))
    assert len(index) == 0 and index.segment_sizes() == [] and index.search("w1 total", 5) == []


def _saved_and_loaded(directory: Path, rng: random.Random, pages: int) -> tuple[Bm25Index, Bm25Index]:
    """A writer's index of pages 1..`pages`, saved, and a reader's load of it."""
    writer = Bm25Index()
    writer.rebuild([(i, _page(rng)) for i in range(1, pages + 1)])
    writer.save(directory)
    return writer, Bm25Index.load(directory)


def test_a_reader_catching_up_reads_only_the_segments_it_lacks(tmp_path: Path) -> None:
    rng = random.Random(7)
    writer, reader = _saved_and_loaded(tmp_path, rng, 200)
    writer.add([(i, _page(rng)) for i in range(201, 206)])
    writer.remove([3])
    writer.save(tmp_path)
    caught = Bm25Index.load(tmp_path, reuse=reader)
    assert caught._segments[0].models is reader._segments[0].models  # the big segment was not read again
    assert not reader._segments[0].deleted.any() and caught._segments[0].deleted[2]  # the reader's copy untouched
    assert caught.segment_sizes() == [199, 5] and caught.fingerprint == writer.fingerprint
    _assert_same_results(caught, Bm25Index.load(tmp_path), rng)
    assert Bm25Index.load(tmp_path, reuse=caught)._segments[0] is caught._segments[0]  # nothing new: all reused


def test_a_loaded_index_maps_its_postings_and_serves_after_the_writer_deletes_their_files(tmp_path: Path) -> None:
    rng = random.Random(8)
    writer, reader = _saved_and_loaded(tmp_path, rng, 100)
    assert isinstance(reader._segments[0].models["words"].rows, np.memmap)
    before = [reader.search(query, 10) for query in ("w1 w2", "total 12.50", "receipt")]
    for first in (101, 201):  # each merges everything into a new segment; the second save deletes the first's files
        writer.add([(i, _page(rng)) for i in range(first, first + 100)])
        writer.save(tmp_path)
    assert not (tmp_path / "seg-000001-000").exists()
    assert [reader.search(query, 10) for query in ("w1 w2", "total 12.50", "receipt")] == before
    merged = Bm25Index.load(tmp_path, reuse=reader)  # merges read mapped arrays too
    merged.add([(1000, "w1 w2 total")])
    assert len(merged) == 301 and merged.search("w1 w2 total", 1)
