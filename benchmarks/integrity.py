"""What the integrity checks cost on a Fashion-MNIST-sized features file, in one run.

    .venv/bin/python benchmarks/integrity.py            # 70,000 x 512 float32 (137 MiB), 70,000 manifest rows

Every reader of a features file (retrieve, evaluate, figures, ``query``, ``serve``) verifies it against its
``.json`` sidecar: the sha256 of the manifest rows it was computed from (ids and content hashes, in order)
and the sha256 of the ``.npy`` itself; a saved FAISS index is checked against the sha256 of ``index.faiss``.
This measures, warm page cache, median of interleaved rounds:

* ``manifest_digest_s``: hashing the manifest rows;
* ``features_sha256_s``: hashing the ``.npy`` (also what the extract stage pays once to record it);
* ``read_unverified_s``: what the reader did before (memory-map, row count, finite check);
* ``read_verified_s``: :func:`cbir.features.store.read_features` now (the same plus both hashes);
* ``load_full_s``: ``np.load`` into memory (what ``query``/``serve`` pay anyway);
* ``index_sha256_s``: hashing a flat FAISS index of the same vectors (an HNSW file adds its graph:
  about ``8 * M`` bytes per vector, so ~10% more at M = 16);

and the overheads as ratios.  Results go to ``benchmarks/results/integrity-<isa>.json`` with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cbir.machine import cpu_model, isa_class  # noqa: E402
from cbir.features.store import (  # noqa: E402
    all_finite,
    info_path,
    integrity_record,
    manifest_digest,
    read_features,
)
from cbir.fileio import sha256_file  # noqa: E402


def manifest_of(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    digests = [bytes(row).hex() for row in rng.integers(0, 256, (n, 32), dtype=np.uint8)]
    ids = [f"train/{i:05d}" for i in range(n)]
    return pd.DataFrame({"image_id": ids, "path": [f"data/raw/x/{i}.png" for i in ids],
                         "label": [str(i % 10) for i in range(n)], "split": "database", "width": 28, "height": 28,
                         "sha256": digests, "protocol": "predefined"})


def read_unverified(path: Path, n_rows: int) -> np.ndarray:
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    assert x.ndim == 2 and x.shape[0] == n_rows
    x = np.asarray(x, dtype=np.float32)
    assert all_finite(x)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=70_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    manifest = manifest_of(args.rows)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="cbir-integrity-") as tmp:
        path = Path(tmp) / "m.npy"
        np.save(path, x)
        t0 = time.perf_counter()
        record = integrity_record(path, manifest)
        record_s = time.perf_counter() - t0
        info_path(path).write_text(json.dumps(record))
        import faiss

        faiss.omp_set_num_threads(1)
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
        index_file = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(index_file))
        del index

        cases = {
            "manifest_digest_s": lambda: manifest_digest(manifest),
            "features_sha256_s": lambda: sha256_file(path),
            "read_unverified_s": lambda: read_unverified(path, args.rows),
            "read_verified_s": lambda: read_features(path, "m", manifest),
            "load_full_s": lambda: np.load(path),
            "index_sha256_s": lambda: sha256_file(index_file),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for name, fn in cases.items():  # warm-up: page cache, imports
            fn()
        for _ in range(args.rounds):  # interleaved: a busy spell on a shared machine hits every case
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        size = path.stat().st_size
        index_size = index_file.stat().st_size

    med = {name: statistics.median(v) for name, v in times.items()}
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": isa_class()},
        "shape": [args.rows, args.dim], "features_bytes": size, "index_bytes": index_size,
        "rounds": args.rounds,
        "median_s": {k: round(v, 5) for k, v in med.items()},
        "range_s": {k: [round(min(v), 5), round(max(v), 5)] for k, v in times.items()},
        "record_at_extract_s": round(record_s, 5),
        "sha256_mb_per_s": round(size / 1e6 / med["features_sha256_s"], 1),
        "verify_overhead_s": round(med["read_verified_s"] - med["read_unverified_s"], 5),
        "verified_over_unverified": round(med["read_verified_s"] / med["read_unverified_s"], 3),
        "verify_over_full_load": round((med["read_verified_s"] - med["read_unverified_s"]) / med["load_full_s"], 3),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"integrity-{result['machine']['isa']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
