"""Stage ``feedback`` (one per dataset x method): relevance feedback measured with a simulated user
(:mod:`cbir.scoring.feedback_eval`).

For one method and every feedback method of ``feedback.methods``: P@10 and mAP per round on the
residual collection with 95% bootstrap intervals, and a paired test of the last round against the
initial ranking on the same residual collection, into ``data/feedback/<ds>/methods/<method>/``
(results.json, rankings.csv). :func:`combine` (stage ``summarize``) adds Holm over every method x
feedback method and writes ``reports/<ds>/feedback/`` (metrics.json, rounds.csv, tests.csv, table.md,
table.tex, p10_rounds.png + .pdf), replaced as one folder, and the shown top-k of every round to
``data/feedback/<ds>/rankings.csv``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

from cbir.scoring import feedback_eval as fe
from cbir.scoring.evaluation import read_table
from cbir.config import method_config, section
from cbir.settings import need, statistics_settings
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, atomic_path, read_json, write_json, write_text
from cbir.layout import Layout
from cbir.scoring.benchmark_eval import load_judgements
from cbir.data.benchmarks import JUDGEMENTS_FILE
from cbir.search.feedback import FEEDBACK_METHODS
from cbir.search.prepared import load_prepared

log = logging.getLogger("cbir")


def settings(params: dict) -> dict:
    """``feedback`` params (every key set by ``conf/feedback/default.yaml``), checked."""
    cfg = dict(section(params, "feedback"))
    methods = list(need(cfg, "methods", "feedback"))
    unknown = [m for m in methods if m not in FEEDBACK_METHODS]
    if unknown:
        raise CbirError(f"feedback.methods has {unknown}; expected some of {', '.join(FEEDBACK_METHODS)}")
    return {**cfg, "methods": methods, "rounds": int(need(cfg, "rounds", "feedback")),
            "top_k": int(need(cfg, "top_k", "feedback")), "max_queries": int(need(cfg, "max_queries", "feedback"))}


def judgements_of(paths: Layout, data: dict):
    """The dataset's judgements over one method's rows: a benchmark's ``judgements.json`` (curated beside its
    manifest), or None for class labels (:func:`cbir.scoring.feedback_eval.evaluate_method` uses the labels)."""
    path = paths.curated_dir / JUDGEMENTS_FILE
    if not path.is_file():
        return None
    return load_judgements(path, data["manifest"], data["query_rows"], data["database_rows"]).judgements


def _shared(params: dict) -> tuple[list[str], dict, dict]:
    methods = list(section(params, "methods"))
    if not methods:
        raise CbirError("params has no methods: add at least one under methods")
    return methods, settings(params), statistics_settings(params)


def run_method(params: dict, method: str, root: str | Path) -> None:
    """Simulate the user for ``method`` (see :mod:`cbir.scoring.feedback_eval` for the protocol): its results per
    feedback method (no Holm yet) and the shown top-k into ``data/feedback/<ds>/methods/<method>/``."""
    root = Path(root)
    paths = Layout(root, params)
    _, cfg, stats = _shared(params)
    method_config(params, method)  # an unknown method is one clear error, before any file is read
    data = load_prepared(params, method, root, read_manifest(paths.manifest))
    judgements = judgements_of(paths, data)
    results, traces = {}, []
    for fb in cfg["methods"]:
        t0 = time.perf_counter()
        # one BLAS thread: the work is many one-query products, which threads only slow down
        # (a query's scores are the same either way: tests/test_feedback_query.py)
        with threadpool_limits(1):
            entry, sim = fe.evaluate_method(data, fe.settings_for(cfg, fb), cfg["rounds"], cfg["top_k"],
                                            stats["n_bootstrap"], stats["n_permutations"], stats["seed"],
                                            stats["block_size"], judgements, cfg["max_queries"])
        results[fb] = entry
        if sim is None:
            log.info("feedback %s %s: not simulated: %s", method, fb, entry["unavailable"])
            continue
        traces.append(sim.trace.assign(method=method, feedback=fb))
        first, last = entry["rounds"][0], entry["rounds"][-1]
        log.info("feedback %s %s: P@10 %s -> %s (initial on the same residual collection %s), mAP %s -> %s "
                 "over %d queries (%.2fs)", method, fb, first["p@10"], last["p@10"], last["initial_p@10"],
                 first["map"], last["map"], first["n_queries"], time.perf_counter() - t0)
    columns = ["method", "feedback", *fe.TRACE_COLUMNS]
    trace = pd.concat(traces, ignore_index=True)[columns] if traces else pd.DataFrame(columns=columns)
    with atomic_dir(paths.feedback_method_dir(method)) as tmp:
        write_json(tmp / "results.json", results)
        trace.to_csv(tmp / "rankings.csv", index=False)
    log.info("wrote %s", paths.feedback_method_dir(method))


def combine(params: dict, root: str | Path) -> None:
    """Every method's feedback results joined, Holm over all of them: ``reports/<ds>/feedback/`` and
    ``data/feedback/<ds>/rankings.csv``."""
    from cbir.figures.style import save_figure  # matplotlib: only the combined figure needs it
    from cbir.report.tables import to_latex

    start = time.perf_counter()
    root = Path(root)
    paths = Layout(root, params)
    methods, cfg, _ = _shared(params)
    results: dict = {}
    traces = []
    for method in methods:
        folder = paths.feedback_method_dir(method)
        if not (folder / "results.json").is_file():
            raise CbirError(f"{folder / 'results.json'} not found: run `dvc repro evaluate@{paths.dataset}` "
                            "first")
        results[method] = read_json(folder / "results.json")
        traces.append(read_table(folder / "rankings.csv", f"evaluate@{paths.dataset}"))
    fe.add_holm(results)
    frame = fe.table(results)
    tests = fe.tests_table(results)
    reasons = sorted({entry["unavailable"] for by_fb in results.values() for entry in by_fb.values()
                      if "unavailable" in entry})
    relevance = "by class label" if not (paths.curated_dir / JUDGEMENTS_FILE).is_file() else "by the judgements"
    caption = (f"Relevance feedback on {paths.dataset}: a simulated user marks the top {cfg['top_k']} {relevance} "
               f"for {cfg['rounds']} rounds; P@10 and mAP on the residual collection [95\\% bootstrap CI]; "
               "initial = the first ranking on the same residual collection; "
               "$\\Delta$AP = last round $-$ initial (paired permutation test, Holm).")
    protocol = {"rounds": cfg["rounds"], "top_k": cfg["top_k"], "feedback_methods": cfg["methods"],
                **{key: float(need(cfg, key, "feedback")) for key in ("alpha", "beta", "gamma", "svm_c")},
                "scoring": "residual collection: images shown in earlier rounds removed before scoring"}
    summary = {"protocol": protocol, "methods": results}
    if reasons and frame.empty:  # nothing to measure (e.g. copy detection: one reference per query)
        summary["unavailable"] = reasons[0]
    with atomic_dir(paths.feedback_dir) as tmp:
        write_json(tmp / "metrics.json", summary)
        frame.to_csv(tmp / "rounds.csv", index=False)
        tests.to_csv(tmp / "tests.csv", index=False)
        if frame.empty:
            note = f"Relevance feedback was not simulated on {paths.dataset}: {reasons[0] if reasons else 'no results'}."
            write_text(tmp / "table.md", note + "\n")
            write_text(tmp / "table.tex", note.replace("_", "\\_") + "\n")
        else:
            shown = fe.display(frame, tests)
            write_text(tmp / "table.md", fe.markdown(shown))
            write_text(tmp / "table.tex", to_latex(shown, caption, f"tab:{paths.dataset}-feedback"))
            save_figure(fe.rounds_figure(frame, cfg["top_k"]), tmp / "p10_rounds.png")
    log.info("wrote %s (%s)", paths.feedback_dir, ", ".join(sorted(p.name for p in paths.feedback_dir.iterdir())))
    trace = pd.concat(traces, ignore_index=True)
    with atomic_path(paths.feedback_rankings) as tmp:
        trace.to_csv(tmp, index=False)
    log.info("wrote %s (%d rows); feedback: %d methods x %d feedback methods combined in %.2fs",
             paths.feedback_rankings, len(trace), len(methods), len(cfg["methods"]), time.perf_counter() - start)


def run(params: dict, root: str | Path) -> None:
    """Every method's :func:`run_method`, then :func:`combine`: the whole feedback evaluation of one dataset."""
    for method in _shared(params)[0]:
        run_method(params, method, root)
    combine(params, root)
