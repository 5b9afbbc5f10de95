"""FAISS IVF-PQ and HNSW: recall@10 against exact search on clustered vectors, names, and the stages.

Bounds. IVF-PQ gets a *certified* lower bound computed from the index itself: a database
vector ``x`` is stored as its reconstruction ``x^`` (list centroid + decoded residual), so
for a unit query the index's score ``q.x^`` is within ``eps = |x - x^|`` of the cosine ``q.x``
(Cauchy-Schwarz). A true top-k item ``i`` whose list is probed can only be pushed out of the
``refine * k`` candidates by items ``j`` (in probed lists) with ``q.x_j + eps_j >= q.x_i - eps_i``;
when fewer than ``refine * k`` such items exist, ``i`` is certainly found, and the exact
re-scoring of the candidates keeps it. The fraction of certified items is a lower bound on
recall@k that the measured recall must meet, and with ``refine = 4`` it is at least 0.9 on
this data. HNSW has no such certificate: with ``efSearch = N`` the beam holds the whole
(connected) graph, so recall is 1; at ``efSearch = 64, M = 16`` on 3,000 points in 12 clusters
we require 0.95, below the 0.99 that ``benchmarks/results/search.json`` measures on a 50,000-point
version of this generator (a smaller graph is easier to search).
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from cbir.errors import CbirError
from cbir.search.exact import exact_topk, l2_normalize, recall_at_k
from cbir.search.faiss_index import (
    build_faiss_index,
    canonical_index,
    default_nlist,
    faiss_topk,
    pq_bits,
    pq_subquantizers,
)
from cbir.scoring.metric_files import run as run_evaluate
from cbir.search.rankings import run as run_retrieve
from integrity_helpers import write_features

K = 10


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One OpenMP thread: deterministic HNSW insertion, and no spinning threads on a busy machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, clusters: int, sigma: float, seed: int) -> np.ndarray:
    """Unit vectors around ``clusters`` fixed Gaussian centres (like class-structured image features)."""
    centres = np.random.default_rng(99).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + sigma * rng.standard_normal((n, dim)).astype(np.float32)
    return l2_normalize(x)


@pytest.fixture(scope="module")
def vectors():
    return clustered(200, 16, 12, 0.6, seed=1), clustered(3000, 16, 12, 0.6, seed=0)


IVFPQ = {"nlist": 12, "nprobe": 3, "m": 16, "nbits": 8}


def certified_recall(queries: np.ndarray, database: np.ndarray, index, k: int, refine: int) -> float:
    """Lower bound on the recall@k of an IVF-PQ index searched with ``refine * k`` candidates."""
    n = database.shape[0]
    lists = np.empty(n, dtype=np.int64)
    for cell in range(index.nlist):
        size = index.invlists.list_size(cell)
        ids = faiss.rev_swig_ptr(index.invlists.get_ids(cell), size).copy() if size else []
        lists[np.asarray(ids, dtype=np.int64)] = cell
    index.make_direct_map()
    eps = np.linalg.norm(database - index.reconstruct_n(0, n), axis=1) + 1e-5  # + float slack
    _, probed = index.quantizer.search(queries, index.nprobe)
    exact_idx, _ = exact_topk(queries, database, k)
    sims = queries @ database.T
    found = 0
    for qi in range(len(queries)):
        in_probe = np.isin(lists, probed[qi])
        upper = np.sort((sims[qi] + eps)[in_probe])[::-1]
        for i in exact_idx[qi]:
            if not in_probe[i]:
                continue
            threats = np.searchsorted(-upper, -(sims[qi, i] - eps[i]), side="right") - 1  # minus i itself
            found += threats < refine * k
    return found / (len(queries) * k)


def test_ivfpq_recall_meets_its_certified_bound(vectors):
    queries, database = vectors
    exact_idx, _ = exact_topk(queries, database, K)
    index = build_faiss_index(database, "faiss-ivfpq", seed=0, **IVFPQ)
    assert index.pq.M == 16 and index.pq.nbits == 6  # 3,000 // 39 = 76 points: 2**6 centroids
    for refine in (1, 4):
        bound = certified_recall(queries, database, index, K, refine)
        idx, _ = faiss_topk(queries, database, K, index="faiss-ivfpq", seed=0, refine=refine, **IVFPQ)
        assert recall_at_k(idx, exact_idx) >= bound
    assert bound >= 0.9  # refine = 4
    assert recall_at_k(idx, exact_idx) >= 0.9


def test_ivfpq_returns_true_cosines_in_order_of_its_reconstructions(vectors):
    queries, database = vectors
    idx, scores = faiss_topk(queries, database, K, index="faiss-ivfpq", seed=0, **IVFPQ)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, database[idx]), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # every list probed: the index's candidates are the top-k of q . x^ over its reconstructions
    full = {**IVFPQ, "nprobe": IVFPQ["nlist"]}
    index = build_faiss_index(database, "ivfpq", seed=0, **full)
    index.make_direct_map()
    approx = queries @ index.reconstruct_n(0, len(database)).T
    expected = np.argsort(-approx, axis=1, kind="stable")[:, :K]
    got, _ = faiss_topk(queries, database, K, index="ivfpq", seed=0, **full)
    assert np.mean([len(set(a) & set(b)) / K for a, b in zip(got, expected)]) >= 0.99  # ties in 6-bit codes


def test_hnsw_recall(vectors):
    queries, database = vectors
    exact_idx, _ = exact_topk(queries, database, K)
    idx, scores = faiss_topk(queries, database, K, index="faiss-hnsw", M=16, efSearch=64, efConstruction=40)
    assert recall_at_k(idx, exact_idx) >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, database[idx]), atol=1e-5)
    wide, _ = faiss_topk(queries, database, K, index="faiss-hnsw", M=16, efSearch=len(database))
    assert recall_at_k(wide, exact_idx) == 1.0
    alias, _ = faiss_topk(queries, database, K, index="hnsw", M=16, efSearch=64, efConstruction=40)
    np.testing.assert_array_equal(alias, idx)


def test_index_names_and_pq_rules():
    assert [canonical_index(n) for n in ("flat", "ivf", "ivfpq", "hnsw", "faiss-hnsw")] == [
        "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw", "faiss-hnsw"]
    with pytest.raises(ValueError, match="unknown FAISS index 'lsh'"):
        canonical_index("lsh")
    assert pq_subquantizers(1280) == 160 and pq_subquantizers(2048) == 256 and pq_subquantizers(36) == 4
    assert pq_subquantizers(1280, 64) == 64
    with pytest.raises(ValueError, match="m=100 PQ sub-quantizers must divide the dimension 1280"):
        pq_subquantizers(1280, 100)
    assert pq_bits(60_000) == 8 and pq_bits(60_000, 10) == 10 and pq_bits(3000) == 6 and pq_bits(50) == 1
    with pytest.raises(ValueError, match="nbits must lie in 1..16"):
        pq_bits(1000, 0)
    assert default_nlist(60_000) == 980 and default_nlist(1000) == 25 and default_nlist(10) == 1


# ---------------------------------------------------------------- the stages

LABELS = ("a", "b", "c")


def write_dataset(root, n_per_class: int = 40, dim: int = 16):
    """Three classes of clustered features, five held-out queries per class."""
    rows = [{"image_id": f"{label}{j:03d}", "path": f"x/{label}{j}.png", "label": label,
             "split": "query" if j < 5 else "database", "width": 8, "height": 8, "sha256": "0" * 64,
             "protocol": "holdout"} for label in LABELS for j in range(n_per_class)]
    manifest = pd.DataFrame(rows).sort_values("image_id").reset_index(drop=True)
    (root / "data/curated/toy").mkdir(parents=True)
    manifest.to_csv(root / "data/curated/toy/manifest.csv", index=False)
    centres = np.random.default_rng(5).standard_normal((len(LABELS), dim))
    codes = manifest["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy()
    x = l2_normalize((centres[codes] + 0.9 * np.random.default_rng(6).standard_normal((len(codes), dim)))
                     .astype(np.float32))
    write_features(root / "data/features/toy/m.npy", x, manifest)
    return manifest, x


def params_for(index: str, faiss_options: dict | None = None) -> dict:
    return {"seed": 0, "dataset": {"name": "toy"}, "methods": {"m": {"kind": "handcrafted"}},
            "retrieval": {"k": K, "block_size": 16, "index": index, "faiss": faiss_options or {}},
            "evaluation": {"ks": [1, 10], "n_bootstrap": 20, "seed": 0, "n_permutations": 20, "baseline": None}}


@pytest.mark.parametrize("index, options, name", [
    ("faiss-hnsw", {"M": 4, "efSearch": 10, "efConstruction": 10}, "faiss-hnsw"),
    ("ivfpq", {"nlist": 3, "nprobe": 1, "m": 4, "nbits": 4}, "faiss-ivfpq"),
])
def test_metrics_gain_the_index_recall_against_exact_search(tmp_path, index, options, name):
    manifest, x = write_dataset(tmp_path)
    run_evaluate(params_for("exact"), tmp_path)
    exact_metrics = json.loads((tmp_path / "reports/toy/metrics.json").read_text())["m"]
    assert "index" not in exact_metrics

    run_evaluate(params_for(index, options), tmp_path)
    metrics = json.loads((tmp_path / "reports/toy/metrics.json").read_text())["m"]
    q, db = x[(manifest.split == "query").to_numpy()], x[(manifest.split == "database").to_numpy()]
    expected = recall_at_k(faiss_topk(q, db, K, index=index, seed=0, **options)[0], exact_topk(q, db, K)[0])
    assert metrics["index"] == {"name": name, "recall@10": pytest.approx(expected, abs=1e-6)}
    assert 0.0 < expected < 1.0  # small settings: a real approximation
    # the retrieval metrics themselves still rank the whole database exactly
    assert {k: v for k, v in metrics.items() if k != "index"} == exact_metrics

    run_retrieve(params_for(index, options), "m", tmp_path)
    info = json.loads((tmp_path / "data/retrieval/toy/m.json").read_text())
    assert info["index"] == info["index_name"] == name and info["faiss"] == options
    assert info["recall_at_k"] == metrics["index"]["recall@10"]


@pytest.mark.parametrize("options, message", [
    ({"m": 5}, r"retrieval.faiss: faiss m=5 PQ sub-quantizers must divide the dimension 16"),
    ({"nbits": 0}, r"retrieval.faiss.nbits must be a positive integer \(or null\), got 0"),
    ({"refine": "2"}, r"retrieval.faiss.refine must be a positive integer \(or null\), got '2'"),
    ({"nbits": 20}, r"retrieval.faiss: faiss nbits must lie in 1..16, got 20"),
    ({"pq": 8}, r"unknown retrieval.faiss keys \['pq'\]"),
    ({"gpu": "yes"}, r"retrieval.faiss.gpu must be true or false, got 'yes'"),
])
def test_bad_faiss_settings_are_one_clear_line(tmp_path, options, message):
    write_dataset(tmp_path)
    with pytest.raises(CbirError, match=message):
        run_retrieve(params_for("faiss-ivfpq", options), "m", tmp_path)
    with pytest.raises(CbirError, match=message):
        run_evaluate(params_for("faiss-ivfpq", options), tmp_path)
    assert not (tmp_path / "data/retrieval").exists() and not (tmp_path / "metrics").exists()


def test_gpu_search_needs_an_index_with_a_gpu_version_and_faiss_gpu(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(CbirError, match="retrieval.faiss: faiss-hnsw has no GPU version in FAISS"):
        run_retrieve(params_for("hnsw", {"gpu": True}), "m", tmp_path)
    if faiss.get_num_gpus() == 0:  # faiss-cpu (CI): the way to get GPU support is named
        with pytest.raises(CbirError, match="no GPU support or sees no GPU: .*pip install faiss-gpu-cu12"):
            run_retrieve(params_for("faiss-flat", {"gpu": True}), "m", tmp_path)


@pytest.mark.gpu
def test_gpu_flat_and_ivfpq_match_the_cpu_indexes(vectors):
    queries, database = vectors
    exact_idx, exact_sc = exact_topk(queries, database, K)
    idx, sc = faiss_topk(queries, database, K, index="faiss-flat", gpu=True)
    assert recall_at_k(idx, exact_idx) >= 0.999
    np.testing.assert_allclose(sc, exact_sc, atol=1e-4)
    idx, _ = faiss_topk(queries, database, K, index="faiss-ivfpq", seed=0, refine=4, gpu=True, **IVFPQ)
    assert recall_at_k(idx, exact_idx) >= 0.9


def test_large_feature_files_are_not_copied_when_the_split_is_one_run():
    from cbir.features.store import all_finite, select_rows

    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    view = select_rows(x, np.arange(5, 20))
    assert np.shares_memory(view, x) and np.array_equal(view, x[5:])
    picked = select_rows(x, np.array([0, 2, 3]))
    assert not np.shares_memory(picked, x) and np.array_equal(picked, x[[0, 2, 3]])
    bad = x.copy()
    bad[19, 1] = np.inf
    assert all_finite(x, rows=7) and not all_finite(bad, rows=7)
