"""Stage ``evaluate`` (one per dataset): every method's search, metrics, relevance-feedback simulation and
figures, then what compares the methods and the dataset's report.

Per method (redone only when :func:`inputs_key` changed, so one method's change redoes that method's work
alone): its cosine top-k and saved index (:mod:`cbir.search.rankings`), its metrics with bootstrap intervals
(:mod:`cbir.scoring.metric_files`), its feedback simulation (:mod:`cbir.scoring.feedback_files`) and its own
figures (:mod:`cbir.figures.figure_files`).  Then, always: ``metrics/<ds>.json``, ``reports/<ds>/metrics.json``,
the plot tables and paired tests, the feedback tables, the summary charts (``combine`` of each) and
``reports/<ds>/report.md`` with its tables (:mod:`cbir.report.report_files`).  Files of methods no longer in
params are removed: every folder written here is this stage's DVC output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Mapping

from cbir.codegraph import code_digest
from cbir.features.store import recorded_hashes
from cbir.figures import figure_files
from cbir.fileio import read_json, sha256_bytes, sha256_file, write_json
from cbir.layout import Layout
from cbir.report import report_files
from cbir.scoring import feedback_files, metric_files
from cbir.search import rankings
from cbir.settings import method_mapping, need

log = logging.getLogger("cbir")

#: the record of what a method's results were computed from, in its evaluation folder (written last)
INPUTS_FILE = "inputs.json"


def method_settings(params: Mapping, method: str) -> dict:
    """The params one method's results depend on: its own config and search settings, and the shared
    evaluation (without the baseline, which only the comparison reads), feedback and figure settings."""
    retrieval = dict(need(params, "retrieval"))
    per_method = dict(retrieval.pop("per_method", None) or {})
    evaluation = {k: v for k, v in need(params, "evaluation").items() if k != "baseline"}
    return {"seed": need(params, "seed"), "method": dict(method_mapping(params, method)),
            "retrieval": retrieval, "per_method": per_method.get(method), "evaluation": evaluation,
            "feedback": dict(need(params, "feedback")), "figures": dict(need(params, "figures"))}


def inputs_key(params: Mapping, method: str, paths: Layout, code: str) -> str:
    """sha256 of everything ``method``'s results are computed from: the curated files (manifest, curation,
    judgements), the method's features and their sidecar, its settings and the stage's code."""
    curated = {p.name: sha256_file(p) for p in sorted(paths.curated_dir.iterdir()) if p.is_file()}
    record = {"curated": curated, "features": recorded_hashes(paths.features(method), method)["features_sha256"],
              "features_info": sha256_file(paths.features_info(method)), "settings": method_settings(params, method),
              "code": code}
    return sha256_bytes(json.dumps(record, sort_keys=True, default=str).encode())


def _method_files(paths: Layout, method: str) -> list[Path]:
    """Every file ``method``'s part of this stage writes (its figures as its figure index lists them)."""
    files = [paths.retrieval(method), paths.retrieval_info(method), paths.index_dir(method),
             paths.evaluation_dir(method), paths.feedback_method_dir(method), paths.figure_index(method)]
    if paths.figure_index(method).is_file():
        for entry in read_json(paths.figure_index(method)):
            files += [paths.figures_dir / entry["png"], paths.figures_dir / entry["pdf"]]
    return files


def outputs_digest(paths: Layout, method: str) -> str | None:
    """sha256 over the path and bytes of every file ``method`` wrote (``None``: one is missing)."""
    digest = hashlib.sha256()
    for path in _method_files(paths, method):
        if not path.exists():
            return None
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and file.name != INPUTS_FILE:
                digest.update(f"{file.relative_to(paths.root).as_posix()}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()


def up_to_date(paths: Layout, method: str, key: str) -> bool:
    """Whether every result of ``method`` is in place, was computed from inputs ``key`` and still holds the bytes
    recorded with it (a damaged or missing file redoes the method)."""
    record = (paths.evaluation_dir(method) / INPUTS_FILE)
    try:
        recorded = read_json(record) if record.is_file() else {}
    except (OSError, ValueError):
        return False
    return recorded.get("inputs_sha256") == key and recorded.get("outputs_sha256") == outputs_digest(paths, method)


def evaluate_method(params: dict, method: str, root: Path, key: str) -> None:
    """``method``'s rankings, metrics, feedback simulation and figures; the inputs record last."""
    paths = Layout(root, params)
    (paths.evaluation_dir(method) / INPUTS_FILE).unlink(missing_ok=True)  # a run cut short is never reused
    rankings.run(params, method, root)
    metric_files.run_method(params, method, root)
    feedback_files.run_method(params, method, root)
    figure_files.run_method(params, method, root)
    write_json((paths.evaluation_dir(method) / INPUTS_FILE),
               {"method": method, "inputs_sha256": key, "outputs_sha256": outputs_digest(paths, method)})


def remove_stale(paths: Layout, methods: list[str]) -> list[str]:
    """Delete the results of methods not in ``methods`` (found by their evaluation folders); their names."""
    folder = paths.evaluation_dir("x").parent
    stale = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in methods) \
        if folder.is_dir() else []
    for method in stale:
        for path in _method_files(paths, method):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return stale


def run(params: dict, root: str | Path, method: str | None = None) -> None:
    """Evaluate every method of the dataset (or only ``method``, without the comparison) and compare them."""
    root = Path(root)
    paths = Layout(root, params)
    methods = [method] if method else list(need(params, "methods"))
    code = code_digest("evaluate")
    start = time.perf_counter()
    done = []
    for name in methods:
        key = inputs_key(params, name, paths, code)
        if up_to_date(paths, name, key):
            log.info("evaluate %s: up to date (inputs %s)", name, key[:12])
            continue
        evaluate_method(params, name, root, key)
        done.append(name)
    if method is not None:
        return
    stale = remove_stale(paths, methods)
    if stale:
        log.info("evaluate: removed the results of %s (no longer in params)", ", ".join(stale))
    metric_files.combine(params, root)
    feedback_files.combine(params, root)
    figure_files.combine(params, root)
    report_files.run(params, root)
    log.info("evaluate %s: %d of %d methods computed, compared and reported in %.1fs", paths.dataset, len(done),
             len(methods), time.perf_counter() - start)
