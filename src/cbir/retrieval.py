"""Nearest-neighbour search by cosine similarity: exact (blocked numpy) and FAISS.

Every search returns ``(indices, scores)``: ``indices`` int64 ``[Q, k']`` are database
row numbers, ``scores`` float32 ``[Q, k']`` the cosine similarities, each row ordered by
score descending with ties broken by the lower database row (which is the lower
``image_id``, because the manifest is sorted by ``image_id``). ``k' = min(k, available)``.
Pure numpy / FAISS: no files are read or written here.

FAISS indexes (:data:`FAISS_INDEXES`; the short names of :data:`INDEX_ALIASES` still work):
``faiss-flat`` (exact), ``faiss-ivf`` (inverted lists, full vectors), ``faiss-ivfpq``
(inverted lists, product-quantised codes: ``m`` bytes per vector at ``nbits = 8``) and
``faiss-hnsw`` (graph, full vectors).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pandas as pd

from cbir.errors import CbirError

#: Upper bound on the elements of one block of the query-by-database score matrix
#: (2**23 float32 = 32 MiB), so memory stays bounded whatever ``block_size`` says.
MAX_BLOCK_ELEMENTS = 1 << 23

#: Canonical FAISS index names (``retrieval.index``).
FAISS_INDEXES = ("faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")
#: Older and short names, kept working.
INDEX_ALIASES = {"flat": "faiss-flat", "ivf": "faiss-ivf", "ivfpq": "faiss-ivfpq", "hnsw": "faiss-hnsw"}
#: Indexes whose scores are approximate (compressed vectors), re-scored exactly when the
#: database is at hand (``faiss_topk``).
COMPRESSED_INDEXES = ("faiss-ivfpq",)


def l2_normalize(x: np.ndarray, atol: float = 1e-4) -> np.ndarray:
    """Rows of ``x`` as float32 with unit L2 norm; all-zero rows stay zero.

    Returns ``x`` itself (no copy) when it is already float32 with unit-norm rows,
    which is what the feature contract promises, so large databases are not copied.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    nonzero = norms > 0
    if np.all(np.abs(norms[nonzero] - 1.0) <= atol):
        return np.ascontiguousarray(x)
    out = x.astype(np.float32, copy=True)
    out[nonzero] /= norms[nonzero, None].astype(np.float32)
    return out


def query_blocks(n_queries: int, n_database: int, block_size: int,
                 max_elements: int = MAX_BLOCK_ELEMENTS) -> Iterator[slice]:
    """Slices over the queries such that one block's score matrix stays bounded."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    step = max(1, min(block_size, max_elements // max(1, n_database)))
    for start in range(0, n_queries, step):
        yield slice(start, min(start + step, n_queries))


def _check_pair(queries: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = l2_normalize(queries)
    db = l2_normalize(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the database has {db.shape[1]}")
    if not (np.isfinite(q).all() and np.isfinite(db).all()):
        raise ValueError("features contain NaN or infinite values")
    return q, db


def _check_exclude(exclude: np.ndarray | None, n_queries: int, n_database: int) -> np.ndarray | None:
    if exclude is None:
        return None
    exclude = np.asarray(exclude, dtype=np.int64)
    if exclude.shape != (n_queries,):
        raise ValueError(f"exclude must have shape ({n_queries},), got {exclude.shape}")
    if np.any((exclude < -1) | (exclude >= n_database)):
        raise ValueError("exclude holds database rows out of range (use -1 for none)")
    return exclude if np.any(exclude >= 0) else None


def available_k(k: int, n_database: int, exclude: np.ndarray | None) -> int:
    """``min(k, rows a query can return)``: one fewer when a row is excluded."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_avail = n_database - (1 if exclude is not None and np.any(np.asarray(exclude) >= 0) else 0)
    return max(0, min(k, n_avail))


