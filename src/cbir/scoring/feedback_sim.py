"""The simulated user of :mod:`cbir.scoring.feedback_eval`, query block by query block, in bounded memory.

Every query is independent of the others, so a block of queries runs all its rounds before the next block
starts: nothing of size ``Q x N`` ever exists. Per query and round the direction of
:func:`cbir.search.feedback.direction` is scored against the database by the same one-query product as
:func:`cbir.search.feedback.rank` (so the shown lists and scores are the query tool's, bit for bit), the user
sees the best ``top_k`` of the rows not yet shown, and the round is scored on the residual collection from the
ranks of the judged rows alone (:func:`cbir.scoring.ranks.ranks_of`: one sort of the score row, exact ties by row).

Memory: the database, plus two ``[B, N]`` float32 arrays of the block's round-0 scores (sorted and not;
``B * N <= MAX_BLOCK_ELEMENTS``, 64 MiB together), plus one query's ``[N]`` rows, plus the results
(``rounds + 1`` rows per query, ``top_k`` trace rows per query and round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cbir.scoring.evaluation import hit_metrics
from cbir.scoring.judgements import Judgements
from cbir.scoring.ranks import sorted_ranks
from cbir.search.exact import MAX_BLOCK_ELEMENTS, l2_normalize
from cbir.search.feedback import FeedbackSettings, Marks, direction


@dataclass
class QueryRounds:
    """One query's rounds: per round the residual ranking's ``scored`` ``(n_relevant, p@P_AT, AP)`` and the
    initial ranking's ``base`` ``(p@P_AT, AP)`` on the same residual collection (P@k before the check that the
    residual collections hold k images), the residual size, the marks shown so far, and the shown ``top``
    rows, their ``scores`` and relevance; ``used`` the method that ranked each round."""

    scored: list
    base: list
    residual: list
    n_shown: list
    top: list
    scores: list
    relevant: list
    used: list


def query_metrics(ranks: np.ndarray, p_at: int) -> tuple[int, float, float]:
    """``(n_relevant, p@p_at, AP)`` of one residual ranking from its hits' sorted ranks (R = the hits): the
    numbers :func:`cbir.scoring.evaluation.hit_metrics` gives this query among any others."""
    columns, _, _ = hit_metrics(np.zeros(ranks.size, np.int64), ranks, 1, max(p_at, 1), ks=(p_at,), curve_k=0)
    return int(columns["n_relevant"][0]), float(columns[f"p@{p_at}"][0]), float(columns["ap"][0])


def removed_ranks(scores: np.ndarray, ascending: np.ndarray, positives: np.ndarray, removed: np.ndarray,
                  ) -> np.ndarray:
    """Sorted 0-based ranks of ``positives`` (none of them in ``removed``) once the ``removed`` rows are taken
    out of the ranking (score descending, row ascending): the ranks after a removed row move up."""
    ranks = sorted_ranks(scores, ascending, positives)
    if removed.size:
        ranks = ranks - np.searchsorted(sorted_ranks(scores, ascending, removed), ranks)
    return ranks


def member(rows: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``rows`` are in ``sorted_set`` (sorted int64)."""
    if sorted_set.size == 0:
        return np.zeros(rows.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, rows), sorted_set.size - 1)
    return sorted_set[at] == rows


def shown_top(scores: np.ndarray, ascending: np.ndarray, hidden: np.ndarray, top_k: int) -> np.ndarray:
    """The best ``top_k`` rows (score descending, row ascending) that are not ``hidden`` (sorted): the list
    :func:`cbir.search.feedback.rank` returns. ``ascending``: ``scores`` sorted."""
    want = min(scores.size, top_k + hidden.size)
    if want == 0:
        return np.zeros(0, np.int64)
    rows = np.flatnonzero(scores >= ascending[scores.size - want])  # the best ``want`` and rows tied with the last
    top = rows[np.lexsort((rows, -scores[rows]))][:want]
    return top[~member(top, hidden)][:top_k]


