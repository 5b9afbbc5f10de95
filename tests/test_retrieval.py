"""Exact and FAISS search: tie rule, exclusion, blocking, recall, split and ranking table."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbir.data.manifest import split_indices
from cbir.errors import CbirError
from cbir.search import exact as retrieval
from cbir.search.exact import exact_topk, l2_normalize, ranking_frame, recall_at_k
from cbir.search.faiss_index import faiss_topk


def unit(*rows) -> np.ndarray:
    return l2_normalize(np.array(rows, dtype=np.float32))


def dyadic_unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit vectors with 1, 4 or 16 entries of ±1, ±1/2, ±1/4: every dot product is
    exact in float32 whatever the summation order, and ties are frequent."""
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        m = int(rng.choice([1, 4, 16]))
        cols = rng.choice(dim, size=m, replace=False)
        row[cols] = rng.choice([-1.0, 1.0], size=m) / np.sqrt(m)
    return out


def test_exact_topk_hand_example():
    db = unit([1, 0], [0, 1], [1, 1], [-1, 0])
    idx, scores = exact_topk(unit([1, 0]), db, k=3)
    assert idx.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores, [[1.0, np.sqrt(0.5), 0.0]], atol=1e-6)
    assert idx.dtype == np.int64 and scores.dtype == np.float32


def test_exact_topk_ties_break_by_lower_row_even_at_the_cut():
    # scores [0, 1, 1, 0, 0]: the tie at score 0 straddles the k = 3 cut
    db = unit([0, 1], [1, 0], [1, 0], [0, 1], [0, -1])
    idx, scores = exact_topk(unit([1, 0]), db, k=3)
    assert idx.tolist() == [[1, 2, 0]]
    np.testing.assert_allclose(scores, [[1, 1, 0]], atol=1e-7)


def test_exact_topk_exclude_and_k_larger_than_database():
    db = unit([1, 0], [1, 1], [0, 1])
    idx, _ = exact_topk(db, db, k=10, exclude=np.arange(3))
    assert idx.tolist() == [[1, 2], [0, 2], [1, 0]]
    idx, _ = exact_topk(db, db, k=10)
    assert idx.shape == (3, 3)
    idx, _ = exact_topk(db, db, k=2, exclude=np.array([-1, -1, -1]))
    assert idx[:, 0].tolist() == [0, 1, 2]


