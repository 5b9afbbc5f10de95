"""Approximate (and exact) cosine search with FAISS, same return convention as :mod:`cbir.search.exact`.

FAISS indexes (:data:`FAISS_INDEXES`; the short names of :data:`INDEX_ALIASES` still work):
``faiss-flat`` (exact), ``faiss-ivf`` (inverted lists, full vectors), ``faiss-ivfpq``
(inverted lists, product-quantised codes: ``m`` bytes per vector at ``nbits = 8``) and
``faiss-hnsw`` (graph, full vectors).
"""

from __future__ import annotations

import math

import numpy as np

from cbir.errors import CbirError
from cbir.search.exact import (
    MAX_BLOCK_ELEMENTS,
    available_k,
    check_exclude,
    check_pair,
    exact_topk,
    l2_normalize,
    recall_at_k,
)

#: Canonical FAISS index names (``retrieval.index``).
FAISS_INDEXES = ("faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")


#: Older and short names, kept working.
INDEX_ALIASES = {"flat": "faiss-flat", "ivf": "faiss-ivf", "ivfpq": "faiss-ivfpq", "hnsw": "faiss-hnsw"}


#: Indexes whose scores are approximate (compressed vectors), re-scored exactly when the
#: database is at hand (``faiss_topk``).
COMPRESSED_INDEXES = ("faiss-ivfpq",)


def _import_faiss():
    try:
        import faiss  # imported on use: exact search does not need it
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared dependency
        raise CbirError("faiss is not installed: pip install faiss-cpu, "
                        "or set retrieval.index: exact") from exc
    return faiss


def canonical_index(name: str) -> str:
    """The canonical FAISS index name for ``name`` (an alias such as ``hnsw`` or the name itself)."""
    name = str(name)
    if name in FAISS_INDEXES:
        return name
    if name in INDEX_ALIASES:
        return INDEX_ALIASES[name]
    raise ValueError(f"unknown FAISS index '{name}'; expected one of "
                     f"{', '.join(FAISS_INDEXES + tuple(INDEX_ALIASES))}")


