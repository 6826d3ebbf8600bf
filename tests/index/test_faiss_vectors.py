"""FaissIndex.vectors (protocols.HoldsVectors): every kind gives back the vector last added for each page id, after
replacements, removals, IVF training, HNSW tombstones and a reopen (snapshot + journal), checked against a dict
oracle of what was added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import NotFoundError
from mmrag.index.faiss_index import IVF_MIN_POINTS_PER_LIST, FaissIndex
from mmrag.protocols import HoldsVectors
from tests.contract.oracles import clustered_vectors

DIM = 16
IVF_LISTS = 2


def open_index(path: Path, kind: str) -> FaissIndex:
    return FaissIndex.open(path, model="m", dim=DIM, kind=kind, ivf_lists=IVF_LISTS, ivf_nprobe=IVF_LISTS,
                           hnsw_m=8, use_gpu=False)  # fmt: skip


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_vectors_are_the_ones_last_added(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "clip.faiss"
    index = open_index(path, kind)
    assert isinstance(index, HoldsVectors)
    n = IVF_MIN_POINTS_PER_LIST * IVF_LISTS + 20  # enough for IVF to train on
    added = dict(zip(range(100, 100 + n), clustered_vectors(n, DIM, seed=3), strict=True))
    index.add(np.array(list(added)), np.stack(list(added.values())))
    index.flush()
    replaced = clustered_vectors(5, DIM, seed=4)
    for page_id, vector in zip(range(110, 115), replaced, strict=True):
        added[page_id] = vector
    index.add(np.arange(110, 115), replaced)  # replace: the old vectors must not come back
    index.remove([120, 121])
    del added[120], added[121]
    if kind == "ivf":
        assert index.is_trained_ivf
    wanted = [114, 100, 100 + n - 1, 130]  # any order, repeats allowed
    for current in (index, None):
        if current is None:
            index.flush()
            current = open_index(path, kind)  # snapshot + journal replayed
        got = current.vectors(wanted + [100])
        assert got.shape == (len(wanted) + 1, DIM) and got.dtype == np.float32
        assert np.allclose(got, np.stack([added[i] for i in wanted + [100]]), atol=1e-6)
        everything = current.vectors(current.ids())
        assert np.allclose(everything, np.stack([added[int(i)] for i in current.ids()]), atol=1e-6)
        assert current.vectors([]).shape == (0, DIM)
        with pytest.raises(NotFoundError, match="no vector for page 120"):
            current.vectors([100, 120])
