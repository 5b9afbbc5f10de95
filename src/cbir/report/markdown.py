"""The Markdown report of one dataset: tables of metrics, significance, per-class results, curation,
methods and figures.  Nothing is typed by hand: every number comes from the pipeline's outputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from cbir.layout import dataset_name

DECIMALS = 3


SIGNIFICANCE_HEADERS = {"method": "method", "baseline": "baseline", "n": "queries",
                        "mean_diff_ap": "mean AP difference (method − baseline)",
                        "p_permutation": "p (paired permutation)", "p_wilcoxon": "p (Wilcoxon signed-rank)"}


def _number(value, decimals: int = DECIMALS) -> str:
    """A metric value as text; missing or undefined values are an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{decimals}f}"


def table_columns(metrics: Mapping[str, Mapping]) -> list[str]:
    """The table's metric columns: every ``p@k`` (by k), then ``r@10``, ``map``, ``map@10`` when present."""
    keys = {key for entry in metrics.values() for key in entry}
    pks = sorted((k for k in keys if k.startswith("p@") and k[2:].isdigit()), key=lambda k: int(k[2:]))
    return pks + [k for k in ("r@10", "map", "map@10") if k in keys]


def column_header(key: str) -> str:
    """``p@10`` → ``P@10``, ``map`` → ``mAP``, ``map@10`` → ``mAP@10``."""
    return "mAP" + key[3:] if key.startswith("map") else key.upper()


def cell(entry: Mapping, key: str) -> str:
    """``mean [lo, hi]`` (the 95% bootstrap interval when the metrics file has one)."""
    if key not in entry:
        return "–"
    text = _number(entry[key])
    lo_hi = (entry.get("ci95") or {}).get(key)
    if lo_hi and lo_hi[0] is not None and lo_hi[1] is not None and entry[key] is not None:
        text += f" [{_number(lo_hi[0])}, {_number(lo_hi[1])}]"
    return text


def metrics_table(metrics: dict) -> str:
    """Markdown table, one row per method: the metrics' means with 95% CIs, queries, database size."""
    columns = table_columns(metrics)
    head = "| method | " + " | ".join(column_header(c) for c in columns) + " | queries | database |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for method, entry in metrics.items():
        cells = [cell(entry, c) for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells)
                     + f" | {entry.get('n_queries', '–')} | {entry.get('n_database', '–')} |")
    return "\n".join(lines)


def _format_value(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def significance_table(frame: pd.DataFrame) -> str:
    """Markdown table of ``significance.csv`` (known columns get readable headers)."""
    if frame.empty:
        return "_No comparison: a single method, or no baseline set (evaluation.baseline)._"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(SIGNIFICANCE_HEADERS.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_format_value(v) for v in row) + " |")
    return "\n".join(lines)


def per_class_table(per_class: pd.DataFrame, value: str = "p@10", methods: Sequence[str] | None = None) -> str:
    """Markdown table, one row per class and one column per method, of ``value`` from ``per_class.csv``."""
    if per_class is None or per_class.empty or value not in per_class.columns:
        return "_No per-class results._"
    methods = list(methods) if methods is not None else list(dict.fromkeys(per_class["method"]))
    table = per_class.pivot_table(index="label", columns="method", values=value, aggfunc="first", dropna=False)
    table = table.reindex(columns=[m for m in methods if m in table.columns]).sort_index()
    counts = per_class.drop_duplicates("label").set_index("label")["n_queries"] \
        if "n_queries" in per_class.columns else None
    lines = ["| class | queries | " + " | ".join(table.columns) + " |", "|" + "---|" * (len(table.columns) + 2)]
    for label, row in table.iterrows():
        n = counts.get(label, "–") if counts is not None else "–"
        lines.append(f"| {label} | {n} | " + " | ".join(_number(v) for v in row) + " |")
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


def methods_table(methods: Mapping[str, Mapping], features_info: Mapping[str, Mapping] | None = None) -> str:
    """Markdown table of the methods' settings and, when extracted, their dimension and speed."""
    info = features_info or {}
    lines = ["| method | kind | settings | dim | device | images/s |", "|---|---|---|---|---|---|"]
    for name, cfg in methods.items():
        cfg = cfg or {}
        settings = ", ".join(flat_settings({k: v for k, v in cfg.items() if k not in ("kind", "requires")}))
        meta = info.get(name) or {}
        lines.append(f"| `{name}` | {cfg.get('kind', '–')} | {settings or '–'} | {meta.get('dim', '–')} | "
                     f"{meta.get('device', '–')} | {meta.get('images_per_second', '–')} |")
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


def build_report(params: dict, metrics: dict, significance: pd.DataFrame, curation: dict,
                 figures: list, features_info: Mapping[str, Mapping] | None = None,
                 per_class: pd.DataFrame | None = None) -> str:
    """The whole Markdown report; ``figures`` are ``figures.json`` entries or relative image paths."""
    ds = dataset_name(params)
    split = params.get("split") or {}
    retrieval = params.get("retrieval") or {}
    evaluation = params.get("evaluation") or {}
    k = retrieval.get("k")
    no_relevant = {m: e.get("n_queries_without_relevant") for m, e in metrics.items()
                   if e.get("n_queries_without_relevant")}
    note = ("\n\nQueries without any relevant database image (left out of mAP): "
            + ", ".join(f"`{m}` {n}" for m, n in no_relevant.items()) + "." if no_relevant else "")
    ks = ", ".join(str(x) for x in evaluation.get("ks", [])) or "–"
    split_text = split.get("protocol")
    if split.get("protocol") == "holdout":
        per = (f"{split.get('queries_per_class')} queries per class" if split.get("query_fraction") is None
               else f"query fraction {split.get('query_fraction')}")
        split_text = f"holdout ({per}, seed {split.get('seed')})"
    return f"""# CBIR results: {ds}

_Generated by `dvc repro` (stage `report`) from `metrics/{ds}.json`, `reports/{ds}/plots/`,
`data/curated/{ds}/curation.json` and `reports/{ds}/figures/`. Do not edit by hand._

## Configuration

- dataset: `{ds}` (source `{(params.get('dataset') or {}).get('source')}`)
- protocol: {split_text}
- retrieval: cosine similarity, top-{k} ({retrieval.get('index', 'exact')} search)
- evaluation: cut-offs k = {ks}; {evaluation.get('n_bootstrap', '–')} bootstrap resamples over queries, \
{evaluation.get('n_permutations', '–')} sign flips, seed {evaluation.get('seed', '–')}; \
baseline `{evaluation.get('baseline')}`

{methods_table(params.get('methods') or {}, features_info)}

## Dataset and curation

{curation_summary(curation)}

## Retrieval quality

Mean over queries with the 95% percentile bootstrap confidence interval in brackets. Relevant = same
label. P@k and R@k use the top k; AP averages the precision at the rank of every relevant database
image over all of them (full ranking), and mAP is its mean over queries.{note}

{metrics_table(metrics)}

## Significance against the baseline (`{evaluation.get('baseline')}`)

Paired tests over the per-query average precision of the same queries.

{significance_table(significance)}

## P@10 per class

{per_class_table(per_class if per_class is not None else pd.DataFrame(), "p@10", list(metrics))}

## Figures

{figures_section(figures)}
"""
