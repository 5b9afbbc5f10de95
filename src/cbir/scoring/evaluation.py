"""Retrieval metrics of rankings against relevance judgements (:mod:`cbir.scoring.judgements`).

One pure evaluator, :func:`evaluate`, takes rankings (database rows in rank order) and one
judgement per query; it knows nothing of features or search (:func:`evaluate_hits` takes the
hits alone). :func:`ranking_statistics` is the convenience the evaluate stage uses: the exact
cosine ranking of the whole database (the order of :func:`cbir.search.exact.full_ranking`) scored
against class labels, from the positives' ranks only (:mod:`cbir.scoring.ranks`), in bounded memory.

Definitions. Junk rows are removed from a ranking before anything is counted (the ranks
after them move up), as revisitop does; ``L`` is the ranking's length and ``R`` the number
of positives that are not junk (under leave-one-out the query's own row is junk):

* ``P@k = hits in the top k / k`` and ``R@k = hits in the top k / R`` (only ``k <= L``);
* AP, in two named variants (``AP_VARIANTS``); ``rank_j`` is the 1-based rank of the j-th hit:

  - ``"non-interpolated"`` (the default, for class-level data): ``AP = (1/R) Σ_j j / rank_j``,
    the mean of the precision at each hit over ALL ``R`` positives (the definition of
    ``sklearn.metrics.average_precision_score`` on a tie-free ranking);
  - ``"trapezoidal"`` (revisitop's ``compute_ap``, used for ROxford5k/RParis6k): the area under the
    precision-recall curve by the trapezoid rule, each hit adding a recall step ``1/R`` times the mean
    of the precision just before it, ``(j-1)/(rank_j-1)`` (1 at rank 1), and at it, ``j/rank_j``;

* ``AP@10``: the same per-hit terms summed over the top 10, divided by ``min(R, 10)``;
* interpolated precision at recall r = max precision at any rank whose recall is ≥ r,
  for r = 0.0, 0.1, …, 1.0.

A query with no relevant item (R = 0) has ``P@k = 0`` (well defined), while ``R@k``,
``AP``, ``AP@10`` and its PR curve are undefined: they are NaN in the per-query table
and left out of every mean (mAP is the mean over queries that have a relevant item, as
in Radenović et al.'s ``compute_map``); ``summarize`` reports how many such queries
there were as ``n_queries_without_relevant``. The benchmarks' own scores (revisitop's
E/M/H mAP and mP@k, UKBench's N-S, DISC21's µAP) are in :mod:`cbir.scoring.benchmark_metrics`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from cbir.errors import CbirError
from cbir.scoring.judgements import JUNK, POSITIVE, Judgements
from cbir.scoring.ranks import judged_hits
from cbir.scoring.statistics import bootstrap_ci

RECALL_LEVELS = np.round(np.linspace(0.0, 1.0, 11), 1)

#: the AP variants by name (the name is recorded beside the numbers in the metrics file)
AP_VARIANTS = ("non-interpolated", "trapezoidal")
DEFAULT_AP = "non-interpolated"


@dataclass
class RankingStats:
    """Everything one pass over the full rankings yields.

    ``per_query``: one row per query (``query_id, label, n_relevant, p@k…, r@k…, ap,
    ap@10``); ``precision_at``: ``[Q, K]`` P@k for k = 1..K; ``interpolated``:
    ``[Q, 11]`` interpolated precision at ``RECALL_LEVELS`` (NaN rows when R = 0);
    ``ap``: the AP variant of the ``ap`` and ``ap@10`` columns.
    """

    per_query: pd.DataFrame
    precision_at: np.ndarray
    interpolated: np.ndarray
    n_database: int
    ap: str = DEFAULT_AP


def judged_relevance(rows: np.ndarray, judgements: Judgements, start: int = 0) -> np.ndarray:
    """Boolean relevance ``[B, L]`` of rankings ``rows`` (queries ``start..start+B-1``), junk removed.

    A row's junk is dropped and the items after it move up; the freed places at the end are
    not relevant, so the shape stays ``[B, L]``.
    """
    status = judgements.status(rows, start)
    rel = status == POSITIVE
    junk = status == JUNK
    if not junk.any():
        return rel
    place = np.cumsum(~junk, axis=1) - 1  # the rank of each kept item once junk is gone (0-based)
    out = np.zeros_like(rel)
    r, c = np.nonzero(rel)
    out[r, place[r, c]] = True
    return out


def hit_terms(hits: np.ndarray, rows: np.ndarray, cols: np.ndarray, ap: str = DEFAULT_AP) -> np.ndarray:
    """Each hit's contribution to ``R · AP``: ``hits[rows, cols]`` is j (hits up to and including it) at
    0-based rank ``cols``. See the module docstring for the two variants."""
    if ap not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant {ap!r}: use one of {', '.join(AP_VARIANTS)}")
    return _terms(hits[rows, cols], cols, ap)


def _terms(j: np.ndarray, cols: np.ndarray, ap: str) -> np.ndarray:
    """Per-hit terms from ``j`` (hits so far) and the 0-based rank ``cols``."""
    at_hit = j / (cols + 1.0)
    if ap == "non-interpolated":
        return at_hit
    with np.errstate(invalid="ignore", divide="ignore"):
        before = np.where(cols == 0, 1.0, (j - 1) / np.maximum(cols, 1).astype(np.float64))
    return (before + at_hit) / 2.0


def relevance_metrics(relevance: np.ndarray, ks: Sequence[int] = (1, 5, 10, 20, 50), curve_k: int = 0,
                      n_relevant: np.ndarray | None = None,
                      ap: str = DEFAULT_AP) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Metrics of ranked boolean relevance lists ``[Q, L]``.

    ``n_relevant`` is each query's ``R``; by default the hits in its row (right when each row is
    the whole ranking). Returns ``(columns, precision_at [Q, min(curve_k, L)], interpolated [Q, 11])``
    where ``columns`` maps ``n_relevant``, ``p@k``, ``r@k`` (k ≤ L), ``ap`` and ``ap@10`` (variant
    ``ap``) to per-query arrays (see the module docstring for the definitions and R = 0).
    """
    rel = np.asarray(relevance, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be [Q, L], got shape {rel.shape}")
    rows, cols = np.nonzero(rel)
    return hit_metrics(rows, cols, rel.shape[0], rel.shape[1], ks, curve_k, n_relevant, ap)


def hit_metrics(rows: np.ndarray, cols: np.ndarray, n_queries: int, length: int,
                ks: Sequence[int] = (1, 5, 10, 20, 50), curve_k: int = 0, n_relevant: np.ndarray | None = None,
                ap: str = DEFAULT_AP) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`relevance_metrics` from the hits alone: hit ``h`` is query ``rows[h]`` at 0-based rank ``cols[h]``
    of a ranking of ``length``, row-major (queries ascending, ranks ascending within a query), as
    ``np.nonzero`` of the relevance matrix gives them. Every number is the same float, bit for bit."""
    if ap not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant {ap!r}: use one of {', '.join(AP_VARIANTS)}")
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    n_q = int(n_queries)
    found = np.bincount(rows, minlength=n_q).astype(np.int64)
    if n_relevant is None:
        n_rel = found
    else:
        n_rel = np.asarray(n_relevant, dtype=np.int64)
        if n_rel.shape != (n_q,) or np.any(n_rel < found):
            raise ValueError("n_relevant must be [Q] and at least the hits in each ranking")
    has_rel = n_rel > 0
    bounds = np.searchsorted(rows, np.arange(n_q + 1))
    j = np.arange(1, rows.size + 1, dtype=np.int64) - bounds[rows]  # hits up to and including each hit
    at_hits = j / (cols + 1.0)
    terms = at_hits if ap == DEFAULT_AP else _terms(j, cols, ap)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(has_rel, n_rel, np.nan)
        out: dict[str, np.ndarray] = {"n_relevant": n_rel}
        top_hits = {k: np.bincount(rows[cols < k], minlength=n_q) for k in valid_ks(ks, length)}
        for k, hits in top_hits.items():
            out[f"p@{k}"] = hits / k
        for k, hits in top_hits.items():
            out[f"r@{k}"] = hits / denom
        out["ap"] = np.bincount(rows, weights=terms, minlength=n_q) / denom
        top = cols < 10
        out["ap@10"] = (np.bincount(rows[top], weights=terms[top], minlength=n_q)
                        / np.minimum(denom, 10))
    curve = min(curve_k, length)
    early = cols < curve
    counts = np.bincount(rows[early] * curve + cols[early], minlength=n_q * curve).reshape(n_q, curve)
    precision_at = np.cumsum(counts, axis=1) / np.arange(1, curve + 1, dtype=np.float64)
    interpolated = np.full((n_q, len(RECALL_LEVELS)), np.nan)
    for i in np.flatnonzero(has_rel):
        prec = at_hits[bounds[i]:bounds[i + 1]]
        n_found, total = len(prec), int(n_rel[i])
        if n_found == 0:
            interpolated[i] = 0.0
            continue
        best_after = np.append(np.maximum.accumulate(prec[::-1])[::-1], 0.0)  # 0 past the last hit found
        # the first hit whose recall j/R reaches level r (tolerance for the 0.1 steps)
        first = np.ceil(RECALL_LEVELS * (total if n_found < total else n_found) - 1e-9).astype(np.int64)
        interpolated[i] = best_after[np.minimum(np.clip(first, 1, total) - 1, n_found)]
    return out, precision_at, interpolated


def valid_ks(ks: Sequence[int], n_database: int) -> list[int]:
    """The cut-offs that fit in a ranking of ``n_database`` items, sorted and unique."""
    return sorted({int(k) for k in ks if 1 <= int(k) <= n_database})


def ranking_blocks(rankings) -> Iterable[tuple[slice, np.ndarray]]:
    """``rankings`` as ``(query slice, rows [B, L])`` blocks: a ``[Q, L]`` array is one block."""
    if isinstance(rankings, np.ndarray) or (isinstance(rankings, (list, tuple)) and rankings
                                            and not isinstance(rankings[0], tuple)):
        rows = np.asarray(rankings, dtype=np.int64)
        if rows.ndim != 2:
            raise ValueError(f"rankings must be [Q, L] database rows, got shape {rows.shape}")
        return [(slice(0, rows.shape[0]), rows)]
    return rankings


def evaluate(rankings, judgements: Judgements, ks: Sequence[int] = (1, 5, 10, 20, 50),
             curve_k: int | None = None, ap: str = DEFAULT_AP, query_ids: Sequence | None = None,
             labels: Sequence | None = None) -> RankingStats:
    """The evaluator: rankings against judgements, nothing else.

    Args:
        rankings: database rows in rank order, ``[Q, L]`` int (the whole ranking, or a top-L: the
            positives it misses count as missed), or an iterable of ``(query slice, rows [B, L])``
            blocks in query order.
        judgements: one per query (:class:`cbir.scoring.judgements.Judgements`).
        ks: cut-offs of ``p@k`` and ``r@k``; ``curve_k`` (default ``max(ks)``) the last k of the P@k curve.
        ap: the AP variant (``AP_VARIANTS``).
        query_ids, labels: columns of the per-query table (default ``0..Q-1``; no label column).

    Returns:
        :class:`RankingStats`.
    """
    def hits():
        for blk, rows in ranking_blocks(rankings):
            rel = judged_relevance(rows, judgements, blk.start)
            yield (blk, *np.nonzero(rel), rel.shape[1])

    return evaluate_hits(hits(), judgements, ks, curve_k, ap, query_ids, labels)


def evaluate_hits(blocks: Iterable[tuple[slice, np.ndarray, np.ndarray, int]], judgements: Judgements,
                  ks: Sequence[int] = (1, 5, 10, 20, 50), curve_k: int | None = None, ap: str = DEFAULT_AP,
                  query_ids: Sequence | None = None, labels: Sequence | None = None) -> RankingStats:
    """:func:`evaluate` from the hits of each query block, ``(query slice, rows, cols, length)`` in query order
    (:func:`hit_metrics`' ``rows`` local to the block; :func:`cbir.scoring.ranks.judged_hits` yields them)."""
    if ap not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant {ap!r}: use one of {', '.join(AP_VARIANTS)}")
    n_q = len(judgements)
    query_ids = np.arange(n_q) if query_ids is None else np.asarray(query_ids)
    curve_k = max(ks) if curve_k is None else int(curve_k)
    n_rel = judgements.n_relevant()
    parts, curves, interps = [], [], []
    length, done = judgements.n_database, 0
    for blk, rows, cols, length in blocks:
        if blk.start != done:
            raise ValueError(f"ranking blocks must follow the queries in order: got {blk} after {done} queries")
        done = blk.stop
        columns, prec, interp = hit_metrics(rows, cols, blk.stop - blk.start, length, ks, curve_k, n_rel[blk], ap)
        extra = {} if labels is None else {"label": np.asarray(labels, dtype=object)[blk]}
        parts.append(pd.DataFrame({"query_id": query_ids[blk], **extra, **columns}))
        curves.append(prec)
        interps.append(interp)
    if done != n_q:
        raise ValueError(f"rankings of {done} queries but {n_q} judgements")
    if not parts:
        columns, prec, interp = relevance_metrics(np.zeros((0, length), bool), ks, curve_k, ap=ap)
        extra = {} if labels is None else {"label": []}
        parts, curves, interps = [pd.DataFrame({"query_id": [], **extra, **columns})], [prec], [interp]
    per_query = pd.concat(parts, ignore_index=True)
    return RankingStats(per_query, np.concatenate(curves), np.concatenate(interps), length, ap)


def ranking_statistics(queries: np.ndarray, database: np.ndarray, query_labels: Sequence,
                       database_labels: Sequence, ks: Sequence[int] = (1, 5, 10, 20, 50),
                       query_ids: Sequence | None = None, exclude: np.ndarray | None = None,
                       curve_k: int | None = None, block_size: int = 1024,
                       ap: str = DEFAULT_AP) -> RankingStats:
    """Class-label metrics from features: the exact cosine ranking of the whole database (the order of
    :func:`~cbir.search.exact.full_ranking`, ``exclude`` = leave-one-out) scored against
    :meth:`Judgements.from_labels <cbir.scoring.judgements.Judgements.from_labels>`. Only the positives' ranks are
    computed (:func:`cbir.scoring.ranks.judged_hits`); the numbers are :func:`evaluate`'s on the full rankings."""
    query_labels = np.asarray(query_labels, dtype=object)
    if len(query_labels) != len(queries) or len(database_labels) != len(database):
        raise ValueError("labels do not line up with the feature rows")
    judgements = Judgements.from_labels(query_labels, database_labels, exclude)
    return evaluate_hits(judged_hits(queries, database, judgements, exclude, block_size), judgements, ks,
                         curve_k, ap, query_ids, query_labels)


def per_query_metrics(queries: np.ndarray, database: np.ndarray, query_labels: Sequence,
                      database_labels: Sequence, ks: Sequence[int] = (1, 5, 10, 20, 50),
                      query_ids: Sequence | None = None, exclude: np.ndarray | None = None,
                      block_size: int = 1024) -> pd.DataFrame:
    """Per-query ``query_id, label, n_relevant, p@k…, r@k…, ap, ap@10`` from features."""
    return ranking_statistics(queries, database, query_labels, database_labels, ks=ks,
                              query_ids=query_ids, exclude=exclude,
                              block_size=block_size).per_query


def metric_columns(per_query: pd.DataFrame) -> list[str]:
    """The metric columns of a per-query table, in a stable order."""
    def key(name: str) -> tuple:
        head, _, tail = name.partition("@")
        return ({"p": 0, "r": 1, "ap": 2}[head], int(tail) if tail else -1)
    names = [c for c in per_query.columns
             if c == "ap" or (c.partition("@")[0] in ("p", "r", "ap") and c.partition("@")[2].isdigit())]
    return sorted(names, key=key)


def summary_name(column: str) -> str:
    """Per-query column to summary key: ``ap`` → ``map``, ``ap@10`` → ``map@10``."""
    return "m" + column if column.startswith("ap") else column


def _number(x: float) -> float | None:
    """JSON-safe float: rounded to 6 decimals, NaN as None."""
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def summarize(per_query: pd.DataFrame, n_database: int, n_bootstrap: int = 1000,
              seed: int = 0) -> dict:
    """Summary in the metrics-file schema: means of every metric (``p@k``, ``r@k``,
    ``map``, ``map@10``), ``n_queries``, ``n_database``, ``n_queries_without_relevant``
    and ``ci95: {metric: [lo, hi]}`` from a seeded percentile bootstrap over queries.
    Undefined values (no query with a relevant item) are ``None``.
    """
    columns = metric_columns(per_query)
    values = per_query[columns].to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values, axis=0) if len(per_query) else np.full(len(columns), np.nan)
    lo, hi = bootstrap_ci(values, n_bootstrap, seed)
    out: dict = {summary_name(c): _number(v) for c, v in zip(columns, means)}
    out["n_queries"] = int(len(per_query))
    out["n_database"] = int(n_database)
    if "n_relevant" in per_query.columns:
        out["n_queries_without_relevant"] = int((per_query["n_relevant"] == 0).sum())
    out["ci95"] = {summary_name(c): [_number(a), _number(b)] for c, a, b in zip(columns, lo, hi)}
    return out


def pk_curve(precision_at: np.ndarray, n_bootstrap: int = 0, seed: int = 0) -> pd.DataFrame:
    """Mean P@k for k = 1..K from a ``[Q, K]`` array, with bootstrap ``lo``/``hi`` (NaN if 0)."""
    precision_at = np.asarray(precision_at, dtype=np.float64)
    n_k = precision_at.shape[1] if precision_at.ndim == 2 else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(precision_at, axis=0) if len(precision_at) else np.full(n_k, np.nan)
    lo, hi = bootstrap_ci(precision_at, n_bootstrap, seed) if n_k else (mean, mean)
    return pd.DataFrame({"k": np.arange(1, n_k + 1), "precision": mean, "lo": lo, "hi": hi})


def pr_curve(interpolated: np.ndarray, n_bootstrap: int = 0, seed: int = 0) -> pd.DataFrame:
    """11-point interpolated precision-recall curve, averaged over queries with a relevant item, with a
    percentile bootstrap ``lo``/``hi`` over those queries (NaN if ``n_bootstrap`` is 0)."""
    interpolated = np.asarray(interpolated, dtype=np.float64).reshape(-1, len(RECALL_LEVELS))
    rows = interpolated[np.isfinite(interpolated).all(axis=1)]  # queries with no relevant item are NaN rows
    mean = rows.mean(axis=0) if len(rows) else np.full(len(RECALL_LEVELS), np.nan)
    lo, hi = bootstrap_ci(rows, n_bootstrap, seed)
    return pd.DataFrame({"recall": RECALL_LEVELS, "precision": mean, "lo": lo, "hi": hi})


def per_class(per_query: pd.DataFrame) -> pd.DataFrame:
    """Per-label ``n_queries`` and the mean of every metric column (NaNs skipped)."""
    columns = metric_columns(per_query)
    grouped = per_query.groupby("label", sort=True)
    out = grouped[columns].mean()
    out.insert(0, "n_queries", grouped.size())
    return out.reset_index()


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV one stage wrote for another, read back exactly: ids and labels stay strings (a class named NA
    too) and floats round-trip bit for bit (pandas' default parser since 3.0), so a combined table has the
    bytes of one computed in memory."""
    if not Path(path).is_file():
        raise CbirError(f"{path} not found: run `dvc repro {what}` first")
    return pd.read_csv(path, dtype={"method": str, "query_id": str, "image_id": str, "label": str,
                                    "feedback": str}, keep_default_na=False, na_values=[""])
