"""A benchmark's summary charts (stage ``summarize``), chosen by its judgements' kind (:data:`SUMMARY`): its
own metrics as bars, and for copy detection the pooled precision-recall, µAP per transformation family and
the distractor-only queries' top scores; for UKBench the N-S distribution. Class labels keep
:func:`cbir.figures.summary.draw_summary`'s P@k, PR and per-class charts. The per-method figures are
``trials_<m>`` everywhere, plus ``confusions_<m>`` (class labels) or ``misses_<m>`` (copy detection).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd

from cbir.figures.benchmark_charts import (distractor_scores_figure, metric_bars_figure, misses_gallery,
                                           ns_distribution_figure, pooled_pr_figure, value_heatmap)
from cbir.figures.judged import distractor_top_scores, misses, ns_per_query, operating_point, pooled_pairs, pooled_pr
from cbir.report.headline import RELEVANCE, SHOWN, flat, headline, label

#: the summary charts before the trials, by kind (``None``: class labels), then every kind's
#: ``trials_baseline_vs_best`` and ``embedding_tsne``
SUMMARY = {None: ("comparison", "pk_curves", "pr_curves", "per_class_p10"),
           "pairs": ("comparison", "pr_pooled", "families_micro_ap", "distractor_scores"),
           "revisitop": ("comparison",),
           "ukbench": ("comparison", "ns_distribution"),
           "groups": ("comparison",)}
AFTER = ("trials_baseline_vs_best", "embedding_tsne")
#: the per-method figures, by kind
PER_METHOD = {None: ("trials", "confusions"), "pairs": ("trials", "misses"), "revisitop": ("trials",),
              "ukbench": ("trials",), "groups": ("trials",)}
#: the marks of a trial's results, in words, by kind
LEGEND = {"pairs": "blue: the reference, vermillion cross: not",
          "revisitop": "blue dot: easy, sky-blue triangle: hard, grey square: junk, vermillion cross: not relevant",
          "ukbench": "blue dot: the same object, vermillion cross: another",
          "groups": "blue dot: the same group, grey square: the query itself (ignored), vermillion cross: another"}


def figure_names(kind: str | None, methods) -> list[str]:
    """Every figure file name (without suffix) of a dataset of ``kind``: what dvc.yaml lists."""
    per = [f"{fig}_{m}" for fig in PER_METHOD.get(kind, PER_METHOD[None]) for m in methods]
    return list(SUMMARY.get(kind, SUMMARY[None])) + list(AFTER) + per


def title_of(ds: str, kind: str | None, chart: str | None = None) -> str:
    """``<ds> (<relevance>)``: how every benchmark figure's title names what relevant means there; with
    ``chart``, ``<chart>, <ds>`` over the relevance on a second line (a chart is narrower than a gallery)."""
    relevance = RELEVANCE.get(kind, RELEVANCE[None])
    return f"{chart}, {ds}\n{relevance}" if chart else f"{ds} ({relevance})"


def draw_charts(ctx: Mapping, inputs: Mapping, emit, before: list, ranking_of: Callable[[str], pd.DataFrame]) -> None:
    """The charts before the trials of a benchmark (``ctx["kind"]`` is not ``None``)."""
    kind, ds, methods, judged = ctx["kind"], ctx["ds"], ctx["methods"], ctx["judged"]
    metrics, baseline = inputs["metrics"], inputs["baseline"]
    shown = SHOWN[kind]
    names = ", ".join(h for _, h, _ in shown)
    emit(before, "comparison", "Method comparison",
         f"{names} per method ({label(headline(kind))} is the benchmark's headline metric), with 95% bootstrap "
         f"intervals where the evaluation gives one; the baseline `{baseline}` is hatched.",
         metric_bars_figure, flat(metrics, kind), shown, baseline, title=title_of(ds, kind, "Methods"))
    if kind == "pairs":
        curves, points, tops, thresholds = {}, {}, {}, {}
        for method in methods:
            ranking = ranking_of(method)
            curves[method] = pooled_pr(*pooled_pairs(ranking, judged))
            points[method] = operating_point(curves[method])
            thresholds[method] = None if points[method] is None else points[method]["threshold"]
            tops[method] = distractor_top_scores(ranking, judged)
        emit(before, "pr_pooled", "Pooled precision-recall (µAP)",
             "Precision against recall over the (query, top-k) pairs of all queries pooled by score (DISC21: the "
             "false pair first among equal scores); µAP is the area under it. The large black-edged marker is "
             "each method's P90 operating point: the highest recall at precision 0.9 or more (R@P90).",
             pooled_pr_figure, curves, points, title=title_of(ds, kind, "Pooled pairs"))
        emit(before, "families_micro_ap", "µAP per transformation family",
             "µAP of each method over the queries of each transformation family (copies of one kind); the colour "
             "scale spans the values shown, so differences between families are visible.",
             value_heatmap, _families(metrics), "µAP", title=title_of(ds, kind, "µAP per family"))
        n_alone = len(next(iter(tops.values()))) if tops else 0
        emit(before, "distractor_scores", "Top scores of the queries without a reference",
             f"The rank-1 score of each of the {n_alone} queries whose source is not in the database (any result "
             "is a false alarm); the black bar is the method's P90 threshold: points above it are false alarms "
             "at that operating point.",
             distractor_scores_figure, tops, thresholds, title=title_of(ds, kind, "Queries without a reference"))
    elif kind == "ukbench":
        ns = {m: ns_per_query(ranking_of(m), judged) for m in methods}
        emit(before, "ns_distribution", "N-S distribution",
             "Share of queries with 0 to 4 images of the same object in their top 4 (the query itself counted); "
             "the N-S score is the mean.",
             ns_distribution_figure, ns, title=title_of(ds, kind, "N-S"))


def _families(metrics: Mapping[str, Mapping]) -> pd.DataFrame:
    """Methods x transformation families of µAP (the evaluation's per-family scores)."""
    rows = {m: {f: (v or {}).get("micro_ap") for f, v in ((e.get("benchmark") or {}).get("families") or {}).items()}
            for m, e in metrics.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame.reindex(columns=sorted(frame.columns)).astype(float)


def draw_misses(ctx: Mapping, emit, index: list, method: str, ranking: pd.DataFrame, name: str) -> None:
    """``misses_<method>``: copy detection's queries whose reference is not at rank 1, and what outranks it."""
    cfg, k, ds, thumbs, labels = ctx["cfg"], ctx["k"], ctx["ds"], ctx["thumbs"], ctx["labels"]
    missed = misses(ranking, ctx["judged"])
    rows = [{"query_image": thumbs(r.query_id), "query_label": labels.get(r.query_id, ""),
             "top_image": thumbs(r.top_id), "top_score": r.top_score, "reference_image": thumbs(r.reference),
             "ref_rank": r.ref_rank, "ref_score": r.ref_score}
            for r in missed.head(cfg["n_pairs"]).itertuples()]
    found = int(np.isfinite(missed["ref_rank"]).sum())
    emit(index, name, f"Misses: {method}",
         f"{len(missed)} queries with a reference do not find it at rank 1 under `{method}` ({found} of them "
         f"find it lower in the top-{k}); the {len(rows)} worst (not found first, then by rank) with what outranks "
         "it: query (black), the rank-1 result (vermillion), the reference (blue) with its rank and score.",
         misses_gallery, rows, k, title=title_of(ds, ctx["kind"], f"Misses of {method}"))
