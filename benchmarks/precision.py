"""The metric cost of each precision: the default experiment's deep methods in fp32, bf16 and int8.

    .venv/bin/python benchmarks/precision.py [--dataset NAME]   # after `make repro` (reads the curated manifest
                                                                 # and the weights)

For every deep method of ``params.yaml`` and each precision, on the default dataset's real images: the
extraction speed of the stage's code path (images/second over the whole manifest, conversion or
quantisation excluded), the worst and mean cosine of each descriptor to its fp32 descriptor, P@10
and mAP with 95% bootstrap intervals (the evaluate stage's exact cosine ranking and class labels),
and the paired sign-flip test of per-query AP against fp32.  The precision recorded is the one
OpenVINO compiled (a CPU without native bf16 runs fp32 when asked for bf16, and says so).  Results go
to ``benchmarks/results/precision-<isa class>.json`` (one file per machine kind) and a Markdown
table on stdout.  Speeds on a shared machine are loose; the metric columns are exact.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cbir.config import load_params, select_dataset  # noqa: E402
from cbir.data.manifest import read_manifest  # noqa: E402
from cbir.errors import CbirError  # noqa: E402
from cbir.scoring import statistics as st  # noqa: E402
from cbir.scoring.evaluation import per_query_metrics, summarize  # noqa: E402
from cbir.machine import cpu_isa, isa_class  # noqa: E402
from cbir.features.methods import build_method  # noqa: E402
from cbir.layout import Layout  # noqa: E402
from cbir.report.tables import format_p  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8")


def extract(params: dict, name: str, precision: str, paths: list[Path], root: Path) -> tuple[np.ndarray, float, dict]:
    """``(features, images/s, run info)`` of method ``name`` at ``precision`` (the model is built and
    warmed first, so its conversion or quantisation is not timed)."""
    settings = copy.deepcopy(params)
    settings["extract"]["precision"] = precision
    method = build_method(name, settings, root, n_images=len(paths))
    warm = np.empty((min(8, len(paths)), method.dim), dtype=np.float32)
    method.extract(paths[:len(warm)], warm, progress=False)  # conversion / quantisation / compile
    out = np.empty((len(paths), method.dim), dtype=np.float32)
    start = time.perf_counter()
    info = method.extract(paths, out, progress=False)
    return out, len(paths) / (time.perf_counter() - start), info


def scores(features: np.ndarray, manifest, ks=(10,)) -> "object":
    is_query = (manifest["split"] == "query").to_numpy()
    return per_query_metrics(features[is_query], features[~is_query], manifest["label"][is_query].tolist(),
                             manifest["label"][~is_query].tolist(), ks=ks,
                             query_ids=manifest["image_id"][is_query].tolist())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the project (default: this repository)")
    parser.add_argument("--dataset", default=None, help="one of params.yaml's datasets (default: the only one)")
    parser.add_argument("--methods", nargs="*", help="deep methods (default: every deep method in params.yaml)")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"precision-{isa_class()}.json")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        params = select_dataset(load_params(root), args.dataset)
        manifest = read_manifest(Layout(root, params).manifest)
    except CbirError as exc:
        print(f"precision benchmark not run: {exc}")
        return 1
    paths = [root / p for p in manifest["path"]]
    names = args.methods or [m for m, cfg in params["methods"].items() if cfg.get("kind") == "deep"]
    rows = []
    for name in names:
        fp32_features, fp32_ap = None, None
        for precision in PRECISIONS:
            features, ips, info = extract(params, name, precision, paths, root)
            per_query = scores(features, manifest)
            summary = summarize(per_query, int((manifest["split"] == "database").sum()), args.n_bootstrap)
            if fp32_features is None:
                fp32_features, fp32_ap = features, per_query["ap"].to_numpy()
            cosine = np.sum(features * fp32_features, axis=1)
            test = st.paired_test(per_query["ap"].to_numpy(), fp32_ap)
            rows.append({"method": name, "requested": precision, "precision": info["precision"],
                         "ips": round(ips, 1), "cosine_min": round(float(cosine.min()), 4),
                         "cosine_mean": round(float(cosine.mean()), 4),
                         "p@10": summary["p@10"], "p@10_ci95": summary["ci95"]["p@10"],
                         "map": summary["map"], "map_ci95": summary["ci95"]["map"],
                         "map_diff": round(float(test["mean_diff"]), 6),
                         "p_permutation": test["p_permutation"], "p_wilcoxon": test["p_wilcoxon"],
                         "calibration": info.get("calibration")})
            print(json.dumps(rows[-1]), flush=True)
    isa = cpu_isa()
    result = {"machine": {"cpu_isa": isa, "n_images": len(paths), "dataset": params["dataset"]["name"],
                          "n_queries": int((manifest["split"] == "query").sum())},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nISA class {isa['class']} ({' '.join(isa['flags'])}); {len(paths)} images of {params['dataset']['name']}\n")
    print("| method | precision run | img/s | cosine to fp32 (min / mean) | P@10 [95% CI] | mAP [95% CI] "
          "| ΔmAP vs fp32 (paired p) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        p_lo, p_hi = r["p@10_ci95"]
        m_lo, m_hi = r["map_ci95"]
        test = "—" if r["requested"] == "fp32" else f"{r['map_diff']:+.4f} ({format_p(r['p_permutation'], 10000)})"
        print(f"| {r['method']} | {r['precision']} | {r['ips']} | {r['cosine_min']:.4f} / {r['cosine_mean']:.4f} "
              f"| {r['p@10']:.3f} [{p_lo:.3f}, {p_hi:.3f}] | {r['map']:.3f} [{m_lo:.3f}, {m_hi:.3f}] | {test} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
