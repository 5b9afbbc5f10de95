"""`cbir serve` on a saved IVF-PQ index of a million vectors: start time, memory, latency under load, recall.

    .venv/bin/python benchmarks/serve_million.py            # 10^6 x 256 vectors, 1,000 classes (~5 min to build)
    .venv/bin/python benchmarks/serve_million.py --small    # 20,000 x 32, 20 classes (a check that it runs)

Builds a features-only project in a temporary folder (``--root`` keeps it): ``params.yaml`` (today's,
one dataset ``million``, one precomputed method ``vectors``, ``retrieval.index=faiss-ivfpq``), a manifest
of ``--queries`` query rows followed by ``--n`` database rows, the seeded vectors with class structure
(unit class centres plus Gaussian noise, L2-normalised, so the true neighbours of a query are mostly its
class's) as ``data/features/million/vectors.npy`` with its integrity sidecar, and the IVF-PQ index saved
as the retrieve stage saves it (:func:`cbir.search.saved.save_index`).  Then it starts ``cbir serve`` in
its own process and measures:

* ``start_s``: from launching the process to its first answered ``/api/search`` (imports, reading and
  verifying the manifest, features and index);
* resident memory of the server process (``VmRSS``, peak ``VmHWM``, and how much of it is anonymous
  memory vs pages of memory-mapped files), after start and after the load;
* p50/p95/p99 latency of ``GET /api/search?id=<query id>`` with ``--clients`` concurrent clients
  (keep-alive connections, each asking its share of the queries in turn, after a warm-up pass), in
  ``--rounds`` rounds: ``latency_ms`` is the round with the median p99, every round is kept;
* the server's CPU time per request (user + system, over a round; what the load of other processes does
  not change) and the requests answered per second;
* recall@10 of the server's answers against exact cosine search over the same vectors.

Results go to ``benchmarks/results/serve_million-<isa class>.json`` with the CPU, its ISA class and the
load average before and after (the machine may be shared: a loaded run says so).
Targets (issue 35): p99 <= 50 ms with 8 clients on 2 cores, RSS <= 4 GB.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cbir.config import select_dataset  # noqa: E402
from cbir.features.store import info_path, integrity_record  # noqa: E402
from cbir.fileio import write_json  # noqa: E402
from cbir.layout import Layout  # noqa: E402
from cbir.search.exact import exact_topk, recall_at_k  # noqa: E402
from cbir.search.faiss_index import build_faiss_index  # noqa: E402
from cbir.search.prepared import search_settings  # noqa: E402
from cbir.search.saved import save_index  # noqa: E402

DATASET, METHOD = "million", "vectors"
TARGET_P99_MS, TARGET_RSS_GB = 50.0, 4.0
FULL = {"n": 1_000_000, "dim": 256, "classes": 1000, "queries": 2000, "nlist": 1024, "nprobe": 16, "m": 32,
        "refine": 20, "recall_queries": 500}
SMALL = {"n": 20_000, "dim": 32, "classes": 20, "queries": 200, "nlist": 64, "nprobe": 8, "m": 8, "refine": 4,
         "recall_queries": 100}


def class_vectors(n: int, dim: int, classes: int, seed: int, noise: float, chunk: int = 65536):
    """``(labels [n], unit rows [n, dim] float32)``: class centres on the unit sphere plus Gaussian noise of
    norm about ``noise``, generated in chunks (the same rows whatever the chunk, for a given seed)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, classes, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = centres[labels[start:stop]] + noise / np.sqrt(dim) * rng.standard_normal((stop - start, dim),
                                                                                       dtype=np.float32)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return labels, out


