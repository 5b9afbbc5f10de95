"""The Markdown report of one dataset: tables of metrics, significance, per-class results, curation,
methods and figures.  Nothing is typed by hand: every number comes from the pipeline's outputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from cbir.layout import dataset_name
from cbir.report.benchmark_tables import report_section
from cbir.report.headline import RELEVANCE, kind_of
from cbir.report.tables import column_header, format_p, number_text, per_class_frame, shown_metrics
from cbir.settings import need

DECIMALS = 3


SIGNIFICANCE_HEADERS = {"method": "method", "baseline": "baseline", "a": "a", "b": "b", "n": "queries",
                        "mean_diff_ap": "mean AP difference", "p_permutation": "p (paired permutation)",
                        "p_wilcoxon": "p (Wilcoxon signed-rank)", "p_holm": "p (permutation, Holm)"}


def cell(entry: Mapping, key: str) -> str:
    """``mean [lo, hi]`` (the 95% bootstrap interval when the metrics file has one)."""
    if key not in entry:
        return "–"
    text = number_text(entry[key])
    lo_hi = (entry.get("ci95") or {}).get(key)
    if lo_hi and lo_hi[0] is not None and lo_hi[1] is not None and entry[key] is not None:
        text += f" [{number_text(lo_hi[0])}, {number_text(lo_hi[1])}]"
    return text


def metrics_table(metrics: dict) -> str:
    """Markdown table, one row per method: the metrics' means with 95% CIs, queries, database size (a
    benchmark's own metrics: :func:`cbir.report.tables.shown_metrics`)."""
    metrics, columns = shown_metrics(metrics)
    head = "| method | " + " | ".join(column_header(c) for c in columns) + " | queries | database |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for method, entry in metrics.items():
        cells = [cell(entry, c) for c in columns]
        sizes = [entry.get(size) for size in ("n_queries", "n_database")]  # of the metrics, not params
        lines.append(f"| {method} | " + " | ".join(cells) + "".join(f" | {'–' if n is None else n}" for n in sizes) + " |")
    return "\n".join(lines)


