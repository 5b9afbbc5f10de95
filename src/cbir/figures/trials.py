"""The paper's sample-trial figures: a query beside its top-k with rank, cosine similarity and label."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.colors
import numpy as np
import pandas as pd

from cbir.errors import CbirError
from cbir.figures.gallery import Cell, gallery_figure
from cbir.figures.style import IRRELEVANT, IRRELEVANT_MARK, QUERY, RELEVANT, RELEVANT_MARK
from cbir.figures.thumbnails import Thumbnails, shorten


#: a result's frame colour and corner mark by its judged status (:mod:`cbir.figures.judged`): relevant and
#: easy a blue dot, hard a sky-blue triangle, junk a grey square, irrelevant a vermillion cross
STATUS_STYLE = {"relevant": (RELEVANT, RELEVANT_MARK), "easy": (RELEVANT, RELEVANT_MARK), "hard": ("#56B4E9", "^"),
                "junk": ("#7f7f7f", "s"), "irrelevant": (IRRELEVANT, IRRELEVANT_MARK)}


def box_on(image: np.ndarray, box: Sequence[float], size: tuple[int, int], colour: str = QUERY,
           width: int = 2) -> np.ndarray:
    """``image`` (a square thumbnail of an image of ``size`` = (width, height) pixels, padded as
    :func:`cbir.figures.thumbnails.thumbnail` pads it) with ``box`` (x0, y0, x1, y1 in the image's pixels)
    drawn as a ``width``-pixel frame."""
    out = np.array(image, dtype=np.uint8, copy=True)
    side = out.shape[0]
    scale = side / max(size)
    dx, dy = (side - size[0] * scale) / 2, (side - size[1] * scale) / 2
    x0, x1 = (int(np.clip(round(dx + v * scale), 0, side - 1)) for v in (box[0], box[2]))
    y0, y1 = (int(np.clip(round(dy + v * scale), 0, side - 1)) for v in (box[1], box[3]))
    rgb = (np.array(matplotlib.colors.to_rgb(colour)) * 255).round().astype(np.uint8)
    out[y0:y0 + width, x0:x1 + 1] = rgb
    out[max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = rgb
    out[y0:y1 + 1, x0:x0 + width] = rgb
    out[y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = rgb
    return out


def boxed_queries(query_ids: Sequence[str], judged: Mapping, manifest: pd.DataFrame, thumbs: Thumbnails,
                  size: int) -> dict[str, np.ndarray]:
    """revisitop's queries as the whole image with the query box (``bbx``) drawn on it: the database image of
    the same name when the query was cropped (``query/<name>`` → ``jpg/<name>``), else the query itself."""
    rows = manifest.set_index(manifest["image_id"].astype(str))
    cropped = bool(judged["crop_queries"])  # cbir.figures.judged always sets it
    out = {}
    for qid in query_ids:
        entry = judged["queries"].get(qid) or {}
        whole = "jpg/" + qid.split("/", 1)[-1] if cropped else qid
        if not entry.get("bbx") or whole not in rows.index:
            continue
        size_wh = (int(rows.at[whole, "width"]), int(rows.at[whole, "height"]))
        out[qid] = box_on(thumbs(whole), entry["bbx"], size_wh)
    return out


def build_trials(ranking: pd.DataFrame, manifest: pd.DataFrame, query_ids: list[str], root: Path,
                 k: int, thumb_size: int, thumbs: Thumbnails | None = None,
                 judged: Mapping[str, Mapping[str, str]] | None = None,
                 query_images: Mapping[str, np.ndarray] | None = None,
                 references: Mapping[str, list[str]] | None = None) -> list[dict]:
    """Assemble the data of ``sample_trials_figure`` from a retrieval CSV and the manifest.

    Results keep the retrieval file's order (sorted by ``rank``) and its scores. Without ``judged`` a result
    is relevant when it has the query's label; with it (``{query_id: {image_id: status}}``, a benchmark's
    judgements) each result carries its ``status``. ``query_images`` replace a query's thumbnail (the full
    image with its box); ``references`` (copy detection) add each query's reference with its rank and score.
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
        image = query_images[qid] if query_images and qid in query_images else thumbs(qid)
        trial = {
            "query": {"image_id": qid, "label": qlabel, "image": image},
            "results": [{
                "image_id": h.image_id, "rank": int(h.rank), "score": float(h.score),
                "label": rows.at[h.image_id, "label"], "relevant": rows.at[h.image_id, "label"] == qlabel,
                "image": thumbs(h.image_id),
            } for h in hits.itertuples()],
        }
        if judged is not None:
            status = judged.get(qid, {})
            for res in trial["results"]:
                res["status"] = status.get(res["image_id"], "irrelevant")
                res["relevant"] = res["status"] in ("relevant", "easy", "hard")
        if references is not None:
            trial["reference"] = _reference(ranking[ranking["query_id"] == qid], references.get(qid) or [], thumbs, k)
        trials.append(trial)
    return trials