def project_params(sizes: dict) -> dict:
    """Today's ``params.yaml`` with one features-only dataset, one precomputed method and the IVF-PQ index."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = copy.deepcopy(params)
    synthetic = yaml.safe_load((REPO / "conf" / "dataset" / "synthetic.yaml").read_text(encoding="utf-8"))
    params["datasets"] = {DATASET: {**synthetic, "name": DATASET}}
    params["methods"] = {METHOD: {"kind": "precomputed", "file": f"data/features/{DATASET}/{METHOD}.npy"}}
    params["retrieval"]["index"] = "faiss-ivfpq"
    params["retrieval"]["faiss"] = {**params["retrieval"]["faiss"], "nlist": sizes["nlist"], "nprobe": sizes["nprobe"],
                                    "m": sizes["m"], "refine": sizes["refine"]}
    return params


def build_project(root: Path, sizes: dict, seed: int) -> dict:
    """Write the project (params, manifest, features + sidecar, saved index); returns timings and sizes."""
    params = project_params(sizes)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    view = select_dataset(params, DATASET)
    layout = Layout(root, view)
    n_query, n = sizes["queries"], sizes["n"]
    t0 = time.perf_counter()
    labels, vectors = class_vectors(n_query + n, sizes["dim"], sizes["classes"], seed, noise=1.2)
    ids = [f"v{i:07d}" for i in range(n_query + n)]
    manifest = pd.DataFrame({
        "image_id": ids, "path": [f"vectors/{i}" for i in ids], "label": [f"c{c:04d}" for c in labels],
        "split": ["query"] * n_query + ["database"] * n, "width": 1, "height": 1,
        "sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids], "protocol": "predefined"})
    layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(layout.manifest, index=False)
    features = layout.features(METHOD)
    features.parent.mkdir(parents=True, exist_ok=True)
    np.save(features, vectors)
    generate_s = time.perf_counter() - t0
    record = integrity_record(features, manifest)
    write_json(info_path(features), {"method": METHOD, "n": n_query + n, "dim": sizes["dim"], "device": "none",
                                     "file": params["methods"][METHOD]["file"], **record})
    t0 = time.perf_counter()
    settings = search_settings(view, METHOD)
    faiss_opts = {k: v for k, v in settings["faiss"].items() if k in ("nlist", "nprobe", "m", "nbits")}
    index = build_faiss_index(vectors[n_query:], index=settings["index"], seed=seed, **faiss_opts)
    build_s = time.perf_counter() - t0
    save_index(layout.index_dir(METHOD), METHOD, settings, features, np.asarray(ids[n_query:]), index,
               features_sha256=record["features_sha256"])
    return {"generate_s": round(generate_s, 2), "index_build_s": round(build_s, 2),
            "features_bytes": features.stat().st_size,
            "index_bytes": (layout.index_dir(METHOD) / "index.faiss").stat().st_size,
            "manifest_bytes": layout.manifest.stat().st_size}


def memory(pid: int) -> dict:
    """The process's resident memory (MiB): total, peak, anonymous and file-backed (memory-mapped files)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(conn: http.client.HTTPConnection, image_id: str, k: int) -> tuple[float, dict]:
    """One ``/api/search`` request on a keep-alive connection: ``(seconds, answer)``."""
    start = time.perf_counter()
    conn.request("GET", f"/api/search?id={quote(image_id)}&method={METHOD}&k={k}")
    response = conn.getresponse()
    body = response.read()
    seconds = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"/api/search answered {response.status}: {body[:200]!r}")
    return seconds, json.loads(body)


def start_server(root: Path) -> tuple[subprocess.Popen, int, float]:
    """``cbir serve`` on a free port; returns (process, port, seconds to its first answer)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cbir", "--root", str(root), "serve", "--port", "0",
                             "--dataset", DATASET, "--method", METHOD],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("serving "):
            port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            break
    else:
        raise RuntimeError(f"cbir serve exited with {proc.wait()} before serving")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its log
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ask(conn, "v0000000", 10)
    conn.close()
    return proc, port, time.perf_counter() - start


def load(port: int, ids: list[str], clients: int, k: int) -> tuple[np.ndarray, dict]:
    """``clients`` threads, each with its own keep-alive connection, asking ``ids`` (dealt round-robin);
    returns all latencies (ms) and the answers by id."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    answers: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        barrier.wait()
        try:
            for image_id in ids[c::clients]:
                seconds, answer = ask(conn, image_id, k)
                latencies[c].append(seconds * 1e3)
                answers[image_id] = [r["image_id"] for r in answer["results"]]
        except BaseException as exc:  # reported after the threads end
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return np.array([x for per in latencies for x in per]), answers


def exact_answers(root: Path, ids: list[str], n_query: int, k: int) -> dict[str, list[str]]:
    """Exact cosine top-``k`` database ids of each query id (blocked, over the memory-mapped features)."""
    params = select_dataset(yaml.safe_load((root / "params.yaml").read_text()), DATASET)
    features = np.load(Layout(root, params).features(METHOD), mmap_mode="r")
    rows = np.array([int(i[1:]) for i in ids])
    idx, _ = exact_topk(np.asarray(features[rows]), features[n_query:], k, block_size=256)
    return {image_id: [f"v{n_query + j:07d}" for j in idx[q]] for q, image_id in enumerate(ids)}


