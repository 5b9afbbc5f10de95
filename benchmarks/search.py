"""Search speed, recall and memory: one matrix multiply vs blocked exact vs FAISS.

For every database size and dimension, on generated L2-normalised vectors (clustered,
like real image features, unless ``--clusters 0``), this measures in one run:

* ``matmul``  — one ``Q x N`` matrix multiply, then ``argpartition`` + sort (the naive baseline);
* ``exact``   — ``cbir.search.exact.exact_topk`` (blocked, bounded memory; the ground truth);
* ``flat`` / ``ivf`` / ``hnsw`` — FAISS IndexFlatIP, IndexIVFFlat, IndexHNSWFlat.

Each measurement runs in a fresh process so its peak RSS is its own. Reported: build
and search seconds (fastest of ``--repeat``), queries/second, speed-up over ``matmul``, recall@k against
``exact``, peak RSS and the RSS above the generated data. Prints a Markdown table and
writes ``benchmarks/results/search.json``.

    python benchmarks/search.py                                   # a few minutes on 2 cores
    python benchmarks/search.py --sizes 10000 100000 1000000 --dims 2048 1280 --queries 1000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("matmul", "exact", "flat", "ivf", "hnsw")


def generate(n: int, dim: int, clusters: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``n`` L2-normalised float32 rows, generated in chunks so the peak stays near the data."""
    rng = np.random.default_rng(seed)
    centres = None
    if clusters > 0:
        centres = np.random.default_rng(12345).standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if centres is not None:
            block *= 0.6
            block += centres[rng.integers(0, clusters, stop - start)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(method: str, n: int, dim: int, n_queries: int, k: int, opts: dict) -> dict:
    """Runs in a child process: generate the data, build, search, report time and memory."""
    from cbir.search.faiss_index import build_faiss_index, search_faiss_index
    from cbir.search.exact import exact_topk

    database = generate(n, dim, opts["clusters"], opts["seed"])
    queries = generate(n_queries, dim, opts["clusters"], opts["seed"] + 1)
    data_rss = current_rss_mb()
    _ = queries[:2] @ database[:64].T  # start the BLAS threads outside the timings
    build_s, index = 0.0, None
    if method in ("flat", "ivf", "hnsw"):
        params = {"ivf": {"nlist": opts["nlist"], "nprobe": opts["nprobe"]},
                  "hnsw": {"M": opts["hnsw_m"], "efSearch": opts["ef_search"],
                           "efConstruction": opts["ef_construction"]}}.get(method, {})
        t0 = time.perf_counter()
        index = build_faiss_index(database, method, seed=opts["seed"], **params)
        build_s = time.perf_counter() - t0

    def search() -> np.ndarray:
        if method == "matmul":
            scores = queries @ database.T
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(scores, part, axis=1)
            return np.take_along_axis(part, np.argsort(-vals, axis=1, kind="stable"), axis=1)
        if method == "exact":
            return exact_topk(queries, database, k, block_size=opts["block_size"])[0]
        return search_faiss_index(index, queries, k)[0]

    times = []
    for _ in range(max(1, opts["repeat"])):
        t0 = time.perf_counter()
        indices = search()
        times.append(time.perf_counter() - t0)
    search_s = min(times)
    peak = peak_rss_mb()
    return {"indices": indices, "build_s": build_s, "search_s": search_s,
            "peak_rss_mb": peak, "extra_rss_mb": max(0.0, peak - data_rss)}


def run_isolated(*args) -> dict:
    """``measure`` in a fresh spawned process, so peak RSS is not inherited."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, *args).result()


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    from cbir.search.exact import recall_at_k

    return recall_at_k(approx, exact)


def markdown(rows: list[dict], k: int) -> str:
    head = (f"| N | D | method | build s | search s | queries/s | × matmul | recall@{k} "
            "| peak RSS MB | RSS over data MB |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['n']} | {r['dim']} | {r['method']} | – | – | – | – | – | – | "
                         f"skipped: {r['skipped']} |")
            continue
        speed = f"{r['speedup_vs_matmul']:.2f}" if r["speedup_vs_matmul"] is not None else "–"
        lines.append(f"| {r['n']} | {r['dim']} | {r['method']} | {r['build_s']:.2f} | "
                     f"{r['search_s']:.3f} | {r['queries_per_s']:.0f} | {speed} | "
                     f"{r['recall_at_k']:.3f} | {r['peak_rss_mb']:.0f} | {r['extra_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000],
                        help="database sizes N (default: 10000 50000)")
    parser.add_argument("--dims", type=int, nargs="+", default=[512], help="dimensions D (default: 512)")
    parser.add_argument("--queries", type=int, default=500, help="number of queries (default: 500)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--clusters", type=int, default=100,
                        help="Gaussian clusters in the generated data; 0 = isotropic noise")
    parser.add_argument("--block-size", type=int, default=1024, help="exact_topk query block")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4*sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--max-matmul-gib", type=float, default=4.0,
                        help="skip the matmul baseline when its Q x N score matrix is larger")
    parser.add_argument("--repeat", type=int, default=3, help="searches per method; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "search.json")
    args = parser.parse_args(argv)

    import faiss

    from cbir.fileio import write_json

    opts = {"clusters": args.clusters, "seed": args.seed, "block_size": args.block_size,
            "nlist": args.nlist, "nprobe": args.nprobe, "hnsw_m": args.hnsw_m,
            "ef_search": args.ef_search, "ef_construction": args.ef_construction,
            "repeat": args.repeat}
    methods = ["exact"] + [m for m in args.methods if m != "exact"]  # exact is the ground truth
    rows: list[dict] = []
    for dim in args.dims:
        for n in args.sizes:
            results: dict[str, dict] = {}
            for method in methods:
                base = {"n": n, "dim": dim, "method": method, "queries": args.queries}
                if method == "matmul" and args.queries * n * 4 / 2**30 > args.max_matmul_gib:
                    rows.append({**base, "skipped": f"Q x N scores > {args.max_matmul_gib} GiB"})
                    continue
                print(f"N={n} D={dim} {method} ...", file=sys.stderr, flush=True)
                results[method] = run_isolated(method, n, dim, args.queries, args.k, opts)
            matmul_s = results["matmul"]["search_s"] if "matmul" in results else None
            for method, res in results.items():
                rows.append({"n": n, "dim": dim, "method": method, "queries": args.queries,
                             "build_s": round(res["build_s"], 4), "search_s": round(res["search_s"], 4),
                             "queries_per_s": round(args.queries / res["search_s"], 1),
                             "speedup_vs_matmul": (round(matmul_s / res["search_s"], 3)
                                                   if matmul_s else None),
                             "recall_at_k": round(recall(res["indices"], results["exact"]["indices"]), 4),
                             "peak_rss_mb": round(res["peak_rss_mb"], 1),
                             "extra_rss_mb": round(res["extra_rss_mb"], 1)})
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["dim"], r["n"], order[r["method"]]))
    table = markdown(rows, args.k)
    print(table)
    report = {
        "benchmark": "search",
        "config": {key: value for key, value in vars(args).items() if not isinstance(value, Path)},  # no host paths
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "faiss": faiss.__version__, "cpu_count": os.cpu_count(),
                        "faiss_threads": faiss.omp_get_max_threads(),
                        "machine": platform.machine()},
        "results": rows,
        "table": table,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
