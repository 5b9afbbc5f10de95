"""Extraction speed and memory: the pipeline's extractor against a naive loop, in one run.

    .venv/bin/python benchmarks/extract.py                 # CPU, defaults sized for a 2-core machine
    .venv/bin/python benchmarks/extract.py --device cuda   # on a GPU machine

Speed: median images/second over interleaved rounds, end to end (decode + preprocess + forward + pool + write) for ResNet50 and
MobileNetV2 (random weights: speed does not depend on their values): the pipeline as it runs a
large extraction (batched DataLoader, workers where the cores allow, channels-last,
``torch.compile`` with frozen weights where ``extract.compile=auto`` turns it on for a large run,
bf16 autocast on CUDA, memmap output), the same pipeline eager (``extract.compile=false``: what
runs under 2,000 images), and naive (one image at a time, fp32, eager, no workers, contiguous).
The compiled pipeline's one-off first call (compilation included) is timed separately as
``warmup_s``.  Memory: peak RSS of the extract code path at
two dataset sizes, each in a fresh process.  Results: a Markdown table and
``benchmarks/results/extract.json``.  Ratios, not absolute times, are the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cbir.data.images import open_rgb  # noqa: E402
from cbir.data.synthetic import generate  # noqa: E402
from cbir.features.cnn.backbones import build_classifier, trunk_of  # noqa: E402
from cbir.features.cnn.runtime import (  # noqa: E402
    default_workers, embed_batches, make_loader, make_transform, resolve_device, should_compile)
from cbir.features.cnn.pooling import pool  # noqa: E402


def images(folder: Path, n: int, size: int) -> list[Path]:
    per_class = -(-n // 10)
    rel = generate(folder, n_classes=10, per_class=per_class, size=size, seed=0, fmt="jpeg")
    return [folder / p for p in sorted(rel)[:n]]


def naive(trunk, paths, image_size, device) -> float:
    """One image at a time, fp32, contiguous, decoded in the main process."""
    trunk = trunk.to(device).to(memory_format=torch.contiguous_format).eval()
    transform = make_transform(image_size)
    out = np.empty((len(paths), trunk_out_dim(trunk, image_size)), dtype=np.float32)
    start = time.perf_counter()
    with torch.inference_mode():
        for i, path in enumerate(paths):
            x = transform(open_rgb(path))[None].to(device)
            vec = torch.nn.functional.normalize(pool("gap", trunk(x)), dim=1)
            out[i] = vec.cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def trunk_out_dim(trunk, image_size) -> int:
    with torch.inference_mode():
        p = next(trunk.parameters())
        return int(trunk(torch.zeros(1, 3, image_size, image_size, device=p.device)).shape[1])


def pipeline(trunk, paths, image_size, device, batch_size, workers, out_dir: Path, compile: bool = False) -> float:
    """The extract stage's code path, writing into a memory-mapped .npy."""
    dim = trunk_out_dim(trunk.to(device), image_size)
    loader = make_loader(paths, image_size, batch_size, device, num_workers=workers)
    start = time.perf_counter()
    out = np.lib.format.open_memmap(out_dir / "features.npy", mode="w+", dtype=np.float32, shape=(len(paths), dim))
    embed_batches(trunk, lambda f: pool("gap", f), loader, out, device, progress=False, compile=compile)
    out.flush()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def rss_child(n: int, image_size: int, workers: int, folder: str, compile: bool) -> None:
    """Run in a fresh process: extract ``n`` images with MobileNetV2, print peak RSS (MiB) as JSON."""
    paths = sorted(Path(folder).rglob("*.jpg"))[:n]
    trunk = trunk_of(build_classifier("mobilenet_v2")).eval()
    with tempfile.TemporaryDirectory() as tmp:
        rate = pipeline(trunk, paths, image_size, torch.device("cpu"), 64, workers, Path(tmp), compile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"n": n, "peak_rss_mib": round(peak, 1), "children_peak_rss_mib": round(children, 1),
                      "images_per_second": round(rate, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-speed", type=int, default=192, help="images per speed measurement")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved pipeline/naive rounds (medians reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compile", default="auto", help="extract.compile for the pipeline: auto, true or false")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--rss-sizes", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--rss-image-size", type=int, default=64, help="input size for the memory runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "extract.json")
    parser.add_argument("--rss-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        n, size, workers, folder, compile = args.rss_child
        return rss_child(int(n), int(size), int(workers), folder, compile == "True")

    device = resolve_device(args.device)
    compile = should_compile(args.compile, device, n_images=None)  # as for a large run
    workers = args.workers if args.workers is not None else default_workers(device)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "device": str(device),
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
               "workers": workers, "batch_size": args.batch_size, "compiled": compile}
    results = {"machine": machine, "speed": [], "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_imgs = max([args.n_speed] + list(args.rss_sizes))
        paths = images(tmp / "imgs", n_imgs, 256)
        for arch in args.models:
            torch.manual_seed(0)
            trunk = trunk_of(build_classifier(arch)).eval()
            speed_paths = paths[:args.n_speed]
            start = time.perf_counter()
            pipeline(trunk, speed_paths[: args.batch_size * 2], args.image_size, device, args.batch_size, 0, tmp,
                     compile)
            warmup = time.perf_counter() - start
            fast, eager, slow = [], [], []
            for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits every side
                fast.append(pipeline(trunk, speed_paths, args.image_size, device, args.batch_size, workers, tmp,
                                     compile))
                eager.append(pipeline(trunk, speed_paths, args.image_size, device, args.batch_size, workers, tmp))
                slow.append(naive(trunk, speed_paths[: max(32, args.n_speed // 4)], args.image_size, device))
            ratios = [f / s for f, s in zip(fast, slow)]
            row = {"model": arch, "pipeline_ips": round(float(np.median(fast)), 1),
                   "pipeline_eager_ips": round(float(np.median(eager)), 1),
                   "naive_ips": round(float(np.median(slow)), 1), "speedup": round(float(np.median(ratios)), 2),
                   "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
                   "eager_speedup": round(float(np.median([e / s for e, s in zip(eager, slow)])), 2),
                   "warmup_s": round(warmup, 1)}
            results["speed"].append(row)
            print(json.dumps(row), flush=True)
        for n in args.rss_sizes:
            proc = subprocess.run([sys.executable, __file__, "--rss-child", str(n), str(args.rss_image_size),
                                   str(workers), str(tmp / "imgs"), str(compile)], capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results["memory"].append(row)
            print(json.dumps(row), flush=True)
    if len(results["memory"]) >= 2:
        first, last = results["memory"][0], results["memory"][-1]
        results["rss_growth"] = round(last["peak_rss_mib"] / first["peak_rss_mib"] - 1, 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nmachine: {machine}\n")
    print("| model | pipeline img/s | speed-up (median, range) | eager pipeline img/s | eager speed-up | naive img/s "
          "| first call (s) |\n|---|---|---|---|---|---|---|")
    for r in results["speed"]:
        lo, hi = r["speedup_range"]
        print(f"| {r['model']} | {r['pipeline_ips']} | {r['speedup']}x ({lo}–{hi}) | {r['pipeline_eager_ips']} "
              f"| {r['eager_speedup']}x | {r['naive_ips']} | {r['warmup_s']} |")
    if results["memory"]:
        print("\n| images | peak RSS (MiB) | child processes peak RSS (MiB) |\n|---|---|---|")
        for r in results["memory"]:
            print(f"| {r['n']} | {r['peak_rss_mib']} | {r['children_peak_rss_mib']} |")
        if "rss_growth" in results:
            print(f"\npeak RSS growth from {results['memory'][0]['n']} to {results['memory'][-1]['n']} images: "
                  f"{100 * results['rss_growth']:+.1f}%")


if __name__ == "__main__":
    main()
