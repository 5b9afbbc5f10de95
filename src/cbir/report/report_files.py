"""Stage ``report``: ``reports/<ds>/report.md`` from the metrics, statistics, curation and figures."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from cbir.errors import CbirError
from cbir.fileio import read_json, write_text
from cbir.layout import Layout
from cbir.report.markdown import build_report
from cbir.report.tables import write_tables
from cbir.settings import need

log = logging.getLogger("cbir")


def _optional_csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"method": str, "baseline": str, "label": str, "a": str, "b": str},
                       keep_default_na=False, na_values=[""])  # a class named NA stays "NA"


def run(params: dict, root: str | Path) -> None:
    """Write ``reports/<ds>/report.md`` and the paper tables in ``reports/<ds>/tables/`` (CSV + LaTeX)."""
    root = Path(root)
    paths = Layout(root, params)
    start = time.perf_counter()
    metrics_file = paths.metrics
    if not metrics_file.exists():
        raise CbirError(f"{metrics_file} not found: run `dvc repro evaluate@<dataset>` first")
    metrics = read_json(metrics_file)
    significance = _optional_csv(paths.plot("significance"))
    per_class = _optional_csv(paths.plot("per_class"))
    pairs = _optional_csv(paths.pairs)
    weights = {}
    for name in params.get("backbones") or {}:
        meta = paths.weights(name).with_suffix(".json")
        if meta.is_file():
            weights[name] = read_json(meta)
    cur_file = paths.curation
    curation = read_json(cur_file) if cur_file.exists() else {}
    features_info = {}
    for method in params.get("methods") or {}:
        meta = paths.features_info(method)
        if meta.is_file():
            features_info[method] = read_json(meta)
    fig_dir = paths.figures_dir
    index = fig_dir / "figures.json"
    if index.is_file():
        figures = [f for f in read_json(index) if (fig_dir / f["png"]).is_file()]
    else:
        figures = sorted(f"figures/{p.name}" for p in fig_dir.glob("*.png"))
    feedback_table = paths.feedback_file("table.md")
    feedback = feedback_table.read_text(encoding="utf-8") if feedback_table.is_file() else None
    text = build_report(params, metrics, significance, curation, figures, features_info, per_class, pairs, weights,
                        feedback, feedback_figure=paths.feedback_file("p10_rounds.png").is_file())
    write_text(paths.report, text)
    paths.report.chmod(0o644)
    kinds = {m: str(need(cfg, "kind", f"methods.{m}")) for m, cfg in need(params, "methods").items()}
    tables = write_tables(paths.tables_dir, paths.dataset, metrics, per_class, significance, pairs,
                          need(need(params, "evaluation"), "n_permutations", "evaluation"), kinds)
    log.info("report: wrote %d tables to %s", len(tables), paths.tables_dir)
    log.info("report: read %s, %s and %d figures; wrote %s in %.1fs", metrics_file, paths.plots_dir, len(figures),
             paths.report, time.perf_counter() - start)
