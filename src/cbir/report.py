"""The ``report`` stage: ``reports/report.md`` from metrics, statistics, curation and figures.

Nothing in the report is typed by hand: every number comes from ``metrics/<ds>.json``,
``reports/plots/*.csv``, ``data/curated/<ds>/curation.json``, ``data/features/<ds>/*.json`` and
``params.yaml``; figures and their captions come from ``reports/figures/figures.json``.  The
same results table is written into README.md between the ``<!-- results:start -->`` /
``<!-- results:end -->`` markers when they exist.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import yaml

from cbir.config import dataset_name
from cbir.errors import CbirError
from cbir.fileio import read_json, write_text

log = logging.getLogger("cbir")
START, END = "<!-- results:start -->", "<!-- results:end -->"
DECIMALS = 3
SIGNIFICANCE_HEADERS = {"method": "method", "baseline": "baseline", "n": "queries",
                        "mean_diff_ap": "mean AP difference (method − baseline)",
                        "p_permutation": "p (paired permutation)", "p_wilcoxon": "p (Wilcoxon signed-rank)"}


def _number(value, decimals: int = DECIMALS) -> str:
    """A metric value as text; missing or undefined values are an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{decimals}f}"


def metric_columns(metrics: Mapping[str, Mapping]) -> list[str]:
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
    columns = metric_columns(metrics)
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

_Generated by `dvc repro` (stage `report`) from `metrics/{ds}.json`, `reports/plots/`,
`data/curated/{ds}/curation.json` and `reports/figures/`. Do not edit by hand._

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


def is_default_experiment(params: dict, root: Path) -> bool:
    """Whether ``params`` is the committed composition of ``conf/`` (the README shows only that run)."""
    from cbir.config import compose_yaml

    conf = Path(root) / "conf"
    if not conf.is_dir():
        return False
    try:
        return yaml.safe_load(compose_yaml(conf)) == params
    except CbirError:
        return False


def readme_table(params: dict, metrics: dict) -> str:
    """The README's results block: one line of context and the metrics table."""
    return (f"Dataset `{dataset_name(params)}`, {(params.get('split') or {}).get('protocol')} protocol, cosine top-"
            f"{(params.get('retrieval') or {}).get('k')} (mean [95% CI]):\n\n" + metrics_table(metrics))


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the results markers; returns whether README changed."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{table}\n{END}{after}"
    if new != text:
        mode = readme.stat().st_mode & 0o777
        write_text(readme, new)
        readme.chmod(mode)  # the temporary file was private; keep README's own permissions
    return new != text


def _optional_csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"method": str, "baseline": str, "label": str})


def run_report(params: dict, root: Path) -> None:
    """Stage shell: ``reports/report.md`` and the README results block."""
    root = Path(root)
    start = time.perf_counter()
    ds = dataset_name(params)
    metrics_file = root / "metrics" / f"{ds}.json"
    if not metrics_file.exists():
        raise CbirError(f"{metrics_file} not found: run the evaluate stage first")
    metrics = read_json(metrics_file)
    plots = root / "reports" / "plots"
    significance = _optional_csv(plots / "significance.csv")
    per_class = _optional_csv(plots / "per_class.csv")
    cur_file = root / "data" / "curated" / ds / "curation.json"
    curation = read_json(cur_file) if cur_file.exists() else {}
    features_info = {}
    for method in params.get("methods") or {}:
        meta = root / "data" / "features" / ds / f"{method}.json"
        if meta.is_file():
            features_info[method] = read_json(meta)
    fig_dir = root / "reports" / "figures"
    index = fig_dir / "figures.json"
    if index.is_file():
        figures = [f for f in read_json(index) if (fig_dir / f["png"]).is_file()]
    else:
        figures = sorted(f"figures/{p.name}" for p in fig_dir.glob("*.png"))
    text = build_report(params, metrics, significance, curation, figures, features_info, per_class)
    write_text(root / "reports" / "report.md", text)
    (root / "reports" / "report.md").chmod(0o644)
    changed = is_default_experiment(params, root) and update_readme(root / "README.md", readme_table(params, metrics))
    log.info("report: read %s, %s and %d figures; wrote %s%s in %.1fs", metrics_file, plots, len(figures),
             root / "reports" / "report.md", " and the README results table" if changed else "",
             time.perf_counter() - start)
