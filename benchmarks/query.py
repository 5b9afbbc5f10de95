"""One query end to end (decode, embed, search) on the CPU: median and p95 latency over many queries.

    python benchmarks/query.py [--root .] [--dataset NAME] [--method mobilenet_v2-gap] [--n 100] [--threads T]
                               [--out PATH]

Needs the pipeline outputs (``make repro``): the manifest, the method's features and its
weights. The model is loaded once before timing (its load time is reported, not counted).
Each timed query decodes an image file of the dataset's query split (cycled, sorted by
image id), embeds it and ranks the whole database with exact cosine top-k, as
``cbir query`` does. Writes ``benchmarks/results/query.json`` (under ``--root``).
Target: median under 30 ms on the project's 2-core machine (issue 15; the trunk runs with extract.runtime, OpenVINO on CPU by default).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

TARGET_MEDIAN_MS = 30.0
PHASES = ("decode", "embed", "search", "total")


def summarise(samples_ms: np.ndarray) -> dict:
    """Median, p95, mean, min and max of a set of latencies (ms)."""
    samples_ms = np.asarray(samples_ms, dtype=np.float64)
    return {"median": float(np.median(samples_ms)), "p95": float(np.percentile(samples_ms, 95)),
            "mean": float(samples_ms.mean()), "min": float(samples_ms.min()), "max": float(samples_ms.max())}


def query_paths(manifest, root: Path, n: int) -> list[Path]:
    """``n`` query image paths: the query split (all rows under leave_one_out), sorted by id, cycled."""
    rows = manifest[manifest["split"] == "query"]
    if rows.empty:
        rows = manifest
    paths = [root / p for p in rows.sort_values("image_id")["path"]]
    return [paths[i % len(paths)] for i in range(n)]


def time_queries(engine, paths: list[Path], k: int) -> dict[str, np.ndarray]:
    """Per-phase latencies (ms) of decode -> embed -> search -> result records, one query at a time."""
    from cbir.app.engine import open_query_image, result_records, search

    times = {phase: np.empty(len(paths)) for phase in PHASES}
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        image = open_query_image(path, engine.max_pixels)
        t1 = time.perf_counter()
        vector = engine.embed(image)
        t2 = time.perf_counter()
        rows, scores = search(engine.db, vector, k, engine.block_size)
        result_records(engine.db, rows[0], scores[0])
        t3 = time.perf_counter()
        times["decode"][i], times["embed"][i], times["search"][i] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
        times["total"][i] = (t3 - t0) * 1e3
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--dataset", default=None, help="one of params.yaml's datasets (default: the only one)")
    parser.add_argument("--method", default="mobilenet_v2-gap")
    parser.add_argument("--n", type=int, default=100, help="timed queries (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries first (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=None, help="default: <root>/benchmarks/results/query.json")
    args = parser.parse_args(argv)

    import torch

    from cbir.config import load_params, select_dataset
    from cbir.errors import CbirError
    from cbir.layout import Layout
    from cbir.fileio import write_json
    from cbir.app.engine import QueryEngine, query_settings

    load_start = os.getloadavg()  # other work on the machine skews latencies: recorded with them
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root.resolve()
    try:
        params = select_dataset(load_params(root), args.dataset)
        needed = [Layout(root, params).manifest, Layout(root, params).features(args.method)]
    except (CbirError, KeyError) as exc:
        print(f"query benchmark not run: {exc}")
        return 1
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"query benchmark not run: {', '.join(missing)} not found; build the pipeline outputs with `make repro`")
        return 1
    params = {**params, "device": "cpu"}
    try:
        start = time.perf_counter()
        engine = QueryEngine.from_params(params, args.method, root)
        load_s = time.perf_counter() - start
        k = query_settings(params)["k"]
        paths = query_paths(engine.db.manifest, root, args.n + args.warmup)
        time_queries(engine, paths[:args.warmup], k)
        times = time_queries(engine, paths[args.warmup:], k)
    except CbirError as exc:
        print(f"query benchmark failed: {exc}")
        return 1

    stats = {phase: summarise(times[phase]) for phase in PHASES}
    share = {phase: stats[phase]["median"] / stats["total"]["median"] for phase in PHASES[:-1]}
    result = {
        "benchmark": "query", "method": args.method, "dataset": params["dataset"]["name"],
        "n_queries": args.n, "warmup": args.warmup, "k": k,
        "n_database": int(len(engine.db.rows)), "dim": engine.db.dim,
        "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": {"start": [round(x, 2) for x in load_start],
                                   "end": [round(x, 2) for x in os.getloadavg()]},
        "model_load_s": round(load_s, 3),
        "latency_ms": {phase: {key: round(val, 3) for key, val in s.items()} for phase, s in stats.items()},
        "median_share": {phase: round(val, 3) for phase, val in share.items()},
        "target_median_ms": TARGET_MEDIAN_MS, "meets_target": stats["total"]["median"] < TARGET_MEDIAN_MS,
        "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
    }
    out = args.out or root / "benchmarks" / "results" / "query.json"
    write_json(out, result)

    print(f"query latency, {args.method} on {result['dataset']} ({result['n_database']} database images, "
          f"dim {result['dim']}), CPU, {result['torch_threads']} torch threads, {args.n} queries "
          f"(model load {load_s:.2f}s, excluded)")
    print(f"{'phase':<8} {'median ms':>10} {'p95 ms':>10} {'share':>7}")
    for phase in PHASES:
        share_text = f"{share[phase]:.0%}" if phase in share else ""
        print(f"{phase:<8} {stats[phase]['median']:>10.2f} {stats[phase]['p95']:>10.2f} {share_text:>7}")
    verdict = "meets" if result["meets_target"] else "misses"
    print(f"median {stats['total']['median']:.1f} ms {verdict} the {TARGET_MEDIAN_MS:.0f} ms target; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