def _reference(hits: pd.DataFrame, refs: list[str], thumbs: Thumbnails, k: int) -> dict:
    """A copy's reference for its trial row: image, rank and score in the saved ranking (or not in it)."""
    if not refs:
        return {"image": None, "caption": "no reference\n(distractor query)"}
    found = hits[hits["image_id"].isin(refs)].sort_values("rank", kind="stable")
    if found.empty:
        return {"image": thumbs(refs[0]), "caption": f"reference\nnot in top-{k}"}
    first = found.iloc[0]
    return {"image": thumbs(str(first["image_id"])), "caption": f"reference\n#{int(first['rank'])}  {first['score']:.3f}"}


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
    with_reference = any("reference" in t for t in trials)
    ncols = 1 + int(with_reference) + max(1, max(len(t["results"]) for t in trials))
    rows, leading = [], []
    for trial in trials:
        q = trial["query"]
        row = [Cell(q["image"], f"query\n{shorten(q['label'], 18)}", frame=QUERY, colour=QUERY)]
        ref = trial.get("reference")
        if with_reference:
            ref = ref or {"image": None, "caption": ""}
            row.append(Cell(ref["image"], ref["caption"], frame=RELEVANT if ref["image"] is not None else None,
                            colour=RELEVANT))
        leading.append(1 + int(with_reference and ref["image"] is not None))
        for res in trial["results"]:
            status = _status(res)
            colour = STATUS_STYLE[status][0]
            second = res["label"] if status in ("relevant", "irrelevant") else f"{status} · {res['label']}"
            row.append(Cell(res["image"], f"#{res['rank']}  {res['score']:.3f}\n{shorten(second)}",
                            frame=colour, colour=colour))
        rows.append(row)
    fig = gallery_figure(rows, [1.2] * ncols, image_height=1.0, row_labels=row_labels, title=title)
    _mark_results(fig.axes[0], [[_status(r) for r in t["results"]] for t in trials], leading)
    return fig


def _status(result: Mapping) -> str:
    return result.get("status") or ("relevant" if result["relevant"] else "irrelevant")


def _mark_results(ax, statuses: list[list[str]], leading: list[int], inset: float = 0.09) -> None:
    """A mark in the top-right corner of each result's frame (the gallery's patches: per row ``leading``
    frames, the query's and its reference's, then one per result): the mark of its status
    (:data:`STATUS_STYLE`), white-edged to show on any image."""
    frames = iter(ax.patches)
    corners: dict[str, tuple[list, list]] = {status: ([], []) for status in STATUS_STYLE}
    for row, lead in zip(statuses, leading):
        for _ in range(lead):
            next(frames)  # the query's frame (and its reference's)
        for status, frame in zip(row, frames):
            x, y = frame.get_xy()
            corners[status][0].append(x + frame.get_width() - inset)
            corners[status][1].append(y + inset)
    for status, (colour, mark) in STATUS_STYLE.items():
        xs, ys = corners[status]
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