def _topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` columns of each row: score descending, ties by lower column."""
    n = scores.shape[1]
    if k >= n:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    # partition at k-1 and k: both the k-th and the (k+1)-th best land in place
    part = np.argpartition(-scores, (k - 1, k), axis=1)
    kth = np.take_along_axis(scores, part[:, k - 1:k + 1], axis=1)
    part = part[:, :k]
    part.sort(axis=1)  # column order, so the stable sort below breaks ties by lower column
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    # a tie straddling the cut (k-th == (k+1)-th) lets argpartition pick any of the tied
    # columns; redo those rows with a full stable sort so the lower columns win.
    for row in np.flatnonzero(kth[:, 0] == kth[:, 1]):
        top[row] = np.argsort(-scores[row], kind="stable")[:k]
    return top


def exact_topk(queries: np.ndarray, database: np.ndarray, k: int, block_size: int = 1024,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``k`` of each query in the database.

    Cosine is the inner product of L2-normalised float32 rows, computed for blocks of
    ``block_size`` queries against chunks of the database whose top-k lists are merged,
    so the whole ``Q x N`` matrix never exists for large inputs. ``exclude``
    (int ``[Q]``, ``-1`` = none) names one database row per query that must not be
    returned (leave-one-out). Returns int64 indices and float32 scores ``[Q, k']``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    q, db = _check_pair(queries, database)
    n_q, n_db = q.shape[0], db.shape[0]
    exclude = _check_exclude(exclude, n_q, n_db)
    kk = available_k(k, n_db, exclude)
    indices = np.empty((n_q, kk), dtype=np.int64)
    scores = np.empty((n_q, kk), dtype=np.float32)
    if kk == 0 or n_q == 0:
        return indices, scores
    step = max(1, min(block_size, n_q))
    for start in range(0, n_q, step):
        blk = slice(start, min(n_q, start + step))
        excl = None if exclude is None else exclude[blk]
        indices[blk], scores[blk] = _block_topk(q[blk], db, kk, excl)
    return indices, scores


def _block_topk(q: np.ndarray, db: np.ndarray, k: int,
                exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one query block, scanning the database in chunks and merging.

    The chunk width keeps ``len(q) x chunk`` under ``MAX_BLOCK_ELEMENTS``. Merging the
    per-chunk top-k lists under the total order (score desc, row asc) is exact: every
    row of the global top-k is in its own chunk's top-k.
    """
    n_db = db.shape[0]
    chunk = max(k, MAX_BLOCK_ELEMENTS // max(1, q.shape[0]))
    best_idx = best_sc = None
    for lo in range(0, n_db, chunk):
        hi = min(n_db, lo + chunk)
        sims = q @ db[lo:hi].T
        if exclude is not None:
            rows = np.flatnonzero((exclude >= lo) & (exclude < hi))
            sims[rows, exclude[rows] - lo] = -np.inf
        top = _topk_rows(sims, min(k, hi - lo))
        top_sc = np.take_along_axis(sims, top, axis=1)
        top += lo
        if best_idx is None:
            best_idx, best_sc = top, top_sc
            continue
        cand_idx = np.concatenate([best_idx, top], axis=1)
        cand_sc = np.concatenate([best_sc, top_sc], axis=1)
        order = np.lexsort((cand_idx, -cand_sc), axis=1)[:, :k]
        best_idx = np.take_along_axis(cand_idx, order, axis=1)
        best_sc = np.take_along_axis(cand_sc, order, axis=1)
    return best_idx, best_sc


def split_indices(manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Query rows, database rows and the per-query excluded database position.

    ``holdout`` / ``predefined``: queries are the ``split == "query"`` rows, the database
    the ``split == "database"`` rows, nothing excluded (``None``). ``leave_one_out``:
    every row queries every row and ``exclude[i] = i`` drops the query itself.
    ``exclude`` holds positions in the database rows (what ``exact_topk`` expects).
    """
    for column in ("split", "protocol"):
        if column not in manifest.columns:
            raise CbirError(f"manifest has no '{column}' column: re-run the curate stage")
    protocols = sorted(set(manifest["protocol"].astype(str)))
    if len(protocols) != 1:
        raise CbirError(f"manifest mixes protocols {protocols}: re-run the curate stage")
    protocol = protocols[0]
    split = manifest["split"].astype(str).to_numpy()
    if protocol == "leave_one_out":
        rows = np.arange(len(manifest), dtype=np.int64)
        if len(rows) < 2:
            raise CbirError("leave_one_out needs at least 2 images in the manifest")
        return rows, rows.copy(), rows.copy()
    if protocol in ("holdout", "predefined"):
        unknown = sorted(set(split) - {"query", "database"})
        if unknown:
            raise CbirError(f"manifest split has values {unknown}; expected 'query' or 'database'")
        query_rows = np.flatnonzero(split == "query").astype(np.int64)
        database_rows = np.flatnonzero(split == "database").astype(np.int64)
        if len(query_rows) == 0 or len(database_rows) == 0:
            raise CbirError(
                f"manifest ({protocol}) has {len(query_rows)} query and {len(database_rows)} "
                "database rows; both must be non-empty: check the split settings and re-run curate")
        return query_rows, database_rows, None
    raise CbirError(f"unknown protocol '{protocol}' in the manifest; expected holdout, "
                    "predefined or leave_one_out")


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
    exclude = _check_exclude(exclude, q.shape[0], n_db)
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
    gathered candidates stay small."""
    q = l2_normalize(queries)
    db = l2_normalize(database)
    indices = np.asarray(indices, dtype=np.int64)
    kk = min(k, indices.shape[1])
    out_idx = np.empty((len(indices), kk), dtype=np.int64)
    out_sc = np.empty((len(indices), kk), dtype=np.float32)
    step = max(1, min(block_size, MAX_BLOCK_ELEMENTS // max(1, indices.shape[1] * db.shape[1])))
    for start in range(0, len(indices), step):
        blk = slice(start, min(len(indices), start + step))
        cand = indices[blk]
        valid = cand >= 0
        sims = np.einsum("qd,qcd->qc", q[blk], db[np.where(valid, cand, 0)]).astype(np.float32)
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
    q, db = _check_pair(queries, database)
    kind = canonical_index(index)
    idx = build_faiss_index(db, index=kind, seed=seed, **params)
    if kind not in COMPRESSED_INDEXES:
        return search_faiss_index(idx, q, k, exclude=exclude)
    exclude = _check_exclude(exclude, q.shape[0], db.shape[0])
    kk = available_k(k, db.shape[0], exclude)
    cand, _ = search_faiss_index(idx, q, kk * int(refine), exclude=exclude)
    return rescore(q, db, cand, kk)


def approximate_recall(queries: np.ndarray, database: np.ndarray, k: int, index: str,
                       exclude: np.ndarray | None = None, seed: int = 0, block_size: int = 1024,
                       **params) -> float:
    """recall@``k`` of a FAISS index against exact search (see :func:`recall_at_k`)."""
    exact_idx, _ = exact_topk(queries, database, k, block_size=block_size, exclude=exclude)
    approx_idx, _ = faiss_topk(queries, database, k, index=index, exclude=exclude, seed=seed,
                               **params)
    return recall_at_k(approx_idx, exact_idx)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact top-k found in the approximate top-k."""
    approx_idx = np.asarray(approx_idx)
    exact_idx = np.asarray(exact_idx)
    if approx_idx.ndim != 2 or exact_idx.ndim != 2 or approx_idx.shape[0] != exact_idx.shape[0]:
        raise ValueError(f"expected two [Q, k] arrays with the same Q, got {approx_idx.shape} "
                         f"and {exact_idx.shape}")
    if exact_idx.shape[0] == 0 or exact_idx.shape[1] == 0:
        return float("nan")
    found = np.zeros(exact_idx.shape, dtype=bool)
    for j in range(approx_idx.shape[1]):
        col = approx_idx[:, j:j + 1]
        found |= (exact_idx == col) & (col >= 0)
    valid = exact_idx >= 0
    per_query = found.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return float(per_query.mean())


def ranking_frame(query_ids, database_ids, indices: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Long table ``query_id, rank, image_id, score`` (rank 1-based); ``-1`` slots dropped."""
    query_ids = np.asarray(query_ids)
    database_ids = np.asarray(database_ids)
    indices = np.asarray(indices)
    scores = np.asarray(scores, dtype=np.float32)
    if indices.shape != scores.shape or indices.ndim != 2 or indices.shape[0] != len(query_ids):
        raise ValueError(f"indices {indices.shape}, scores {scores.shape} and {len(query_ids)} "
                         "query ids do not line up")
    n_q, kk = indices.shape
    valid = (indices >= 0).ravel()
    flat_idx = indices.ravel()
    frame = pd.DataFrame({
        "query_id": np.repeat(query_ids, kk)[valid],
        "rank": np.tile(np.arange(1, kk + 1, dtype=np.int64), n_q)[valid],
        "image_id": database_ids[flat_idx[valid]],
        "score": scores.ravel()[valid],
    })
    return frame.reset_index(drop=True)
