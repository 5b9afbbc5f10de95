"""Evaluation and feedback simulation at Fashion-MNIST size: before/after seconds, peak memory, identical or not.

    .venv/bin/python benchmarks/evaluation.py            # 10,000 queries x 60,000 images, D = 64 and 1280
    .venv/bin/python benchmarks/evaluation.py --small    # seconds: a smoke test

Seeded synthetic L2-normalised features with class structure (10 classes: a Gaussian centre per class plus
noise, the noise large enough that the classes overlap). Each measurement runs in a fresh process, so its
peak RSS (``VmHWM``) is its own; it includes the generated features. Measured:

* ``evaluate``: full-ranking AP, P@k, R@k and the P@k and 11-point curves of every query. ``before`` is the
  evaluator on the whole rankings (:func:`cbir.search.exact.full_ranking`, a full sort of every query's
  ranking, then :func:`cbir.scoring.evaluation.evaluate` on the dense relevance); ``after`` is
  :func:`cbir.scoring.evaluation.ranking_statistics` (the ranks of the positives only, :mod:`cbir.scoring.ranks`).
  ``identical``: every per-query value and curve point the same float.
* ``bootstrap``: the evaluate stage's intervals of one method (:func:`cbir.scoring.evaluation.summarize`, ``pk_curve``,
  ``pr_curve``, 1000 resamples); ``before`` is ``scipy.stats.bootstrap`` as the stage called it,
  ``after`` :func:`cbir.scoring.statistics.bootstrap_ci`. ``identical``: every bound the same float.
* ``pairs``: the paired tests of every pair of 10 methods (10,000 sign flips); ``before`` one
  :func:`cbir.scoring.statistics.paired_tests` call per pair (each draws its own flips, as before), ``after`` one
  call for all pairs (:func:`cbir.scoring.statistics.all_pairs_tests`). ``identical``: every p-value the same.
* ``feedback``: the simulated user (3 rounds, top 10, Rocchio and SVM) on a seeded sample of
  ``--feedback-queries`` queries (the stage's ``feedback.max_queries``) and on ``--feedback-all`` queries
  (a bound on the full simulation's cost per query).

Results go to ``benchmarks/results/evaluation-<isa>.json`` (``--small`` writes nowhere unless ``--out``),
with the CPU model; timings are wall seconds (``seconds``) and CPU seconds of all the process's threads
(``cpu_seconds``: what a shared machine's load does not inflate) of the measured call only (data generation
excluded).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the "before" bootstrap is the oracle the tests check the fast one against

N_CLASSES = 10
KS = (1, 5, 10, 20, 50)
PARTS = ("evaluate", "bootstrap", "pairs", "feedback")


def features(n: int, dim: int, seed: int, labels: np.ndarray) -> np.ndarray:
    """Unit rows around one seeded centre per class (``labels``), in chunks."""
    centres = np.random.default_rng(12345).standard_normal((N_CLASSES, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        block = 1.5 * rng.standard_normal((hi - lo, dim), dtype=np.float32) + centres[labels[lo:hi]]
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def dataset(n_queries: int, n_database: int, dim: int):
    rng = np.random.default_rng(7)
    q_labels, db_labels = rng.integers(0, N_CLASSES, n_queries), rng.integers(0, N_CLASSES, n_database)
    return (features(n_queries, dim, 1, q_labels), features(n_database, dim, 2, db_labels),
            q_labels.astype(str), db_labels.astype(str))


def peak_mb() -> float:
    """This process's peak resident memory (``VmHWM``: its own, where ``ru_maxrss`` also counts the parent's
    at fork time)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_evaluate(which: str, n_q: int, n_db: int, dim: int, out: str) -> dict:
    from cbir.scoring import evaluation as ev
    from cbir.scoring.judgements import Judgements
    from cbir.search.exact import full_ranking

    q, db, ql, dl = dataset(n_q, n_db, dim)
    t0, c0 = time.perf_counter(), time.process_time()
    if which == "before":
        judgements = Judgements.from_labels(ql, dl)
        stats = ev.evaluate(full_ranking(q, db), judgements, KS, None, ev.DEFAULT_AP, None, ql)
    else:
        stats = ev.ranking_statistics(q, db, ql, dl, ks=KS)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, per_query=stats.per_query[ev.metric_columns(stats.per_query) + ["n_relevant"]].to_numpy(),
             precision_at=stats.precision_at, interpolated=stats.interpolated)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb(),
            "map": float(np.nanmean(stats.per_query["ap"]))}


def child_bootstrap(which: str, n_q: int, n_db: int, dim: int, out: str) -> dict:
    from cbir.scoring import evaluation as ev
    from cbir.scoring import statistics as st

    q, db, ql, dl = dataset(n_q, n_db, dim)
    stats = ev.ranking_statistics(q, db, ql, dl, ks=KS)
    if which == "before":
        from evaluation_oracle import old_bootstrap_ci  # the test suite's oracle: scipy.stats.bootstrap itself

        st.bootstrap_ci = old_bootstrap_ci
        ev.bootstrap_ci = old_bootstrap_ci
    t0, c0 = time.perf_counter(), time.process_time()
    summary = ev.summarize(stats.per_query, n_db, 1000, 0)
    pk = ev.pk_curve(stats.precision_at, 1000, 0)
    pr = ev.pr_curve(stats.interpolated, 1000, 0)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, bounds=np.concatenate([np.asarray([v for pair in summary["ci95"].values() for v in pair],
                                                    dtype=float), pk[["lo", "hi"]].to_numpy().ravel(),
                                         pr[["lo", "hi"]].to_numpy().ravel()]))
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb()}


