"""Where the judged rows land in each query's exact cosine ranking, without sorting the ranking.

The evaluator needs only the ranks of a query's positives (and of its junk, which is removed before
scoring), not the order of the whole database. For one query block the scores are the same product as
:func:`cbir.search.exact.full_ranking`'s (``q[block] @ db.T`` over the same query blocks, the excluded row at
``-inf``), so the ranks are those of that ranking bit for bit: a row's rank is the number of rows scoring
higher plus the number of rows with the same score and a lower row number (ties break by score, then
database row). Each score row is sorted once (``np.sort``, SIMD, the rows of a block split over one thread
per core) and the judged rows' scores are looked up in it (``np.searchsorted``); a judged row whose score
another row shares gets its place among those rows by row number. Memory: two ``[B, N]`` float32 blocks at a time (``B`` from
:func:`~cbir.search.exact.query_blocks`, at most ``MAX_BLOCK_ELEMENTS`` elements each: 64 MiB).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from cbir.scoring.judgements import Judgements
from cbir.search.exact import check_exclude, check_pair, query_blocks


def ranks_of(scores: np.ndarray, ascending: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """0-based ranks of database ``rows`` in the order (score descending, row ascending) of one query.

    ``scores`` ``[N]`` is the query's score row and ``ascending`` the same values sorted ascending. A row's
    rank is the count of scores above its own plus, when its score is shared (an exact tie), the count of
    rows with that score and a lower row number. Returns int64 ranks aligned with ``rows``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    values = scores[rows]
    order = np.argsort(values)
    ordered = values[order]
    at_most = np.searchsorted(ascending, ordered, side="right")  # rows scoring <= each value
    tied = order[at_most - np.searchsorted(ascending, ordered, side="left") > 1]
    out = np.empty(rows.size, dtype=np.int64)
    out[order] = scores.size - at_most
    if tied.size:  # the rows sharing one of these scores, by value then row: each one's place in its group
        same = np.flatnonzero(np.isin(scores, values[tied]))  # ascending rows
        by_value = same[np.argsort(scores[same], kind="stable")]
        group = scores[by_value]
        place = np.arange(by_value.size) - np.searchsorted(group, group, side="left")
        out[tied] += place[np.argsort(by_value)][np.searchsorted(same, rows[tied])]
    return out


def sorted_ranks(scores: np.ndarray, ascending: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """:func:`ranks_of` of a set of ``rows``, sorted ascending: without an exact tie the sorted scores give
    them (no argsort); with one, :func:`ranks_of`."""
    values = np.sort(scores[np.asarray(rows, dtype=np.int64)])
    at_most = np.searchsorted(ascending, values, side="right")
    if np.any(at_most - np.searchsorted(ascending, values, side="left") > 1):
        return np.sort(ranks_of(scores, ascending, rows))
    return (scores.size - at_most)[::-1].astype(np.int64)


def hit_ranks(scores: np.ndarray, ascending: np.ndarray, positives: np.ndarray, junk: np.ndarray,
              length: int) -> np.ndarray:
    """Sorted 0-based ranks of the counted positives (not junk) within the first ``length`` places of one
    query's ranking, once the junk in those places is removed (the places after a junk row move up)."""
    counted = positives[~np.isin(positives, junk)] if junk.size else positives
    ranks = sorted_ranks(scores, ascending, counted)
    ranks = ranks[ranks < length]
    if junk.size:
        junk_ranks = sorted_ranks(scores, ascending, junk)
        ranks = ranks - np.searchsorted(junk_ranks[junk_ranks < length], ranks)
    return ranks


def _workers() -> int:
    """The cores this process may use: the sorts run in that many threads (numpy releases the GIL)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def judged_hits(queries: np.ndarray, database: np.ndarray, judgements: Judgements,
                exclude: np.ndarray | None = None,
                block_size: int = 1024) -> Iterator[tuple[slice, np.ndarray, np.ndarray, int]]:
    """The hits of every query's whole exact ranking, block by block, without the ranking itself.

    Yields ``(query slice, rows, cols, length)``: hit ``h`` is query ``slice.start + rows[h]`` at 0-based rank
    ``cols[h]`` (junk removed), row-major like ``np.nonzero`` of the block's relevance matrix; ``length`` is
    the ranking's length (``N``, or ``N - 1`` with ``exclude``), as :func:`~cbir.search.exact.full_ranking`.
    """
    q, db = check_pair(queries, database)
    n_q, n_db = q.shape[0], db.shape[0]
    if len(judgements) != n_q or judgements.n_database != n_db:
        raise ValueError(f"{len(judgements)} judgements over {judgements.n_database} rows for {n_q} queries "
                         f"and {n_db} database rows")
    exclude = check_exclude(exclude, n_q, n_db)
    length = n_db - (1 if exclude is not None else 0)
    with ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="cbir-ranks") as pool:  # per call: fork-safe
        for blk in query_blocks(n_q, n_db, block_size):
            yield _block_hits(q, db, blk, judgements, exclude, length, pool)


def _block_hits(q: np.ndarray, db: np.ndarray, blk: slice, judgements: Judgements, exclude: np.ndarray | None,
                length: int, pool: ThreadPoolExecutor) -> tuple[slice, np.ndarray, np.ndarray, int]:
    n_b = blk.stop - blk.start
    if length == 0:
        return blk, np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    sims = q[blk] @ db.T  # full_ranking's product: the same scores bit for bit
    if exclude is not None:
        mine = np.flatnonzero(exclude[blk] >= 0)
        sims[mine, exclude[blk][mine]] = -np.inf
    items = judgements.items[blk]

    def part(lo: int, hi: int) -> list[np.ndarray]:
        ascending = np.sort(sims[lo:hi], axis=1)
        return [hit_ranks(sims[i], ascending[i - lo], items[i].positives, items[i].junk, length)
                for i in range(lo, hi)]

    cuts = np.linspace(0, n_b, min(n_b, _workers()) + 1).astype(int)
    parts = [r for chunk in pool.map(part, cuts[:-1], cuts[1:]) for r in chunk]
    counts = np.fromiter((p.size for p in parts), dtype=np.int64, count=n_b)
    cols = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return blk, np.repeat(np.arange(n_b, dtype=np.int64), counts), cols, length