def summarise(ms: np.ndarray) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2), "mean": round(float(ms.mean()), 2),
            "max": round(float(ms.max()), 2), "n": int(ms.size)}


def measure(root: Path, sizes: dict, clients: int, k: int, rounds: int) -> dict:
    """Start the server, warm it, load it ``rounds`` times, check recall; returns the measurements."""
    proc, port, start_s = start_server(root)
    try:
        after_start = memory(proc.pid)
        ids = [f"v{i:07d}" for i in range(sizes["queries"])]
        load(port, ids, clients, k)  # warm-up: every query once (pages of the index and features touched)
        runs = []
        for _ in range(rounds):
            cpu, wall = cpu_seconds(proc.pid), time.perf_counter()
            ms, answers = load(port, ids, clients, k)
            wall, cpu = time.perf_counter() - wall, cpu_seconds(proc.pid) - cpu
            runs.append({**summarise(ms), "server_cpu_ms_per_request": round(cpu * 1e3 / len(ids), 2),
                         "requests_per_s": round(len(ids) / wall, 1)})
        after_load = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    sample = ids[:sizes["recall_queries"]]
    exact = exact_answers(root, sample, sizes["queries"], k)
    recall = recall_at_k(np.array([[int(x[1:]) for x in answers[i]] for i in sample]),
                         np.array([[int(x[1:]) for x in exact[i]] for i in sample]))
    typical = sorted(runs, key=lambda r: r["p99"])[len(runs) // 2]  # the round with the median p99
    return {"start_s": round(start_s, 2), "memory_after_start_mib": after_start, "memory_after_load_mib": after_load,
            "latency_ms": typical, "latency_ms_rounds": runs, "recall_at_10": round(float(recall), 4),
            "recall_queries": len(sample)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20,000 x 32 vectors: a quick check that it runs")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3,
                        help="load rounds after the warm-up; latency_ms is the round with the median p99 (all are kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="build (and keep) the project here")
    parser.add_argument("--reuse", action="store_true", help="measure the project already built in --root")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/serve_million-<isa class>.json (--small: not written)")
    args = parser.parse_args(argv)
    from cbir.machine import cpu_model, isa_class  # torch: imported after parsing

    sizes = {key: getattr(args, key) if getattr(args, key) is not None else value
             for key, value in (SMALL if args.small else FULL).items()}
    k = 10
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cbir-serve-million-") as tmp:
        root = (args.root or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        built_file = root / "built.json"
        if args.reuse and built_file.is_file() and json.loads(built_file.read_text())["sizes"] == sizes:
            built = json.loads(built_file.read_text())["built"]
        else:
            built = build_project(root, sizes, args.seed)
            built_file.write_text(json.dumps({"sizes": sizes, "built": built}))
        print(f"built {sizes['n']} x {sizes['dim']} vectors and the IVF-PQ index: {json.dumps(built)}", flush=True)
        measured = measure(root, sizes, args.clients, k, args.rounds)
    rss_gb = measured["memory_after_load_mib"]["VmHWM"] / 1024
    result = {"benchmark": "serve_million", "sizes": sizes, "clients": args.clients, "k": k, **built, **measured,
              "machine": {"cpu": cpu_model(), "isa": isa_class(), "cores": os.cpu_count(),
                          "load_average_1_5_15min": {"before": [round(x, 2) for x in load_before],
                                                     "after": [round(x, 2) for x in os.getloadavg()]}},
              "targets": {"p99_ms": TARGET_P99_MS, "rss_gb": TARGET_RSS_GB},
              "meets_targets": {"p99": measured["latency_ms"]["p99"] <= TARGET_P99_MS, "rss": rss_gb <= TARGET_RSS_GB}}
    out = args.out or (None if args.small else REPO / "benchmarks" / "results" / f"serve_million-{isa_class()}.json")
    if out is not None:
        write_json(out, result)
    lat = measured["latency_ms"]
    print(f"serve: {sizes['n']:,} x {sizes['dim']} IVF-PQ, start {measured['start_s']} s, peak RSS "
          f"{measured['memory_after_load_mib']['VmHWM']:.0f} MiB, {args.clients} clients p50 {lat['p50']} ms "
          f"p99 {lat['p99']} ms, recall@10 {measured['recall_at_10']}" + (f"; wrote {out}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
