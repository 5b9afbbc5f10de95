"""The paper's sample-trial figures: a query beside its top-k with rank, cosine similarity and label."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.errors import CbirError
from cbir.figures.gallery import Cell, gallery_figure
from cbir.figures.style import IRRELEVANT, IRRELEVANT_MARK, QUERY, RELEVANT, RELEVANT_MARK
from cbir.figures.thumbnails import Thumbnails, shorten


def build_trials(ranking: pd.DataFrame, manifest: pd.DataFrame, query_ids: list[str], root: Path,
                 k: int, thumb_size: int, thumbs: Thumbnails | None = None) -> list[dict]:
    """Assemble the data of ``sample_trials_figure`` from a retrieval CSV and the manifest.

    Results keep the retrieval file's order (sorted by ``rank``) and its scores.
    """
    rows = manifest.assign(image_id=manifest["image_id"].astype(str)).set_index("image_id")
    thumbs = thumbs or Thumbnails(manifest, root, thumb_size)
    ranking = ranking.assign(query_id=ranking["query_id"].astype(str), image_id=ranking["image_id"].astype(str))
    trials = []
    for qid in query_ids:
        if qid not in rows.index:
            raise CbirError(f"query {qid!r} is not in the manifest: re-run `dvc repro` so retrieval and curation agree")
        hits = ranking[ranking["query_id"] == qid].sort_values("rank", kind="stable").head(k)
        qlabel = rows.at[qid, "label"]
        trials.append({
            "query": {"image_id": qid, "label": qlabel, "image": thumbs(qid)},
            "results": [{
                "image_id": h.image_id, "rank": int(h.rank), "score": float(h.score),
                "label": rows.at[h.image_id, "label"], "relevant": rows.at[h.image_id, "label"] == qlabel,
                "image": thumbs(h.image_id),
            } for h in hits.itertuples()],
        })
    return trials


def sample_trials_figure(trials: list[dict], thumb_size: int = 128, title: str = "",
                         row_labels: Sequence[str] | None = None):
    """One row per query: the query image, then its ranked results.

    ``trials``: dicts with ``query`` ({image, label, image_id}) and ``results`` (a list of
    {image, label, image_id, rank, score, relevant}) in retrieval order.  Each result is captioned
    ``#rank  cosine`` and its label, framed blue and marked with a filled circle when it has the query's
    class, framed vermillion and marked with a cross when not (colour-blind safe: shape and colour).
    ``row_labels`` (one per trial) are written beside the query, e.g. why it was chosen.
    """
    if not trials:
        raise CbirError("no queries to draw: the retrieval file has no query; re-run `dvc repro evaluate@<dataset>`")
    if row_labels is not None and len(row_labels) != len(trials):
        raise ValueError("row_labels must have one entry per trial")
    ncols = 1 + max(1, max(len(t["results"]) for t in trials))
    rows = []
    for trial in trials:
        q = trial["query"]
        row = [Cell(q["image"], f"query\n{shorten(q['label'], 18)}", frame=QUERY, colour=QUERY)]
        for res in trial["results"]:
            colour = RELEVANT if res["relevant"] else IRRELEVANT
            row.append(Cell(res["image"], f"#{res['rank']}  {res['score']:.3f}\n{shorten(res['label'])}",
                            frame=colour, colour=colour))
        rows.append(row)
    fig = gallery_figure(rows, [1.2] * ncols, image_height=1.0, row_labels=row_labels, title=title)
    _mark_results(fig.axes[0], [[r["relevant"] for r in t["results"]] for t in trials])
    return fig


def _mark_results(ax, relevant: list[list[bool]], inset: float = 0.09) -> None:
    """A mark in the top-right corner of each result's frame (the gallery's patches: per row the query's
    frame, then one per result): ``RELEVANT_MARK`` or ``IRRELEVANT_MARK``, white-edged to show on any image."""
    frames = iter(ax.patches)
    corners = {True: ([], []), False: ([], [])}
    for row in relevant:
        next(frames)  # the query's frame
        for hit, frame in zip(row, frames):
            x, y = frame.get_xy()
            corners[bool(hit)][0].append(x + frame.get_width() - inset)
            corners[bool(hit)][1].append(y + inset)
    for hit, colour, mark in ((True, RELEVANT, RELEVANT_MARK), (False, IRRELEVANT, IRRELEVANT_MARK)):
        xs, ys = corners[hit]
        if xs:
            ax.plot(xs, ys, linestyle="none", marker=mark, markersize=6, color=colour, markeredgecolor="white",
                    markeredgewidth=0.8)


def comparison_trials_figure(trials_a: list[dict], trials_b: list[dict], method_a: str, method_b: str,
                             ap_a: Mapping[str, float], ap_b: Mapping[str, float], title: str = ""):
    """The same queries under two methods: for each query a row of ``method_a`` then of ``method_b``."""
    if [t["query"]["image_id"] for t in trials_a] != [t["query"]["image_id"] for t in trials_b]:
        raise ValueError("both methods must show the same queries in the same order")
    trials, labels = [], []
    for ta, tb in zip(trials_a, trials_b):
        qid = ta["query"]["image_id"]
        for method, trial, ap in ((method_a, ta, ap_a), (method_b, tb, ap_b)):
            value = ap.get(qid, np.nan)
            trials.append(trial)
            labels.append(f"{shorten(method, 20)}\nAP {value:.3f}" if np.isfinite(value) else shorten(method, 20))
    return sample_trials_figure(trials, title=title, row_labels=labels)