def child_pairs(which: str, n_q: int, n_methods: int, out: str) -> dict:
    import pandas as pd

    from cbir.scoring import statistics as st

    rng = np.random.default_rng(3)
    index = [f"q{i}" for i in range(n_q)]
    ap = {f"m{j}": pd.Series(np.clip(rng.normal(0.5 + 0.005 * j, 0.2, n_q), 0, 1), index=index)
          for j in range(n_methods)}
    t0, c0 = time.perf_counter(), time.process_time()
    if which == "before":
        names = list(ap)
        tests = [st.paired_tests([(ap[a].to_numpy(), ap[b].to_numpy())], 10000, 0)[0]
                 for i, a in enumerate(names) for b in names[i + 1:]]
        p = np.array([t["p_permutation"] for t in tests] + [t["p_wilcoxon"] for t in tests])
    else:
        frame = st.all_pairs_tests(ap, 10000, 0)
        p = np.concatenate([frame["p_permutation"].to_numpy(), frame["p_wilcoxon"].to_numpy()])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, p=p)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb(), "pairs": n_methods * (n_methods - 1) // 2}


def child_feedback(which: str, n_q: int, n_db: int, dim: int, sample: int, rounds: int, out: str) -> dict:
    from threadpoolctl import threadpool_limits

    from cbir.scoring import feedback_eval as fe
    from cbir.scoring.judgements import Judgements
    from cbir.search.feedback import FeedbackSettings

    q, db, ql, dl = dataset(n_q, n_db, dim)
    pick = fe.query_subset(n_q, sample, 0)
    pick = np.arange(n_q) if pick is None else pick
    judgements = Judgements.from_labels(ql[pick], dl)
    result = {"queries": int(pick.size), "of": n_q}
    for method in ("rocchio", "svm"):
        settings = FeedbackSettings(method, 1.0, 0.75, 0.15, 1.0, 0)
        t0, c0 = time.perf_counter(), time.process_time()
        with threadpool_limits(1):  # as the stage runs it
            sim = fe.simulate_judged(q[pick], db, judgements, settings, rounds, 10, labels=ql[pick])
        result[f"{method}_seconds"] = time.perf_counter() - t0
        result[f"{method}_map_last"] = float(np.nanmean(sim.per_query[sim.per_query["round"] == rounds]["ap"]))
    result["peak_mb"] = peak_mb()
    return result


def in_child(func, *args) -> dict:
    """``func(*args)`` in a fresh process: its own peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(func, args)


def same(a: str, b: str) -> bool:
    x, y = np.load(a), np.load(b)
    return all(np.array_equal(x[k], y[k], equal_nan=True) for k in x.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes, seconds: a smoke test")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--database", type=int, default=60_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 1280])
    parser.add_argument("--feedback-queries", type=int, default=1000, help="the stage's feedback.max_queries")
    parser.add_argument("--feedback-all", type=int, default=0, help="also simulate this many queries (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-before", action="store_true", help="only the new code (no before/identical)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/evaluation-<isa>.json (nothing with --small)")
    args = parser.parse_args()
    from cbir.machine import cpu_model, isa_class  # here: the measuring children skip it

    if args.small:
        args.queries, args.database, args.dims = 60, 400, [8]
        args.feedback_queries, args.rounds = 20, 1
    out = args.out or (None if args.small else REPO / "benchmarks" / "results" / f"evaluation-{isa_class()}.json")
    if out and out.is_file() and not args.small:  # several partial runs add up: a rerun of a part replaces it
        kept = [r for r in json.loads(out.read_text())["runs"]
                if not (r["kind"] in args.parts and (r["kind"] != "evaluate" or r["dim"] in args.dims))]
    else:
        kept = []
    results: dict = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": isa_class()},
                     "size": {"queries": args.queries, "database": args.database, "classes": N_CLASSES}, "runs": kept}
    with tempfile.TemporaryDirectory() as tmp:
        def measure(kind: str, func, *extra, dim=None) -> None:
            row: dict = {"kind": kind, "dim": dim}
            for which in ("before", "after") if not args.skip_before else ("after",):
                path = str(Path(tmp) / f"{kind}-{dim}-{which}.npz")
                row[which] = in_child(func, which, *extra, path)
                print(kind, dim, which, row[which], flush=True)
            if not args.skip_before:
                row["identical"] = same(str(Path(tmp) / f"{kind}-{dim}-before.npz"),
                                        str(Path(tmp) / f"{kind}-{dim}-after.npz"))
                row["speedup"] = round(row["before"]["seconds"] / row["after"]["seconds"], 2)
            results["runs"].append(row)

        for dim in args.dims if "evaluate" in args.parts else []:
            measure("evaluate", child_evaluate, args.queries, args.database, dim, dim=dim)
        if "bootstrap" in args.parts:
            measure("bootstrap", child_bootstrap, args.queries, args.database, args.dims[0], dim=args.dims[0])
        if "pairs" in args.parts:
            measure("pairs", child_pairs, args.queries, 10)
        feedback = [args.feedback_queries] + ([args.feedback_all] if args.feedback_all else [])
        for n in feedback if "feedback" in args.parts else []:
            row = {"kind": "feedback", "dim": args.dims[0],
                   "after": in_child(child_feedback, "after", args.queries, args.database, args.dims[0], n,
                                     args.rounds, "")}
            print("feedback", row, flush=True)
            results["runs"].append(row)
    print(json.dumps(results, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
