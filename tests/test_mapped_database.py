"""A served database stays memory-mapped: contiguous database rows are a view of the features file, the
pages its load-time checks read are released, and a compressed index reads only its candidates' rows."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.search.faiss_index import build_faiss_index, faiss_topk, search_built_index
from cbir.search.prepared import database_vectors, release_pages, stored_unit_rows


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def mapped(tmp_path):
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((500, 16)))
    np.save(tmp_path / "f.npy", x)
    return x, np.load(tmp_path / "f.npy", mmap_mode="r")


def test_contiguous_unit_rows_are_a_view_of_the_file(mapped):
    x, features = mapped
    view = database_vectors(np.asarray(features), np.arange(100, 500))
    assert np.shares_memory(view, features) and view.shape == (400, 16)
    np.testing.assert_array_equal(view, x[100:])
    copied = database_vectors(features, np.array([0, 2, 3]))  # not one run: gathered
    assert not np.shares_memory(copied, features)
    np.testing.assert_array_equal(copied, x[[0, 2, 3]])


def test_rows_that_are_not_unit_are_normalised_not_viewed():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]], np.float32)
    assert not stored_unit_rows(x) and stored_unit_rows(unit(np.array([[1.0, 1.0]])))
    out = database_vectors(x, np.arange(3))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]])
    assert not np.shares_memory(out, x)


def test_release_pages_keeps_the_values(mapped):
    x, features = mapped
    for array in (features, np.asarray(features), x.copy()):
        release_pages(array)
        np.testing.assert_array_equal(array, x)  # the pages fault back in from the file


class RecordingRows(np.ndarray):
    """An array that records which rows were read by fancy indexing (the only reads a compressed search makes)."""

    read: list

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and key.dtype.kind == "i":
            self.read.append(np.asarray(key).ravel().copy())
        return np.asarray(self)[key]


def test_a_compressed_index_reads_only_its_candidates(mapped):
    x, _ = mapped
    database, queries = x[50:], x[:5]
    idx = build_faiss_index(database, index="faiss-ivfpq", nlist=8, nprobe=8, m=4, seed=0)
    recorded = database.view(RecordingRows)
    recorded.read = []
    rows, scores = search_built_index(idx, "faiss-ivfpq", queries, recorded, 5, refine=4)
    read = np.unique(np.concatenate(recorded.read))
    assert 0 < len(read) <= 5 * 20 < len(database)  # at most refine * k candidates per query
    expected_rows, expected_scores = faiss_topk(queries, database, 5, index="faiss-ivfpq", nlist=8, nprobe=8,
                                                m=4, seed=0, refine=4)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores)
    # re-scored exactly: every score is the true cosine of its row, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, database[rows]), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
