"""Scoring against a benchmark's own judgements (``data/curated/<ds>/judgements.json``, written by curate).

:func:`load_judgements` maps the file's image ids onto the database rows of one prepared method and
returns a :class:`Benchmark`; :func:`score` ranks the whole database exactly (the same search as the
class-level path), runs the pure evaluator (:func:`cbir.scoring.evaluation.evaluate`) with the benchmark's AP
variant, and adds the benchmark's official scores (:mod:`cbir.scoring.benchmark_metrics`):

* ``revisitop`` (ROxford5k / RParis6k): E/M/H mAP (trapezoidal AP) and mP@1,5,10, with 95% bootstrap
  intervals of each mAP; the main ``map`` is the Medium protocol's;
* ``groups`` (Holidays): mAP as INRIA's ``holidays_map.py`` scores it (trapezoidal AP, the query itself
  ignored; the judgements file names the variant) and, beside it as ``plain_map``, the non-interpolated mAP;
* ``ukbench``: the N-S score (0–4, the query counted as one of its 4) beside mAP;
* ``pairs`` (Copydays, neardup): µAP over all (query, top-k) pairs and recall at precision 0.9, overall (each
  with a 95% bootstrap interval over queries: the pairs of the resampled queries pooled again) and per
  transformation family, with mAP per family; queries without a reference contribute false pairs.

The scores that depend on the top k only (µAP, recall at precision 0.9, N-S) are computed from the rankings
and scores the retrieve stage saved (``data/retrieval/<ds>/<method>.csv``, read by :func:`read_saved_topk`),
so anyone can recompute them from that file and ``judgements.json``; the mAPs need the whole ranking, which
:func:`cbir.search.exact.full_ranking` gives with the same search and tie rule (score, then database row).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.scoring import benchmark_metrics as bm
from cbir.scoring import evaluation as ev
from cbir.errors import CbirError
from cbir.fileio import read_json
from cbir.scoring.judgements import Judgement, Judgements
from cbir.search.exact import exact_topk, full_ranking
from cbir.scoring.statistics import bootstrap_ci

KINDS = ("revisitop", "groups", "ukbench", "pairs")
PRECISION = 0.9


@dataclass
class Benchmark:
    """A benchmark's judgements over one method's query and database rows."""

    name: str
    kind: str
    ap: str
    judgements: Judgements
    gnd: list | None
    families: np.ndarray | None
    ns_judgements: Judgements | None


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def load_judgements(path: str | Path, manifest: pd.DataFrame, query_rows: np.ndarray,
                    database_rows: np.ndarray) -> Benchmark:
    """``judgements.json`` for the manifest's query and database rows (ids must all be known)."""
    path = Path(path)
    try:
        spec = read_json(path)
        kind, entries = spec["kind"], spec["queries"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CbirError(f"{path} is not a judgements file ({type(exc).__name__}); run the curate stage again") from None
    if kind not in KINDS:
        raise CbirError(f"{path}: unknown judgements kind {kind!r}; run the curate stage again")
    ids = manifest["image_id"].to_numpy()
    db_pos = {image_id: i for i, image_id in enumerate(ids[database_rows])}
    by_query = {e["query_id"]: e for e in entries}
    queries = ids[query_rows]
    missing = [q for q in queries if q not in by_query]
    if missing:
        raise CbirError(f"{path} has no judgement for query {missing[0]} ({len(missing)} missing); run curate again")

    def rows(names: Sequence[str]) -> np.ndarray:
        try:
            return np.asarray([db_pos[n] for n in names], dtype=np.int64)
        except KeyError as exc:
            raise CbirError(f"{path} names database image {exc.args[0]} that is not in the manifest; "
                            "run the curate stage again") from None

    n_db = len(database_rows)
    gnd = ns = None
    if kind == "revisitop":
        gnd = [{key: rows(by_query[q][key]) for key in ("easy", "hard", "junk")} for q in queries]
        judgements = Judgements.from_revisitop(gnd, "medium", n_db)
    else:
        items = [Judgement(rows(by_query[q].get("positives", [])), rows(by_query[q].get("junk", [])))
                 for q in queries]
        judgements = Judgements(tuple(items), n_db)
        if kind == "ukbench":
            ns = Judgements(tuple(Judgement(np.concatenate([i.positives, i.junk])) for i in items), n_db)
    families = (np.asarray([str(by_query[q].get("family", "")) for q in queries], dtype=object)
                if kind == "pairs" else None)
    return Benchmark(str(spec.get("benchmark", path.parent.name)), kind, str(spec.get("ap", ev.DEFAULT_AP)),
                     judgements, gnd, families, ns)


def read_saved_topk(path: str | Path, query_ids: Sequence, database_ids: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The saved rankings ``query_id, rank, image_id, score`` as ``(rows [Q, k], scores [Q, k])`` in the order
    of ``query_ids`` (database rows index ``database_ids``; an empty slot is row -1, score NaN)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"query_id": str, "image_id": str}, keep_default_na=False,
                            usecols=["query_id", "rank", "image_id", "score"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CbirError(f"{path} is not a saved ranking (query_id, rank, image_id, score: "
                        f"{type(exc).__name__}); run the retrieve stage again") from None
    q_pos = {str(q): i for i, q in enumerate(query_ids)}
    db_pos = {str(d): i for i, d in enumerate(database_ids)}
    qi = frame["query_id"].map(q_pos)
    di = frame["image_id"].map(db_pos)
    if qi.isna().any() or di.isna().any():
        bad = frame.loc[qi.isna(), "query_id"].tolist() or frame.loc[di.isna(), "image_id"].tolist()
        raise CbirError(f"{path} names {bad[0]}, which is not in this method's queries or database; "
                        "run the retrieve stage again")
    missing = sorted(set(q_pos) - set(frame["query_id"]))
    if missing:
        raise CbirError(f"{path} has no ranking for query {missing[0]} ({len(missing)} missing); "
                        "run the retrieve stage again")
    ranks = frame["rank"].to_numpy(dtype=np.int64)
    k = int(ranks.max()) if len(ranks) else 0
    rows = np.full((len(q_pos), k), -1, dtype=np.int64)
    scores = np.full((len(q_pos), k), np.nan)
    rows[qi.to_numpy(dtype=np.int64), ranks - 1] = di.to_numpy(dtype=np.int64)
    scores[qi.to_numpy(dtype=np.int64), ranks - 1] = frame["score"].to_numpy(dtype=np.float64)
    return rows, scores


def _pair_scores(rows: np.ndarray, scores: np.ndarray, judgements: Judgements) -> dict:
    out = bm.copy_detection_scores(rows, scores, judgements, PRECISION)
    return {"micro_ap": _num(out["micro_ap"]), f"recall@p{PRECISION:g}": _num(out[f"recall@p{PRECISION:g}"]),
            "n_positives": out["n_positives"], "n_predictions": out["n_predictions"]}


def _micro_ci(rows, scores, judgements: Judgements, n_bootstrap: int, seed: int) -> list:
    """95% percentile bootstrap (queries resampled, seeded) of µAP and recall@P0.9."""
    n_q = len(judgements)
    if n_bootstrap < 1 or n_q < 2:
        return [[None, None], [None, None]]
    rng = np.random.default_rng(seed)
    # each pair's label once; a resample pools the pairs of its queries (a query drawn twice counts twice)
    positive, keep = bm.pair_labels(rows, judgements)
    scores = np.asarray(scores, dtype=np.float64)
    n_relevant = judgements.n_relevant()
    draws = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, n_q, n_q)
        kept = keep[pick]
        s, p, n_pos = scores[pick][kept], positive[pick][kept], int(n_relevant[pick].sum())
        draws.append((bm.micro_ap(s, p, n_pos), bm.recall_at_precision(s, p, n_pos, PRECISION)))
    draws = np.asarray(draws, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(draws, 2.5, axis=0), np.nanpercentile(draws, 97.5, axis=0)
    return [[_num(lo[j]), _num(hi[j])] for j in range(2)]


def pair_compact(overall: Mapping) -> dict:
    """µAP and recall@P0.9 with their 95% bounds (``key``, ``key_lo``, ``key_hi``), as the compact file
    gives mAP and P@10."""
    out = {}
    for key in ("micro_ap", f"recall@p{PRECISION:g}"):
        lo, hi = overall.get(f"{key}_ci95") or (None, None)
        out.update({key: overall.get(key), f"{key}_lo": lo, f"{key}_hi": hi})
    return out


def _mean_ap(blocks, judgements: Judgements, ap: str) -> float:
    """mAP of full rankings under the AP variant ``ap`` (queries without a positive left out)."""
    n_rel = judgements.n_relevant()
    aps = [ev.relevance_metrics(ev.judged_relevance(rows, judgements, blk.start), (), 0, n_rel[blk], ap=ap)[0]["ap"]
           for blk, rows in blocks]
    aps = np.concatenate(aps) if aps else np.zeros(0)
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def _top(queries, database, k: int, exclude, block_size: int, saved) -> tuple[np.ndarray, np.ndarray]:
    """The top-k rows and scores: the saved ones when given, else the retrieve stage's exact search."""
    if saved is not None:
        rows, scores = saved
        return np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    rows, scores = exact_topk(queries, database, k, block_size=block_size, exclude=exclude)
    return rows.astype(np.int64), scores.astype(np.float64)


def score(bench: Benchmark, queries: np.ndarray, database: np.ndarray, ks: Sequence[int], curve_k: int,
          query_ids: Sequence, labels: Sequence, exclude=None, block_size: int = 1024, top_k: int = 10,
          n_bootstrap: int = 1000, seed: int = 0,
          saved: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[ev.RankingStats, dict]:
    """The evaluator's statistics and the benchmark's official scores (``{"name", "kind", "ap", ...,
    "compact": {...}}``) of one method's prepared features. ``saved``: the retrieve stage's ``(rows, scores)``
    (:func:`read_saved_topk`), which the top-k scores (µAP, recall at precision 0.9, N-S) are computed from;
    without it they come from the same exact search, run here."""
    blocks = [(blk, rows) for blk, rows in full_ranking(queries, database, exclude=exclude, block_size=block_size)]
    result = ev.evaluate(blocks, bench.judgements, ks, curve_k, bench.ap, query_ids, labels)
    official: dict = {"name": bench.name, "kind": bench.kind, "ap": bench.ap}
    if bench.kind == "revisitop":
        scores = bm.revisitop_scores(blocks, bench.gnd, bench.judgements.n_database, ks=(1, 5, 10))
        for protocol, entry in scores.items():
            lo, hi = bootstrap_ci(entry["ap"], n_bootstrap, seed)
            official[protocol] = {"map": _num(entry["map"]), "map_ci95": [_num(lo[0]), _num(hi[0])],
                                  **{f"mp@{k}": _num(entry[f"mp@{k}"]) for k in (1, 5, 10)},
                                  "n_queries": entry["n_queries"]}
        official["compact"] = {f"{p[0]}_map": official[p]["map"] for p in ("easy", "medium", "hard")}
    elif bench.kind == "ukbench":
        top_rows = None if saved is None else np.asarray(saved[0], dtype=np.int64)[:, :4]
        usable = top_rows is not None and top_rows.shape[1] == 4 and bool((top_rows >= 0).all())
        official["ns"] = _num(bm.ns_score(top_rows if usable else blocks, bench.ns_judgements, 4))
        official["compact"] = {"ns": official["ns"]}
    elif bench.kind == "pairs":
        rows, sims = _top(queries, database, int(top_k), exclude, block_size, saved)
        k = int(rows.shape[1])
        overall = _pair_scores(rows, sims, bench.judgements)
        ci = _micro_ci(rows, sims, bench.judgements, min(n_bootstrap, 1000), seed)
        overall["micro_ap_ci95"], overall[f"recall@p{PRECISION:g}_ci95"] = ci
        official.update(top_k=k, **overall)
        per_family = {}
        aps = result.per_query["ap"].to_numpy(dtype=np.float64)
        for family in sorted(set(bench.families.tolist())):
            pick = np.flatnonzero(bench.families == family)
            sub = Judgements(tuple(bench.judgements.items[i] for i in pick), bench.judgements.n_database)
            entry = _pair_scores(rows[pick], sims[pick], sub)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                entry["map"] = _num(np.nanmean(aps[pick])) if np.isfinite(aps[pick]).any() else None
            lo, hi = bootstrap_ci(aps[pick], n_bootstrap, seed)
            entry["map_ci95"] = [_num(lo[0]), _num(hi[0])]
            entry["n_queries"] = int(len(pick))
            entry["n_without_reference"] = int(sum(1 for i in pick if bench.judgements.items[i].n_relevant == 0))
            per_family[family] = entry
        official["families"] = per_family
        official["compact"] = pair_compact(overall)
    elif bench.kind == "groups":  # INRIA's holidays_map.py: trapezoidal AP; the plain AP beside it
        official["map"] = _num(_mean_ap(blocks, bench.judgements, "trapezoidal"))
        official["plain_map"] = _num(_mean_ap(blocks, bench.judgements, "non-interpolated"))
        official["compact"] = {"plain_map": official["plain_map"]}
    else:
        official["compact"] = {}
    return result, official


def compact_entry(official: Mapping | None) -> dict:
    """The benchmark's keys for the compact DVC metrics file (empty for class-level data)."""
    return dict((official or {}).get("compact") or {})
