"""The official scores of the standard benchmarks, each as its own evaluation code defines it.

* :func:`revisitop_scores`: ROxford5k / RParis6k (Radenović et al., CVPR 2018) under the Easy,
  Medium and Hard protocols: mAP with the trapezoidal AP and revisitop's mP@k, junk removed;
* :func:`ns_score`: UKBench's N-S score, the mean number of relevant images in the top 4 (0–4);
* :func:`micro_ap` and :func:`recall_at_precision`: copy detection's micro-AP over all
  query–reference pairs pooled across queries (DISC21's µAP) and its recall at precision 0.9.

All take rankings (database rows in rank order) and :class:`~cbir.scoring.judgements.Judgements`, or
arrays of pair scores; none knows about features or search.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from cbir.scoring.evaluation import judged_relevance, ranking_blocks, relevance_metrics
from cbir.scoring.judgements import JUNK, POSITIVE, PROTOCOLS, Judgements


def revisitop_precision(relevance: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """revisitop's P@k of junk-free relevance rows ``[Q, L]``: ``hits in the top k' / k'`` with
    ``k' = min(k, rank of the last positive ranked)``, so a query with fewer than k positives is not
    penalised for them (as its ``compute_map`` does). ``[Q, len(ks)]``; NaN where R = 0, 0 where no
    positive is ranked."""
    rel = np.asarray(relevance, dtype=bool)
    n_q, length = rel.shape
    out = np.full((n_q, len(ks)), np.nan)
    if length == 0:
        out[np.asarray(n_relevant) > 0] = 0.0
        return out
    hits = np.cumsum(rel, axis=1)
    any_hit = rel.any(axis=1)
    last = length - np.argmax(rel[:, ::-1], axis=1)  # 1-based rank of the last positive
    for j, k in enumerate(ks):
        cut = np.minimum(last, int(k))
        value = hits[np.arange(n_q), np.minimum(cut, length) - 1] / cut
        out[:, j] = np.where(any_hit, value, 0.0)
    out[np.asarray(n_relevant) == 0] = np.nan
    return out


def revisitop_scores(rankings, gnd: Sequence[Mapping], n_database: int,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict]:
    """mAP and mP@k of ROxford5k/RParis6k under each protocol, as revisitop's ``compute_map``.

    Args:
        rankings: ``[Q, L]`` database rows in rank order (or query blocks), one row per ``gnd`` entry.
        gnd: per query ``{"easy": rows, "hard": rows, "junk": rows}`` (revisitop's ``gnd_*.pkl``).
        n_database: database size.
        ks: the mP@k cut-offs (revisitop reports 1, 5, 10).

    Returns:
        ``{"easy"|"medium"|"hard": {"map", "mp@k"…, "n_queries", "ap": [Q], "p@k": [Q]…}}``: per-query
        APs are trapezoidal (NaN for a query without positives under that protocol, left out of the means).
    """
    blocks = [(blk, np.asarray(rows)) for blk, rows in ranking_blocks(rankings)]
    out = {}
    for protocol in PROTOCOLS:
        judgements = Judgements.from_revisitop(gnd, protocol, n_database)
        n_rel = judgements.n_relevant()
        aps, precs = [], []
        for blk, rows in blocks:
            rel = judged_relevance(rows, judgements, blk.start)
            cols, _, _ = relevance_metrics(rel, (), 0, n_rel[blk], ap="trapezoidal")
            aps.append(cols["ap"])
            precs.append(revisitop_precision(rel, n_rel[blk], ks))
        ap = np.concatenate(aps) if aps else np.zeros(0)
        prec = np.concatenate(precs) if precs else np.zeros((0, len(ks)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            entry = {"map": float(np.nanmean(ap)) if len(ap) else float("nan")}
            for j, k in enumerate(ks):
                entry[f"mp@{k}"] = float(np.nanmean(prec[:, j])) if len(prec) else float("nan")
        entry["n_queries"] = int(np.isfinite(ap).sum())
        entry["ap"] = ap
        for j, k in enumerate(ks):
            entry[f"p@{k}"] = prec[:, j]
        out[protocol] = entry
    return out


def ns_score(rankings, judgements: Judgements, n: int = 4) -> float:
    """UKBench's N-S score: the mean over queries of the relevant items in the top ``n`` (junk removed).

    UKBench's protocol ranks the whole set with the query in it, so the query counts as one of its
    group's 4: build the judgements from the group ids without ``exclude``.
    """
    total, count = 0.0, 0
    for blk, rows in ranking_blocks(rankings):
        rel = judged_relevance(np.asarray(rows), judgements, blk.start)
        total += float(rel[:, :n].sum())
        count += rel.shape[0]
    return total / count if count else float("nan")


def pair_labels(rows: np.ndarray, judgements: Judgements) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, keep)`` of the predicted pairs ``rows [Q, k]`` (query i, database row): ``keep`` is
    False for junk and for empty slots (row -1)."""
    rows = np.asarray(rows, dtype=np.int64)
    valid = rows >= 0
    status = judgements.status(np.where(valid, rows, 0))
    return (status == POSITIVE) & valid, (status != JUNK) & valid


def _pooled_order(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Score descending; among equal scores the negatives first (the pessimistic order of DISC21's
    evaluation, so tied scores cannot raise the AP)."""
    return np.lexsort((positive, -scores))


def micro_ap(scores: np.ndarray, positive: np.ndarray, n_positives: int) -> float:
    """Micro-AP (DISC21's µAP): all predicted pairs of all queries pooled and ordered by score, then
    ``Σ_i Δrecall_i · precision_i = (1/n_positives) Σ_{i: pair i true} (true pairs in the first i) / i``.

    ``n_positives`` is the number of true pairs in the ground truth, including those never predicted;
    the predictions of a query that has no reference in the database are all false pairs.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError("scores and positive must have the same shape")
    if n_positives < positive.sum():
        raise ValueError(f"n_positives ({n_positives}) is below the true pairs predicted ({positive.sum()})")
    if n_positives == 0:
        return float("nan")
    hit = positive[_pooled_order(scores, positive)]
    tp = np.cumsum(hit)
    return float(np.sum(tp[hit] / (np.flatnonzero(hit) + 1.0)) / n_positives)


def recall_at_precision(scores: np.ndarray, positive: np.ndarray, n_positives: int,
                        precision: float = 0.9) -> float:
    """The highest recall over all thresholds of the pooled pairs whose precision is at least
    ``precision`` (DISC21 reports it at 0.9); 0 when no threshold reaches that precision."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if n_positives == 0:
        return float("nan")
    hit = positive[_pooled_order(scores, positive)]
    tp = np.cumsum(hit)
    ok = tp / np.arange(1, hit.size + 1) >= precision
    return float(tp[ok].max() / n_positives) if ok.any() else 0.0


def copy_detection_scores(rows: np.ndarray, scores: np.ndarray, judgements: Judgements,
                          precision: float = 0.9) -> dict:
    """µAP and recall at ``precision`` of top-k predictions ``rows``/``scores`` ``[Q, k]`` (row -1 = none)
    against the true pairs in ``judgements`` (a query without a reference has no positives)."""
    positive, keep = pair_labels(rows, judgements)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(judgements.n_relevant().sum())
    return {"micro_ap": micro_ap(scores[keep], positive[keep], n_pos),
            f"recall@p{precision:g}": recall_at_precision(scores[keep], positive[keep], n_pos, precision),
            "n_positives": n_pos, "n_predictions": int(keep.sum())}
