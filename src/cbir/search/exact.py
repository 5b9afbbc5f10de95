"""Exact nearest-neighbour search by cosine similarity (blocked numpy).

Every search returns ``(indices, scores)``: ``indices`` int64 ``[Q, k']`` are database
row numbers, ``scores`` float32 ``[Q, k']`` the cosine similarities, each row ordered by
score descending with ties broken by the lower database row (which is the lower
``image_id``, because the manifest is sorted by ``image_id``). ``k' = min(k, available)``.
Pure numpy: no files are read or written here.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

#: Upper bound on the elements of one block of the query-by-database score matrix
#: (2**23 float32 = 32 MiB), so memory stays bounded whatever ``block_size`` says.
MAX_BLOCK_ELEMENTS = 1 << 23


def l2_normalize(x: np.ndarray, atol: float = 1e-4) -> np.ndarray:
    """Rows of ``x`` as float32 with unit L2 norm; all-zero rows stay zero.

    Returns ``x`` itself (no copy) when it is already float32 with unit-norm rows,
    which is what the feature contract promises, so large databases are not copied.
    Extraction's :func:`cbir.features.common.unit_rows` always divides and sums squares
    in float32; this one, for search, passes stored unit rows through untouched and sums
    squares in float64, so the scores of stored features never change by a re-rounding.
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


def check_pair(queries: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = l2_normalize(queries)
    db = l2_normalize(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the database has {db.shape[1]}")
    if not (np.isfinite(q).all() and np.isfinite(db).all()):
        raise ValueError("features contain NaN or infinite values")
    return q, db


def check_exclude(exclude: np.ndarray | None, n_queries: int, n_database: int) -> np.ndarray | None:
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


def full_order(scores: np.ndarray) -> np.ndarray:
    """Column order of each row: score descending, ties by lower column.

    A quicksort is unique, hence correct, for rows without equal scores; rows that have
    ties are re-sorted with a stable sort (which is slower, so only where needed).
    """
    neg = -scores
    order = np.argsort(neg, axis=1)
    ranked = np.take_along_axis(neg, order, axis=1)
    for row in np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1)):
        order[row] = np.argsort(neg[row], kind="stable")
    return order


def _topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` columns of each row: score descending, ties by lower column."""
    n = scores.shape[1]
    if 2 * k >= n:  # most of the row: sorting it all is cheaper than partitioning first
        return full_order(scores)[:, :k]
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
    q, db = check_pair(queries, database)
    n_q, n_db = q.shape[0], db.shape[0]
    exclude = check_exclude(exclude, n_q, n_db)
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


def full_ranking(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None,
                 block_size: int = 1024) -> Iterator[tuple[slice, np.ndarray]]:
    """Each query's ranking of the WHOLE database, block by block: ``(query slice, rows [B, L])``.

    The same search as :func:`exact_topk` with ``k`` = every row a query can return (so
    ``L = N``, or ``N - 1`` with ``exclude``), yielded in query blocks whose score matrix
    stays under ``MAX_BLOCK_ELEMENTS`` so memory is bounded for any ``Q x N``.
    """
    q, db = check_pair(queries, database)
    n_q, n_db = q.shape[0], db.shape[0]
    exclude = check_exclude(exclude, n_q, n_db)
    length = n_db - (1 if exclude is not None else 0)
    for blk in query_blocks(n_q, n_db, block_size):
        if length == 0:
            yield blk, np.empty((blk.stop - blk.start, 0), dtype=np.int64)
            continue
        excl = None if exclude is None else exclude[blk]
        yield blk, _block_topk(q[blk], db, length, excl)[0]


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
