"""What a benchmark's figures show, from its judgements (``data/curated/<ds>/judgements.json``) and the rankings
the retrieve stage saved: each result's status, copy detection's pooled precision-recall and its misses,
the distractor-only queries' top scores, UKBench's N-S per query, and each image's role for the t-SNE map.
Pure functions on frames and dicts; the same pooled order as DISC21's µAP (:mod:`cbir.scoring.benchmark_metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from cbir.errors import CbirError
from cbir.fileio import read_json

#: a result's status in a trial, by what the judgements say (revisitop keeps easy and hard apart)
RELEVANT, EASY, HARD, JUNK, IRRELEVANT = "relevant", "easy", "hard", "junk", "irrelevant"
#: statuses that count as relevant (revisitop's Medium protocol: easy and hard)
POSITIVE = (RELEVANT, EASY, HARD)


def read_judged(path: Path) -> dict | None:
    """``{"kind", "crop_queries", "queries": {query_id: entry}}`` of a ``judgements.json``, ``None`` where there
    is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        spec = read_json(path)
        return {"kind": spec["kind"], "crop_queries": bool(spec.get("crop_queries", False)),
                "queries": {str(e["query_id"]): e for e in spec["queries"]}}
    except (OSError, ValueError, KeyError, TypeError):
        raise CbirError(f"{path} is not a judgements file; run the curate stage again") from None


def statuses(entry: Mapping, kind: str) -> dict[str, str]:
    """``{image_id: status}`` of one query's judged database images (any other image is irrelevant).

    revisitop: easy, hard, junk; UKBench: the query's own image is one of its 4 (relevant, as N-S counts it);
    Holidays: the query's own image is junk; copy detection: the reference."""
    out: dict[str, str] = {}
    if kind == "revisitop":
        for key, status in (("easy", EASY), ("hard", HARD), ("junk", JUNK)):
            out.update({str(i): status for i in entry.get(key) or []})
        return out
    out.update({str(i): (RELEVANT if kind == "ukbench" else JUNK) for i in entry.get("junk") or []})
    out.update({str(i): RELEVANT for i in entry.get("positives") or []})
    return out


def judged_statuses(judged: Mapping) -> dict[str, dict[str, str]]:
    """:func:`statuses` of every query."""
    return {q: statuses(e, judged["kind"]) for q, e in judged["queries"].items()}


def pooled_pairs(ranking: pd.DataFrame, judged: Mapping) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scores, positive, n_positives)`` of every saved (query, result) pair, junk dropped: DISC21's pool."""
    status = judged_statuses(judged)
    labels = [status.get(q, {}).get(i, IRRELEVANT) for q, i in zip(ranking["query_id"], ranking["image_id"])]
    labels = np.asarray(labels, dtype=object)
    keep = labels != JUNK
    n_pos = sum(len(e.get("positives") or []) for e in judged["queries"].values())
    return ranking["score"].to_numpy(dtype=np.float64)[keep], np.isin(labels[keep], POSITIVE), int(n_pos)


def pooled_pr(scores: np.ndarray, positive: np.ndarray, n_positives: int) -> pd.DataFrame:
    """Precision and recall after each pooled pair (score descending, false pairs first among equal
    scores), with the score there: ``threshold, precision, recall``."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.lexsort((positive, -scores))
    tp = np.cumsum(positive[order])
    n = np.arange(1, len(order) + 1)
    return pd.DataFrame({"threshold": scores[order], "precision": tp / n,
                         "recall": tp / n_positives if n_positives else np.full(len(order), np.nan)})


def operating_point(curve: pd.DataFrame, precision: float = 0.9) -> dict | None:
    """The highest recall whose precision is at least ``precision``: ``{recall, precision, threshold}``
    (the first such pair), ``None`` where no threshold reaches it."""
    ok = curve[curve["precision"] >= precision]
    if ok.empty or not np.isfinite(ok["recall"]).any():
        return None
    row = ok.loc[ok["recall"].idxmax()]
    return {"recall": float(row["recall"]), "precision": float(row["precision"]), "threshold": float(row["threshold"])}


def misses(ranking: pd.DataFrame, judged: Mapping) -> pd.DataFrame:
    """Queries with a reference that is not at rank 1: ``query_id, reference, ref_rank`` (NaN: not in the
    saved top k), ``ref_score, top_id, top_score`` (what outranks it), worst first (not found, then by rank,
    then by query id)."""
    top = ranking.sort_values(["query_id", "rank"], kind="stable")
    first = top.drop_duplicates("query_id").set_index("query_id")
    rows = []
    for qid, entry in sorted(judged["queries"].items()):
        refs = [str(r) for r in entry.get("positives") or []]
        if not refs or qid not in first.index:
            continue
        hits = top[(top["query_id"] == qid) & top["image_id"].isin(refs)]
        rank = float(hits["rank"].iloc[0]) if len(hits) else np.nan
        if rank == 1.0:
            continue
        rows.append({"query_id": qid, "reference": hits["image_id"].iloc[0] if len(hits) else refs[0],
                     "ref_rank": rank, "ref_score": float(hits["score"].iloc[0]) if len(hits) else np.nan,
                     "top_id": str(first.at[qid, "image_id"]), "top_score": float(first.at[qid, "score"])})
    frame = pd.DataFrame(rows, columns=["query_id", "reference", "ref_rank", "ref_score", "top_id", "top_score"])
    return frame.assign(_missing=frame["ref_rank"].isna()).sort_values(
        ["_missing", "ref_rank", "query_id"], ascending=[False, False, True], kind="stable").drop(columns="_missing") \
        .reset_index(drop=True)


def distractor_top_scores(ranking: pd.DataFrame, judged: Mapping) -> pd.Series:
    """The rank-1 score of every query without a reference (its best score is a false alarm's), by query id."""
    alone = {q for q, e in judged["queries"].items() if not e.get("positives")}
    first = ranking[ranking["query_id"].isin(alone)].sort_values(["query_id", "rank"], kind="stable")
    return first.drop_duplicates("query_id").set_index("query_id")["score"].astype(float)


def ns_per_query(ranking: pd.DataFrame, judged: Mapping, n: int = 4) -> pd.Series:
    """UKBench's relevant images in each query's top ``n`` (the query's own image counted), by query id."""
    status = judged_statuses(judged)
    top = ranking[ranking["rank"] <= n]
    hit = [status.get(q, {}).get(i) in POSITIVE for q, i in zip(top["query_id"], top["image_id"])]
    counts = pd.Series(hit, index=top["query_id"].to_numpy()).groupby(level=0).sum()
    return counts.reindex(sorted(judged["queries"]), fill_value=0).astype(int)


def roles(image_ids, split, judged: Mapping) -> np.ndarray:
    """Each image's role on the t-SNE map: ``query``; ``reference`` / ``relevant`` (a database image some
    query is judged relevant to; ``reference`` in copy detection); ``distractor`` / ``other`` (the rest)."""
    relevant = {str(i) for e in judged["queries"].values() for key in ("positives", "easy", "hard")
                for i in e.get(key) or []}
    pairs = judged["kind"] == "pairs"
    names = ("reference", "distractor") if pairs else ("relevant", "other")
    return np.asarray(["query" if s == "query" else names[0] if str(i) in relevant else names[1]
                       for i, s in zip(image_ids, split)], dtype=object)