def significance_table(frame: pd.DataFrame, n_permutations: int | None = None) -> str:
    """Markdown table of paired tests (``significance.csv`` or ``pairs.csv``): known columns get readable
    headers, p-values at the permutation floor print as ``< 1e-4``."""
    if frame is None or frame.empty:
        return "_No comparison: a single method, or no baseline set (evaluation.baseline)._"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(SIGNIFICANCE_HEADERS.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(cols, row):
            if col.startswith("p_"):
                cells.append(format_p(value, n_permutations if col in ("p_permutation", "p_holm") else None))
            elif isinstance(value, float):
                cells.append("–" if math.isnan(value) else f"{value:+.4g}" if col == "mean_diff_ap" else f"{value:.4g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(per_class: pd.DataFrame, value: str = "p@10", methods: Sequence[str] | None = None) -> str:
    """Markdown table, one row per class and one column per method, of ``value`` from ``per_class.csv``."""
    frame = per_class_frame(per_class, value, methods)
    if frame.empty or frame.drop(columns=["class", "queries"]).isna().all().all():
        return f"_No per-class {column_header(value)} (the database per class may be smaller than the cut-off)._"
    methods = [c for c in frame.columns if c not in ("class", "queries")]
    lines = ["| class | queries | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for row in frame.itertuples(index=False):
        lines.append(f"| {row[0]} | {row[1]} | " + " | ".join(number_text(v) for v in row[2:]) + " |")
    return "\n".join(lines)


def curation_summary(curation: dict) -> str:
    """Bullet points from ``curation.json``: counts, drops by reason, classes and conversions."""
    lines = []
    split = curation.get("split") or {}
    for key, name in (("n_candidates", "files found"), ("n_kept", "images kept"), ("n_dropped", "files dropped"),
                      ("n_images", "images"), ("n_classes", "classes"), ("n_query", "queries"),
                      ("n_database", "database images"), ("protocol", "protocol")):
        if key in curation:
            lines.append(f"- {name}: {curation[key]}")
    if split:
        lines.append(f"- split: {split.get('protocol')}, {split.get('n_query')} queries, "
                     f"{split.get('n_database')} database images (seed {split.get('seed')})")
    dropped = curation.get("drop_counts") or curation.get("dropped_by_reason") or {}
    if isinstance(dropped, dict) and dropped:
        counts = {k: (len(v) if isinstance(v, list) else v) for k, v in dropped.items()}
        lines.append("- dropped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    conversions = {k: v for k, v in (curation.get("conversions") or {}).items() if v}
    if conversions:
        lines.append("- converted on load: " + ", ".join(f"{k} {v}" for k, v in sorted(conversions.items())))
    gone = curation.get("classes_dropped") or {}
    if gone:
        lines.append("- classes dropped: " + ", ".join(
            f"{k} ({v.get('reason')}, {v.get('images')} images)" if isinstance(v, dict) else f"{k} ({v})"
            for k, v in sorted(gone.items())))
    classes = curation.get("classes") or curation.get("per_class") or curation.get("class_counts")
    if isinstance(classes, dict) and classes:
        lines.append(f"- classes: {len(classes)}")
        if all(isinstance(v, dict) for v in classes.values()):
            lines += ["", "| class | images | queries | database |", "|---|---|---|---|"]
            lines += [f"| {k} | {v.get('images', '–')} | {v.get('query', '–')} | {v.get('database', '–')} |"
                      for k, v in classes.items()]
        else:
            lines.append("- images per class: " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    return "\n".join(lines) or "_No curation summary (curation.json missing)._"


def flat_settings(cfg: Mapping, prefix: str = "") -> list[str]:
    """``key=value`` strings of a nested mapping, nested keys joined with dots, lists as ``[a, b]``."""
    items = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += flat_settings(value, f"{name}.") or [f"{name}={{}}"]
        elif isinstance(value, (list, tuple)):
            items.append(f"{name}=[{', '.join(str(v) for v in value)}]")
        else:
            items.append(f"{name}={value}")
    return items


def weights_note(cfg: Mapping, weights: Mapping[str, Mapping]) -> str:
    """A deep method's weight provenance from ``models/<backbone>.json``: verified or not, and how."""
    backbone = cfg.get("backbone")
    meta = weights.get(backbone) if backbone else None
    if not meta:
        return "–"
    verified = meta.get("verified")
    state = "verified" if verified is True else "not verified" if verified is False else "unchecked"
    check = meta.get("check") or meta.get("source") or ""
    return f"{backbone}: {state}" + (f" ({check})" if check else "")


def descriptor_settings(node: Mapping) -> list[str]:
    """A ``descriptor`` node as ``descriptor=<function>`` and its arguments (a built-in by its short name)."""
    target = str(node.get("_target_", ""))
    short = target.rpartition(".")[2] if target.startswith("cbir.features.") else target
    return [f"descriptor={short}"] + flat_settings({k: v for k, v in node.items() if k != "_target_"})


def method_settings(cfg: Mapping) -> list[str]:
    """The settings cell of one method: every key but ``kind`` and ``requires``, a descriptor node short."""
    items = []
    for key, value in cfg.items():
        if key in ("kind", "requires"):
            continue
        items += (descriptor_settings(value) if key == "descriptor" and isinstance(value, Mapping)
                  else flat_settings({key: value}))
    return items


def methods_table(methods: Mapping[str, Mapping], features_info: Mapping[str, Mapping] | None = None,
                  weights: Mapping[str, Mapping] | None = None, search: Mapping[str, Mapping] | None = None) -> str:
    """Markdown table of the methods' settings, search settings, weight provenance and, when extracted,
    their dimension and speed."""
    info = features_info or {}
    lines = ["| method | kind | settings | search | weights | dim | device | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cfg in methods.items():
        cfg = cfg or {}
        settings = ", ".join(method_settings(cfg))
        own = flat_settings((search or {}).get(name) or {})
        meta = info.get(name) or {}
        lines.append(f"| `{name}` | {need(cfg, 'kind', f'methods.{name}')} | {settings or '–'} | {', '.join(own) or '–'} | "
                     f"{weights_note(cfg, weights or {})} | {meta.get('dim', '–')} | "
                     f"{meta.get('device') or '–'} | {meta.get('images_per_second', '–')} |")
    return "\n".join(lines)


def figures_section(figures: Sequence) -> str:
    """Figures with titles and captions (``figures.json`` entries) or bare image links (paths)."""
    if not figures:
        return "_No figures (run the figures stage)._"
    blocks = []
    for fig in figures:
        if isinstance(fig, Mapping):
            png = f"figures/{fig['png']}"
            pdf = f" ([PDF](figures/{fig['pdf']}))" if fig.get("pdf") else ""
            blocks.append(f"### {fig.get('title', fig['name'])}\n\n![{fig['name']}]({png})\n\n"
                          f"{fig.get('caption', '')}{pdf}")
        else:
            blocks.append(f"![{Path(fig).stem}]({fig})")
    return "\n\n".join(blocks)


def feedback_section(ds: str, table: str | None, figure: bool = True) -> str:
    """The relevance-feedback section (simulated user, residual collection), or nothing without a table;
    ``figure``: whether the stage drew its P@10-per-round figure (not where feedback could not be simulated)."""
    if not table:
        return ""
    figure = "![P@10 against the feedback round](feedback/p10_rounds.png)\n\n" if figure else ""
    return f"""## Relevance feedback (simulated user, residual collection)

A simulated user marks the top results by the dataset's judgements (its class labels, or a benchmark's relevant
images; junk is neither marked nor scored) each round; every round is scored after removing
the images already shown, beside the first ranking scored on the same residual collection
(`reports/{ds}/feedback/`: `metrics.json`, `rounds.csv`, `tests.csv`, `table.tex`; docs/feedback.md).
ΔAP is the last round against the first ranking: paired sign-flip test, Holm-adjusted.

{table.strip()}

{figure}"""


def build_report(params: dict, metrics: dict, significance: pd.DataFrame, curation: dict,
                 figures: list, features_info: Mapping[str, Mapping] | None = None,
                 per_class: pd.DataFrame | None = None, pairs: pd.DataFrame | None = None,
                 weights: Mapping[str, Mapping] | None = None, feedback: str | None = None,
                 feedback_figure: bool = True) -> str:
    """The whole Markdown report; ``figures`` are ``figures.json`` entries or relative image paths;
    ``weights`` maps backbone -> ``models/<backbone>.json``; ``feedback`` is the feedback stage's
    Markdown table (``reports/<ds>/feedback/table.md``), when there is one."""
    ds = dataset_name(params)
    split = need(params, "split")
    retrieval = need(params, "retrieval")
    evaluation = need(params, "evaluation")
    k = need(retrieval, "k", "retrieval")
    no_relevant = {m: e.get("n_queries_without_relevant") for m, e in metrics.items()
                   if e.get("n_queries_without_relevant")}
    note = ("\n\nQueries without any relevant database image (left out of mAP): "
            + ", ".join(f"`{m}` {n}" for m, n in no_relevant.items()) + "." if no_relevant else "")
    ks = ", ".join(str(x) for x in need(evaluation, "ks", "evaluation")) or "–"
    n_perm = evaluation.get("n_permutations")
    split_text = split.get("protocol")
    if split.get("protocol") == "holdout":
        per = (f"{split.get('queries_per_class')} queries per class" if split.get("query_fraction") is None
               else f"query fraction {split.get('query_fraction')}")
        split_text = f"holdout ({per}, seed {split.get('seed')})"
    benchmark = str((curation.get("split") or {}).get("protocol") or "")
    if benchmark.startswith("benchmark:"):  # a benchmark's own queries and database; `split` does not apply
        split_text = f"{benchmark} (the benchmark's own queries and database)"
    relevant = (f"the benchmark's judgements (`data/curated/{ds}/judgements.json`; see below)"
                if benchmark.startswith("benchmark:") else "same\nlabel")
    kind = kind_of(metrics)
    definitions = ("P@k and R@k use the top k; AP averages the precision at the rank of every relevant database\n"
                   "image over all of them (full ranking), and mAP is its mean over queries."
                   if kind is None else
                   f"Here {RELEVANCE[kind]}; the table shows the benchmark's own metrics (defined below), not\n"
                   "class-level P@k.")
    per_class_sections = "" if kind is not None else f"""## P@10 per class

{per_class_table(per_class if per_class is not None else pd.DataFrame(), "p@10", list(metrics))}

## P@20 per class

{per_class_table(per_class if per_class is not None else pd.DataFrame(), "p@20", list(metrics))}

"""
    table_names = ("`main`, `per_class_p10`, `per_class_p20`, `significance` and `pairs`" if kind is None else
                   "`main`, `benchmark`, `significance` and `pairs`")
    return f"""# CBIR results: {ds}

_Generated by `dvc repro` (stage `report`) from `reports/{ds}/metrics.json`, `reports/{ds}/plots/`,
`data/curated/{ds}/curation.json` and `reports/{ds}/figures/`. Do not edit by hand._

## Configuration

- dataset: `{ds}` (source `{(params.get('dataset') or {}).get('source')}`)
- protocol: {split_text}
- retrieval: cosine similarity, top-{k} ({need(retrieval, 'index', 'retrieval')} search)
- evaluation: cut-offs k = {ks}; {need(evaluation, 'n_bootstrap', 'evaluation')} bootstrap resamples over queries, \
{need(evaluation, 'n_permutations', 'evaluation')} sign flips, seed {need(evaluation, 'seed', 'evaluation')}; \
baseline `{evaluation.get('baseline')}`

{methods_table(params.get('methods') or {}, features_info, weights, retrieval.get('per_method') or {})}

## Dataset and curation

{curation_summary(curation)}

## Retrieval quality

Mean over queries with the 95% percentile bootstrap confidence interval in brackets. Relevant = {relevant}. {definitions}{note}

{metrics_table(metrics)}

{report_section(ds, metrics)}## Significance against the baseline (`{evaluation.get('baseline')}`)

Paired tests over the per-query average precision of the same queries (mean difference = method −
baseline); Holm's correction over these comparisons. A p-value at the floor of the permutation test,
1/({n_perm} + 1), prints as an upper bound.

{significance_table(significance, n_perm)}

## Every pair of methods

The same tests for every pair (mean difference = a − b), Holm's correction over all pairs.

{significance_table(pairs, n_perm)}

{per_class_sections}{feedback_section(ds, feedback, feedback_figure)}## Tables for the paper

`reports/{ds}/tables/`: {table_names}, each as
CSV (numbers) and LaTeX (booktabs; `\\usepackage{{booktabs}}`; best value in bold).

## Figures

{figures_section(figures)}
"""