def test_exact_topk_normalises_inputs_and_rejects_bad_shapes():
    db = np.array([[3, 0], [0, 2]], dtype=np.float64)
    _, scores = exact_topk(np.array([[5.0, 0.0]]), db, k=2)
    np.testing.assert_allclose(scores, [[1.0, 0.0]], atol=1e-7)
    with pytest.raises(ValueError, match="dimension"):
        exact_topk(np.ones((1, 3)), db, k=1)
    with pytest.raises(ValueError, match="NaN"):
        exact_topk(np.array([[np.nan, 1.0]]), db, k=1)
    with pytest.raises(ValueError, match="exclude"):
        exact_topk(np.ones((1, 2)), db, k=1, exclude=np.array([5]))
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        exact_topk(np.ones((1, 2)), db, k=1, block_size=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        exact_topk(np.ones((1, 2)), db, k=0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_q=st.integers(1, 12), n_db=st.integers(1, 40),
       dim=st.sampled_from([16, 20, 33]), k=st.integers(1, 45), block=st.integers(1, 13),
       use_exclude=st.booleans(), max_elements=st.sampled_from([1, 7, 50, 1 << 23]))
def test_exact_topk_equals_full_argsort(seed, n_q, n_db, dim, k, block, use_exclude, max_elements):
    rng = np.random.default_rng(seed)
    q = dyadic_unit_vectors(rng, n_q, dim)
    db = dyadic_unit_vectors(rng, n_db, dim)
    db[rng.integers(0, n_db, size=n_db // 3)] = db[0]  # duplicates: exact ties
    exclude = rng.integers(-1, n_db, size=n_q) if use_exclude else None
    if exclude is not None and n_db == 1:
        exclude[:] = -1
    # small element budgets force database chunks whose top-k lists are merged
    with mock.patch.object(retrieval, "MAX_BLOCK_ELEMENTS", max_elements):
        idx, scores = exact_topk(q, db, k, block_size=block, exclude=exclude)

    cosine = q.astype(np.float64) @ db.astype(np.float64).T
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        cosine[rows, exclude[rows]] = -np.inf
    kk = min(k, n_db - (1 if exclude is not None and np.any(exclude >= 0) else 0))
    expected = np.argsort(-cosine, axis=1, kind="stable")[:, :kk]
    assert idx.tolist() == expected.tolist()
    np.testing.assert_array_equal(scores, np.take_along_axis(cosine, expected, axis=1))


def test_exact_topk_block_size_and_chunks_do_not_change_results():
    rng = np.random.default_rng(1)
    q, db = rng.standard_normal((37, 24)), rng.standard_normal((300, 24))
    a = exact_topk(q, db, 15, block_size=1000)
    b = exact_topk(q, db, 15, block_size=4)
    with mock.patch.object(retrieval, "MAX_BLOCK_ELEMENTS", 100):  # 25-row database chunks
        c = exact_topk(q, db, 15, block_size=4, exclude=np.arange(37))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)
    d = exact_topk(q, db, 15, exclude=np.arange(37))
    np.testing.assert_array_equal(c[0], d[0])
    np.testing.assert_allclose(c[1], d[1], atol=1e-6)


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(7)
    return l2_normalize(rng.standard_normal((40, 32))), l2_normalize(rng.standard_normal((1500, 32)))


def test_faiss_flat_equals_exact(gaussian):
    q, db = gaussian
    e_idx, e_sc = exact_topk(q, db, 10)
    f_idx, f_sc = faiss_topk(q, db, 10, index="flat")
    np.testing.assert_array_equal(f_idx, e_idx)
    np.testing.assert_allclose(f_sc, e_sc, atol=1e-5)
    loo = np.arange(40)
    e_idx, _ = exact_topk(db[:40], db, 10, exclude=loo)
    f_idx, _ = faiss_topk(db[:40], db, 10, index="flat", exclude=loo)
    np.testing.assert_array_equal(f_idx, e_idx)
    assert not np.any(f_idx == loo[:, None])


def test_faiss_ivf_exhaustive_probe_is_exact_and_hnsw_recalls_well(gaussian):
    q, db = gaussian
    e_idx, _ = exact_topk(q, db, 10)
    ivf_idx, ivf_sc = faiss_topk(q, db, 10, index="ivf", nlist=8, nprobe=8, seed=3)
    assert recall_at_k(ivf_idx, e_idx) == 1.0
    assert np.all(np.diff(ivf_sc, axis=1) <= 0)
    again, _ = faiss_topk(q, db, 10, index="ivf", nlist=8, nprobe=1, seed=3)
    once, _ = faiss_topk(q, db, 10, index="ivf", nlist=8, nprobe=1, seed=3)
    np.testing.assert_array_equal(again, once)  # seeded k-means
    assert recall_at_k(once, e_idx) < 1.0
    hnsw_idx, _ = faiss_topk(q, db, 10, index="hnsw", M=16, efSearch=64)
    assert recall_at_k(hnsw_idx, e_idx) >= 0.9
    with pytest.raises(ValueError, match="unknown FAISS index"):
        faiss_topk(q, db, 10, index="lsh")


def test_recall_at_k_hand_values():
    exact = np.array([[0, 1, 9], [5, 6, 7]])
    assert recall_at_k(np.array([[0, 1, 2], [3, 4, 5]]), exact) == pytest.approx(0.5)
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[1, 0, 9], [7, 6, 5]]), exact) == 1.0  # order does not matter
    assert recall_at_k(np.array([[-1, -1, -1], [-1, -1, -1]]), exact) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(np.zeros((1, 3)), exact)


def manifest(protocol: str, splits: list[str]) -> pd.DataFrame:
    n = len(splits)
    return pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(n)], "label": ["a"] * n,
                         "split": splits, "protocol": [protocol] * n})


def test_split_indices_holdout_and_leave_one_out():
    q, d, ex = split_indices(manifest("holdout", ["database", "query", "database", "query"]))
    assert q.tolist() == [1, 3] and d.tolist() == [0, 2] and ex is None
    q, d, ex = split_indices(manifest("predefined", ["query", "database"]))
    assert q.tolist() == [0] and d.tolist() == [1] and ex is None
    q, d, ex = split_indices(manifest("leave_one_out", ["database"] * 3))
    assert q.tolist() == d.tolist() == ex.tolist() == [0, 1, 2]


@pytest.mark.parametrize("frame, message", [
    (manifest("holdout", ["database", "database"]), "0 query and 2 database rows"),
    (manifest("holdout", ["query", "train"]), r"split has values \['train'\]"),
    (manifest("random", ["query", "database"]), "unknown protocol 'random'"),
    (manifest("holdout", ["query", "database"]).drop(columns="protocol"), "no 'protocol' column"),
    (manifest("leave_one_out", ["database"]), "at least 2 images"),
])
def test_split_indices_errors(frame, message):
    with pytest.raises(CbirError, match=message):
        split_indices(frame)


def test_ranking_frame_contents():
    frame = ranking_frame(["q1", "q2"], np.array(["d0", "d1", "d2"]),
                          np.array([[2, 0], [1, -1]]), np.array([[0.9, 0.5], [0.7, -np.inf]]))
    assert list(frame.columns) == ["query_id", "rank", "image_id", "score"]
    assert frame.values.tolist() == [["q1", 1, "d2", pytest.approx(0.9)],
                                     ["q1", 2, "d0", pytest.approx(0.5)],
                                     ["q2", 1, "d1", pytest.approx(0.7)]]


def test_l2_normalize_keeps_zero_rows_and_avoids_copies():
    x = np.array([[3, 4], [0, 0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0, 0]])
    already = l2_normalize(x)
    assert l2_normalize(already) is already