def default_nlist(n: int) -> int:
    """``4*sqrt(N)`` inverted lists, at most ``N // 39`` so that k-means has 39 points per centroid."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def pq_subquantizers(dim: int, m: int | None = None) -> int:
    """Number of PQ sub-quantizers: ``m`` when it divides ``dim``, by default the largest
    divisor of ``dim`` that is at most ``dim // 8`` (sub-vectors of 8 or more dimensions)."""
    if m is None:
        cap = max(1, dim // 8)
        return max(x for x in range(1, cap + 1) if dim % x == 0)
    m = int(m)
    if m < 1 or dim % m:
        near = [x for x in range(1, dim + 1) if dim % x == 0 and x <= 4 * max(m, 1)][-4:]
        raise ValueError(f"faiss m={m} PQ sub-quantizers must divide the dimension {dim}; "
                         f"try one of {near}")
    return m


def pq_bits(n: int, nbits: int = 8) -> int:
    """Bits per PQ code: ``nbits``, lowered for small databases so that each of the ``2**nbits``
    centroids of a sub-quantizer has 39 training points (FAISS's rule of thumb, as for ``nlist``)."""
    nbits = int(nbits)
    if not 1 <= nbits <= 16:
        raise ValueError(f"faiss nbits must lie in 1..16, got {nbits}")
    return max(1, min(nbits, int(math.floor(math.log2(max(n // 39, 2))))))


def gpu_resources(index: str):
    """FAISS GPU resources for ``index``, or a ValueError saying why it cannot run on a GPU."""
    faiss = _import_faiss()
    if index == "faiss-hnsw":
        raise ValueError("faiss-hnsw has no GPU version in FAISS: use faiss-flat, faiss-ivf or faiss-ivfpq "
                         "with gpu: true, or gpu: false")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise ValueError("gpu is true but this FAISS has no GPU support or sees no GPU: on a CUDA machine "
                         "pip install faiss-gpu-cu12 in place of faiss-cpu, or set gpu: false")
    return faiss.StandardGpuResources()


def build_faiss_index(database: np.ndarray, index: str = "faiss-flat", seed: int = 0,
                      nlist: int | None = None, nprobe: int = 8, M: int = 32,
                      efSearch: int = 64, efConstruction: int = 40, m: int | None = None,
                      nbits: int = 8, gpu: bool = False):
    """A FAISS inner-product index over the L2-normalised database rows.

    ``faiss-flat``: IndexFlatIP (exact). ``faiss-ivf``: IndexIVFFlat, ``nlist`` cells (default
    :func:`default_nlist`) of which ``nprobe`` are visited; k-means is seeded with ``seed``.
    ``faiss-ivfpq``: IndexIVFPQ, the same cells, residuals encoded with ``m`` sub-quantizers
    (default :func:`pq_subquantizers`) of ``nbits`` bits (lowered by :func:`pq_bits` for tiny
    databases). ``faiss-hnsw``: IndexHNSWFlat with ``M`` links per node, ``efConstruction`` and
    ``efSearch``; its level generator is seeded with ``seed`` (multi-threaded insertion may
    still vary the graph slightly). Aliases: :data:`INDEX_ALIASES`. ``gpu``: train, add and
    search on GPU 0 (faiss-gpu; not for HNSW; IVF-PQ with float16 lookup tables).
    """
    faiss = _import_faiss()
    kind = canonical_index(index)
    db = l2_normalize(database)
    n, d = db.shape
    if n == 0:
        raise ValueError("cannot index an empty database")
    resources = gpu_resources(kind) if gpu else None
    if kind == "faiss-flat":
        idx = faiss.IndexFlatIP(d)
    elif kind in ("faiss-ivf", "faiss-ivfpq"):
        nlist = int(max(1, min(default_nlist(n) if nlist is None else int(nlist), n)))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "faiss-ivf":
            idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            idx = faiss.IndexIVFPQ(quantizer, d, nlist, pq_subquantizers(d, m), pq_bits(n, nbits),
                                   faiss.METRIC_INNER_PRODUCT)
            idx.pq.cp.seed = int(seed)
        idx.cp.seed = int(seed)
        if resources is not None:
            options = faiss.GpuClonerOptions()
            options.useFloat16 = kind == "faiss-ivfpq"  # needed by codes of 56 bytes and more
            idx = faiss.index_cpu_to_gpu(resources, 0, idx, options)
            idx.referenced_objects = [resources]  # keep the GPU memory manager alive with the index
        idx.train(db)
        idx.nprobe = int(max(1, min(nprobe, nlist)))
    else:
        idx = faiss.IndexHNSWFlat(d, int(M), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(efConstruction)
        idx.hnsw.efSearch = int(efSearch)
        idx.hnsw.rng = faiss.RandomGenerator(int(seed))
    if resources is not None and kind == "faiss-flat":
        idx = faiss.index_cpu_to_gpu(resources, 0, idx)
        idx.referenced_objects = [resources]
    idx.add(db)
    return idx


def search_faiss_index(idx, queries: np.ndarray, k: int,
                       exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search a FAISS index built by ``build_faiss_index`` (same return convention).

    Rows an approximate index could not fill are ``-1`` with score ``-inf``.
    """
    q = l2_normalize(queries)
    n_db = int(idx.ntotal)
    exclude = check_exclude(exclude, q.shape[0], n_db)
    kk = available_k(k, n_db, exclude)
    if q.shape[0] == 0 or kk == 0:
        return np.empty((q.shape[0], kk), np.int64), np.empty((q.shape[0], kk), np.float32)
    fetch = min(n_db, kk + (1 if exclude is not None else 0))
    if hasattr(idx, "hnsw"):
        idx.hnsw.efSearch = max(int(idx.hnsw.efSearch), fetch)
    scores, indices = idx.search(q, fetch)
    indices = indices.astype(np.int64)
    scores = scores.astype(np.float32)
    invalid = indices < 0
    if exclude is not None:
        invalid |= indices == exclude[:, None]
    scores[invalid] = -np.inf
    indices[invalid] = np.iinfo(np.int64).max  # sorts after every real row on ties
    order = np.lexsort((indices, -scores), axis=1)
    indices = np.take_along_axis(indices, order, axis=1)[:, :kk]
    scores = np.take_along_axis(scores, order, axis=1)[:, :kk]
    indices[~np.isfinite(scores)] = -1
    return indices, scores


def rescore(queries: np.ndarray, database: np.ndarray, indices: np.ndarray, k: int,
            block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine scores of candidate lists ``indices`` ``[Q, c]`` (``-1`` = none); the best
    ``min(k, c)`` of each row by exact score, ties by lower row. Rows run in query blocks so the
    gathered candidates stay small; only the candidates' rows of ``database`` are read (and normalised), so a
    memory-mapped database is never read whole."""
    q = l2_normalize(queries)
    db = database
    indices = np.asarray(indices, dtype=np.int64)
    kk = min(k, indices.shape[1])
    out_idx = np.empty((len(indices), kk), dtype=np.int64)
    out_sc = np.empty((len(indices), kk), dtype=np.float32)
    step = max(1, min(block_size, MAX_BLOCK_ELEMENTS // max(1, indices.shape[1] * db.shape[1])))
    for start in range(0, len(indices), step):
        blk = slice(start, min(len(indices), start + step))
        cand = indices[blk]
        valid = cand >= 0
        gathered = l2_normalize(np.asarray(db[np.where(valid, cand, 0).ravel()], dtype=np.float32))
        sims = np.einsum("qd,qcd->qc", q[blk], gathered.reshape(cand.shape + (db.shape[1],))).astype(np.float32)
        sims[~valid] = -np.inf
        keyed = np.where(valid, cand, np.iinfo(np.int64).max)
        order = np.lexsort((keyed, -sims), axis=1)[:, :kk]
        out_idx[blk] = np.take_along_axis(cand, order, axis=1)
        out_sc[blk] = np.take_along_axis(sims, order, axis=1)
    out_idx[~np.isfinite(out_sc)] = -1
    return out_idx, out_sc


def faiss_topk(queries: np.ndarray, database: np.ndarray, k: int, index: str = "faiss-flat",
               exclude: np.ndarray | None = None, seed: int = 0, refine: int = 1,
               **params) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-``k`` with a FAISS index (see :func:`build_faiss_index`).

    ``params`` go to ``build_faiss_index`` (``nlist``, ``nprobe``, ``m``, ``nbits``, ``M``,
    ``efSearch``, ``efConstruction``, ``gpu``). Same return convention as ``exact_topk``; ties in the
    returned lists are re-ordered by lower database row. For compressed indexes
    (``faiss-ivfpq``) the index proposes ``refine * k`` candidates whose exact cosines choose
    and order the top ``k``, so the scores are always true cosines (``refine = 1`` keeps the
    index's own top-k set: its recall is the index's).
    """
    if int(refine) < 1:
        raise ValueError(f"refine must be >= 1, got {refine}")
    q, db = check_pair(queries, database)
    kind = canonical_index(index)
    idx = build_faiss_index(db, index=kind, seed=seed, **params)
    return search_built_index(idx, kind, q, db, k, exclude=exclude, refine=refine)


def search_built_index(idx, index: str, queries: np.ndarray, database: np.ndarray, k: int,
                       exclude: np.ndarray | None = None, refine: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`faiss_topk` with an index already built (or read from disk) over ``database``
    (``database`` is only read to re-score the candidates of a compressed index)."""
    if int(refine) < 1:
        raise ValueError(f"refine must be >= 1, got {refine}")
    kind = canonical_index(index)
    if kind not in COMPRESSED_INDEXES:
        return search_faiss_index(idx, queries, k, exclude=exclude)
    q = l2_normalize(queries)  # the database is read only at the candidates' rows (it may be memory-mapped)
    if q.shape[1] != database.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the database has {database.shape[1]}")
    if not np.isfinite(q).all():
        raise ValueError("features contain NaN or infinite values")
    exclude = check_exclude(exclude, q.shape[0], database.shape[0])
    kk = available_k(k, database.shape[0], exclude)
    cand, _ = search_faiss_index(idx, q, kk * int(refine), exclude=exclude)
    return rescore(q, database, cand, kk)


def approximate_recall(queries: np.ndarray, database: np.ndarray, k: int, index: str,
                       exclude: np.ndarray | None = None, seed: int = 0, block_size: int = 1024,
                       **params) -> float:
    """recall@``k`` of a FAISS index against exact search (see :func:`recall_at_k`)."""
    exact_idx, _ = exact_topk(queries, database, k, block_size=block_size, exclude=exclude)
    approx_idx, _ = faiss_topk(queries, database, k, index=index, exclude=exclude, seed=seed,
                               **params)
    return recall_at_k(approx_idx, exact_idx)
