"""Peak memory of the extract stage on the images curation admits at the edge of its rules, in one run.

    .venv/bin/python benchmarks/thin_image.py            # every case below, each in a fresh process
    .venv/bin/python benchmarks/thin_image.py --small    # a smoke test: the small cases only

Curation admits an image whose longer side is at most 50 times its shorter one (``bad_aspect`` beyond:
:data:`cbir.data.images.MAX_ASPECT_RATIO`) and whose header holds at most ``curate.max_pixels`` pixels
(40 M by default). The worst admitted shapes for the extract stage are then

* ``thinnest``: 1600 x 32, the thinnest strip (50:1 at the smallest side ``curate.min_side`` allows);
* ``largest_strip``: 44700 x 894, a 50:1 strip of 39.96 M pixels (curation's limits both reached): the
  most pixels to decode and the longest side after a deep method resizes its shorter side to 224 px
  (11200 x 224);

against ``normal`` (640 x 480) as the baseline. Each case runs the real extract stage
(:func:`cbir.stages.extract.run`) in its own process on a one-image manifest, with a deep method on a
random-weight MobileNetV2 (torch runtime, 224 px input; the weights stage writes it from a local file as
the tests' ``use_random_mobilenet`` does) and the handcrafted HOG, and reads the process's peak resident
memory (``VmHWM`` of ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` would also count the parent's
memory at the fork that started it). Results go to ``benchmarks/results/thin_image-<isa>.json`` with
the CPU model. Before issue 36, a 1,250,000 x 32 PNG passed curation and extract peaked at 10.1 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cbir.machine import cpu_model, isa_class  # noqa: E402
from cbir.fileio import sha256_file  # noqa: E402

CASES = {"normal": (640, 480), "thinnest": (1600, 32), "largest_strip": (44700, 894)}
SMALL = ("normal", "thinnest")
METHODS = ("mobilenet_v2-gap", "hog")
LIMIT_BYTES = 1.5e9  # the bound on extract's peak memory


def strip_png(path: Path, size: tuple[int, int]) -> Path:
    """A compressible RGB test image of ``size`` (a gradient with a coarse checker pattern)."""
    width, height = size
    x = (np.arange(width, dtype=np.uint32) * 255 // max(1, width - 1)).astype(np.uint8)
    y = (np.arange(height, dtype=np.uint32) * 255 // max(1, height - 1)).astype(np.uint8)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = x[None, :]
    rgb[..., 1] = y[:, None]
    rgb[..., 2] = ((np.arange(width)[None, :] // 16 + np.arange(height)[:, None] // 16) % 2 * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path, compress_level=1)
    return path


def build_root(root: Path, weights: Path, case: str) -> dict:
    """A repository root with one image, its manifest and params: the default params with the random
    MobileNetV2 read from ``weights`` (torch runtime) and one dataset ``thin``."""
    (root / "data/raw/thin/a").mkdir(parents=True, exist_ok=True)
    image = strip_png(root / "data/raw/thin/a" / f"{case}.png", CASES[case])
    rel = image.relative_to(root).as_posix()
    width, height = CASES[case]
    curated = root / "data/curated/thin"
    curated.mkdir(parents=True, exist_ok=True)
    (curated / "manifest.csv").write_text(
        "image_id,path,label,split,width,height,sha256,protocol\n"
        f"a/{case},{rel},a,database,{width},{height},{sha256_file(image)},holdout\n", encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["datasets"] = {"thin": {"source": "folder", "folder": str(root / "data/raw/thin"), "drop_variants": False}}
    params["extract"] = {**params["extract"], "runtime": "torch", "compile": False, "num_workers": 0}
    params["device"] = "cpu"
    params["backbones"]["mobilenet_v2"].update(source="file", file=str(weights), sha256=sha256_file(weights),
                                               allow_unverified=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params


def child(root: Path, method: str) -> None:
    """Run the extract stage once in this process and print its peak memory as JSON."""
    from cbir.config import load_params, select_dataset
    from cbir.stages import extract

    params = select_dataset(load_params(root), "thin")
    start = time.perf_counter()
    extract.run(params, root, method)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_bytes": vm_hwm(), "seconds": round(seconds, 2)}))


def vm_hwm() -> int:
    """This process's peak resident memory in bytes (``VmHWM``; kept across nothing but this program)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(root: Path, method: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(root), method], capture_output=True, text=True,
                          timeout=1800, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the small cases only (a smoke test)")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results/)")
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return 0
    import torch
    import torchvision

    from cbir.stages.weights import run as run_weights

    results = {"cpu": cpu_model(), "isa": isa_class(), "limit_bytes": LIMIT_BYTES, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="thin_image.") as tmp:
        torch.manual_seed(0)
        weights = Path(tmp) / "mobilenet_v2_random.pt"
        torch.save(torchvision.models.mobilenet_v2().features.state_dict(), weights)
        for case in (SMALL if args.small else CASES):
            root = Path(tmp) / case
            params = build_root(root, weights, case)
            from cbir.config import select_dataset

            run_weights(select_dataset(params, "thin"), "mobilenet_v2", root)
            row = {"size": list(CASES[case])}
            for method in METHODS:
                row[method] = measure(root, method)
                print(f"{case} {CASES[case][0]}x{CASES[case][1]} {method}: {row[method]}", flush=True)
            results["cases"][case] = row
    peaks = [r[m]["peak_bytes"] for r in results["cases"].values() for m in METHODS if "peak_bytes" in r[m]]
    results["max_peak_bytes"] = max(peaks, default=None)
    results["within_limit"] = bool(peaks) and max(peaks) < LIMIT_BYTES
    out = args.out or REPO / "benchmarks" / "results" / f"thin_image-{results['isa']}.json"
    if not args.small or args.out:
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