def one_query(q: np.ndarray, db: np.ndarray, s0: np.ndarray, asc0: np.ndarray, positives: np.ndarray,
              junk: np.ndarray, exclude: int, settings: FeedbackSettings, rounds: int, top_k: int,
              p_at: int) -> QueryRounds:
    """Rounds 0..``rounds`` of one query (``positives``: the counted ones; ``s0``/``asc0`` its round-0 scores
    and their ascending sort)."""
    marks = Marks()
    out = QueryRounds([], [], [], [], [], [], [], [])
    for r in range(rounds + 1):
        d = direction(q, db, marks, settings)
        if r == 0:
            s, asc = s0, asc0  # no marks: the query itself, the same product
        else:
            s = (l2_normalize(d.vector[None]) @ db.T)[0]  # rank()'s product for one query
            asc = np.sort(s)
        hidden = np.unique(np.asarray(marks.marked + ((exclude,) if exclude >= 0 else ()), dtype=np.int64))
        removed = np.union1d(hidden, junk)
        left = positives[~member(positives, removed)]
        out.scored.append(query_metrics(removed_ranks(s, asc, left, removed), p_at))
        out.base.append(query_metrics(removed_ranks(s0, asc0, left, removed), p_at)[1:])
        out.residual.append(s.size - hidden.size)
        out.n_shown.append(len(marks.marked))
        out.used.append(d.used)
        top = shown_top(s, asc, hidden, top_k)
        good = member(top, positives)
        out.top.append(top)
        out.scores.append((d.scale * s[top].astype(np.float64) + d.offset).astype(np.float32))
        out.relevant.append(good)
        if r < rounds:
            bad = ~good & ~member(top, junk)  # junk shown is neither relevant nor irrelevant
            marks = marks.add(top[good].tolist(), top[bad].tolist())
    return out


def run_queries(queries: np.ndarray, database: np.ndarray, judgements: Judgements, settings: FeedbackSettings,
                rounds: int, top_k: int, p_at: int, exclude: np.ndarray | None = None,
                block_size: int = 1024) -> list[QueryRounds]:
    """:func:`one_query` for every query, the round-0 products one block of queries at a time (module
    docstring for the memory)."""
    db = l2_normalize(database)
    q = l2_normalize(queries)
    n_q, n_db = q.shape[0], db.shape[0]
    if len(judgements) != n_q or judgements.n_database != n_db:
        raise ValueError(f"{len(judgements)} judgements over {judgements.n_database} rows for {n_q} queries "
                         f"and {n_db} database rows")
    exclude = np.full(n_q, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(n_q)
    step = max(1, min(block_size, MAX_BLOCK_ELEMENTS // max(1, n_db)))
    out = []
    for lo in range(0, n_q, step):
        hi = min(n_q, lo + step)
        # one query at a time, as rank() scores it: a query's scores do not depend on its batch
        s0 = np.stack([(q[i:i + 1] @ db.T)[0] for i in range(lo, hi)]) if n_db else np.zeros((hi - lo, 0), np.float32)
        asc0 = np.sort(s0, axis=1)
        for i in range(lo, hi):
            item = judgements.items[i]
            out.append(one_query(q[i], db, s0[i - lo], asc0[i - lo], item.counted, item.junk, int(exclude[i]),
                                 settings, rounds, top_k, p_at))
    return out


def round_scores(per_query: Sequence[QueryRounds], r: int, p_at: int, length: int):
    """``(n_relevant, p@p_at, ap, initial p@p_at, initial ap)`` arrays of round ``r`` over the queries; P@k is
    NaN where the largest residual collection, ``length``, is shorter than k (as the evaluator leaves it out)."""
    scored = np.array([one.scored[r] for one in per_query], dtype=np.float64).reshape(-1, 3)
    base = np.array([one.base[r] for one in per_query], dtype=np.float64).reshape(-1, 2)
    valid = p_at <= length
    return (scored[:, 0].astype(np.int64), scored[:, 1] if valid else np.full(len(scored), np.nan), scored[:, 2],
            base[:, 0] if valid else np.full(len(base), np.nan), base[:, 1])
