"""Extraction speed and memory on this machine, every runtime x precision against the naive loop, in one run.

    .venv/bin/python benchmarks/extract.py                  # CPU (sized for a 2-core machine)
    .venv/bin/python benchmarks/extract.py --device cuda    # on a GPU machine (torch variants only)

Deep methods (random weights: speed does not depend on their values; each runtime family in its own
fresh process per round, so one runtime's idle threads never slow another's), end to end (decode + preprocess +
forward + pool + write into a memmap), median images/second over interleaved rounds (so a busy spell on
a shared machine hits every variant) and the range:

* ``naive``: one image at a time, torch eager fp32, contiguous, no workers;
* ``torch-fp32``: the stage's batched loop, eager (``extract.runtime=torch``);
* ``torch-compile-fp32``: the same with ``torch.compile`` (frozen weights; only with ``--compile``);
* ``torch-bf16``: bf16 autocast on the CPU (emulated where the CPU has no native bf16);
* ``openvino-fp32`` / ``openvino-bf16``: the OpenVINO runtime (``extract.runtime=auto`` on CPU); the
  precision OpenVINO really compiled is recorded (a CPU without native bf16 runs fp32);
* ``openvino-int8``: ``extract.precision=int8``, NNCF post-training quantisation calibrated on
  ``--n-calibration`` of the generated images (its setup time includes the quantisation).

``setup_s`` is the one-off cost before the first image (OpenVINO conversion + compile, or torch.compile),
measured once.  ``peak_fraction`` is the forward pass's share of the CPU's theoretical peak
(FLOPs per image from ``torch.utils.flop_counter`` x images/s over cores x clock x FLOPs per cycle for
the ISA; the clock is ``/proc/cpuinfo``'s current MHz, so it is an estimate).  Traditional descriptors:
images/second of each default method (decode once at the working size + describe), one process and
the default workers.  Memory: peak RSS of the default deep path at two dataset sizes, each in a fresh
process.  Everything goes to ``benchmarks/results/extract-<isa class>.json`` (one file per machine kind:
avx2, avx512, avx512-bf16, amx; :func:`cbir.machine.isa_class`) with the CPU
model, ISA flags and core count.  Ratios measured in one run, not absolute times, are the claims.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cbir.data.images import MAX_PIXELS, open_rgb  # noqa: E402
from cbir.data.synthetic import generate  # noqa: E402
from cbir.features.handcrafted import build_descriptor, descriptor_node  # noqa: E402

if __name__ == "__main__":
    # torch, torchvision and OpenVINO only in the benchmark process itself: the traditional methods' worker
    # processes re-import this file (as __mp_main__), and seconds of imports there would be timed as theirs
    import torch

    from cbir.features.cnn.backbones import build_classifier, trunk_of
    from cbir.features.cnn.openvino_int8 import calibration_inputs, quantize
    from cbir.features.cnn.openvino_runtime import OpenVinoTrunk, convert_trunk
    from cbir.machine import cpu_flags, cpu_isa, cpu_model, isa_class
    from cbir.features.cnn.pooling import pool
    from cbir.features.cnn.runtime import embed_batches, make_loader, make_transform, resolve_device

#: FLOPs per cycle per core at the widest fp32 / bf16 unit (2 FMA pipes; AMX: Intel's 1,024 bf16 FMA per cycle)
FLOPS_PER_CYCLE = {"fp32": {"avx512": 64, "avx2": 32, "amx": 64}, "bf16": {"amx": 2048, "avx512": 128}}
TORCH_THREADS = os.cpu_count() or 1  # torch's default: one thread per core
HANDCRAFTED = {"hsv_hist": {"descriptor": descriptor_node("hsv_histogram", {"bins": [8, 4, 4]})},
               "color_moments": {"descriptor": descriptor_node("color_moments")},
               "correlogram": {"descriptor": descriptor_node("color_autocorrelogram")},
               "lbp": {"descriptor": descriptor_node("lbp_histogram")}, "glcm": {"descriptor": descriptor_node("glcm_stats")},
               "hog": {"descriptor": descriptor_node("hog_descriptor")},
               "fusion": {"descriptor": descriptor_node("fusion", {"members": {"hsv_histogram": {"bins": [8, 4, 4]},
                                                                         "lbp_histogram": {}, "hog_descriptor": {}}})}}


def images(folder: Path, n: int, size: int) -> list[Path]:
    per_class = -(-n // 10)
    rel = generate(folder, n_classes=10, per_class=per_class, size=size, seed=0, fmt="jpeg", quality=90)
    return [folder / p for p in sorted(rel)[:n]]


def cpu_mhz() -> float | None:
    try:
        values = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return None
    return max(values) if values else None


def forward_flops(trunk, image_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        trunk(torch.zeros(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


def peak_fraction(ips: float, flops: float, precision: str, isa: str, cores: int) -> float | None:
    per_cycle = FLOPS_PER_CYCLE.get(precision, {}).get(isa)
    mhz = cpu_mhz()
    if per_cycle is None or mhz is None:
        return None
    return round(ips * flops / (cores * mhz * 1e6 * per_cycle), 4)


def naive(trunk, paths, image_size, device, out_dir: Path) -> float:
    """One image at a time, fp32, contiguous, decoded in the main process."""
    torch.set_num_threads(TORCH_THREADS)
    trunk = trunk.to(device).to(memory_format=torch.contiguous_format).eval()
    transform = make_transform(image_size)
    start = time.perf_counter()
    rows = []
    with torch.inference_mode():
        for path in paths:
            x = transform(open_rgb(path))[None].to(device)
            rows.append(torch.nn.functional.normalize(pool("gap", trunk(x)), dim=1).cpu().numpy()[0])
    np.save(out_dir / "naive.npy", np.stack(rows))
    return len(paths) / (time.perf_counter() - start)


def pipeline(runner, dim, paths, image_size, device, batch_size, workers, out_dir: Path, compile=False,
             use_amp=None) -> float:
    """The extract stage's code path (batched loader, memmap output) with ``runner`` as the trunk."""
    if isinstance(runner, torch.nn.Module):
        torch.set_num_threads(TORCH_THREADS)  # an OpenVINO variant sets one thread (the stage does too)
    loader = make_loader(paths, image_size, batch_size, device, num_workers=workers)
    start = time.perf_counter()
    out = np.lib.format.open_memmap(out_dir / "features.npy", mode="w+", dtype=np.float32, shape=(len(paths), dim))
    embed_batches(runner, lambda f: pool("gap", f), loader, out, device, progress=False, compile=compile,
                  use_amp=use_amp)
    out.flush()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


FAMILIES = {"torch": ("naive", "torch-fp32", "torch-compile-fp32", "torch-bf16"),
            "openvino": ("openvino-fp32", "openvino-bf16", "openvino-int8")}


def family_child(arch: str, family: str, folder: str, args) -> None:
    """In a fresh process (so one runtime's idle threads never slow another's): one round of ``family``'s
    variants on the same images; prints ``{variant: [img/s, setup s, precision run]}`` as JSON."""
    device = resolve_device(args.device)
    paths = sorted(Path(folder).rglob("*.jpg"))[:args.n_speed]
    torch.manual_seed(0)
    trunk = trunk_of(build_classifier(arch)).eval()
    with torch.inference_mode():
        dim = int(trunk(torch.zeros(1, 3, args.image_size, args.image_size)).shape[1])
    out: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in FAMILIES[family]:
            if name == "torch-compile-fp32" and not args.compile:
                continue
            if name == "naive":
                out[name] = [naive(trunk, paths[:max(16, len(paths) // 2)], args.image_size, device, tmp), 0.0, "fp32"]
                continue
            start = time.perf_counter()
            if name == "openvino-int8":
                def convert():
                    calibration = calibration_inputs(paths[:args.n_calibration], args.image_size, 40_000_000)
                    return quantize(convert_trunk(trunk, args.image_size), calibration)

                runner = OpenVinoTrunk(convert, args.image_size, "int8")
                compile, use_amp, precision = False, False, runner.effective_precision
            elif family == "openvino":
                runner = OpenVinoTrunk.from_module(trunk, args.image_size, name.split("-")[1])
                compile, use_amp, precision = False, False, runner.effective_precision
            else:
                runner, compile, use_amp = trunk, name == "torch-compile-fp32", name == "torch-bf16"
                precision = "bf16" if use_amp else "fp32"
            pipeline(runner, dim, paths[:args.batch_size], args.image_size, device, args.batch_size, 0, tmp,
                     compile, use_amp)  # first call: conversion / compile / shape warm-up
            setup = time.perf_counter() - start
            rate = pipeline(runner, dim, paths, args.image_size, device, args.batch_size, args.workers or 0, tmp,
                            compile, use_amp)
            out[name] = [rate, setup, precision]
    print(json.dumps(out))


def bench_model(arch: str, folder: Path, args, device, isa: str) -> dict:
    """Interleaved rounds: per round, the torch family then the OpenVINO family, each in a fresh process."""
    flops = forward_flops(trunk_of(build_classifier(arch)).eval(), args.image_size)
    families = ["torch"] + (["openvino"] if device.type == "cpu" else [])
    runs: dict[str, list] = {}
    for _ in range(args.rounds):
        for family in families:
            cmd = [sys.executable, __file__, "--family-child", arch, family, str(folder), "--device", args.device,
                   "--n-speed", str(args.n_speed), "--image-size", str(args.image_size),
                   "--batch-size", str(args.batch_size), "--n-calibration", str(args.n_calibration)] + ([] if args.compile else ["--no-compile"])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{arch} {family} failed: {proc.stderr.strip().splitlines()[-1:]}")
            for name, value in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                runs.setdefault(name, []).append(value)
    rows = []
    naive_rates = [v[0] for v in runs["naive"]]
    eager_rates = [v[0] for v in runs["torch-fp32"]]
    openvino_rates = [v[0] for v in runs.get("openvino-fp32", [])]
    for name, values in runs.items():
        rates = [v[0] for v in values]
        precision = values[0][2]
        vs_naive = [r / n for r, n in zip(rates, naive_rates)]
        ips = float(np.median(rates))
        rows.append({"model": arch, "variant": name, "precision": precision, "ips": round(ips, 1),
                     "ips_range": [round(min(rates), 1), round(max(rates), 1)],
                     "vs_naive": round(float(np.median(vs_naive)), 2),
                     "vs_naive_range": [round(min(vs_naive), 2), round(max(vs_naive), 2)],
                     "vs_torch_eager": round(float(np.median([r / e for r, e in zip(rates, eager_rates)])), 2),
                     "vs_openvino_fp32": (round(float(np.median([r / o for r, o in zip(rates, openvino_rates)])), 2)
                                          if openvino_rates else None),
                     "setup_s": round(float(np.median([v[1] for v in values])), 2),
                     "peak_fraction": peak_fraction(ips, flops, precision, isa, os.cpu_count() or 1)})
        print(json.dumps(rows[-1]), flush=True)
    return {"model": arch, "gflops_per_image": round(flops / 1e9, 3), "rows": rows}


def bench_handcrafted(paths, rounds: int) -> list[dict]:
    from cbir.features.methods import HandcraftedMethod

    results = []
    for name, cfg in HANDCRAFTED.items():
        method = HandcraftedMethod(name=name, config={"kind": "handcrafted", **cfg},
                                   descriptor=build_descriptor(cfg["descriptor"]), max_pixels=MAX_PIXELS)
        out = np.zeros((len(paths), method.dim), np.float32)
        rates = {"one_process": [], "default_workers": []}
        for _ in range(rounds):
            for key, workers in (("one_process", 0), ("default_workers", None)):
                start = time.perf_counter()
                method.extract(paths, out, progress=False, num_workers=workers)
                rates[key].append(len(paths) / (time.perf_counter() - start))
        row = {"method": name, "decode_max_side": method.max_side,
               **{f"{k}_ips": round(float(np.median(v)), 1) for k, v in rates.items()},
               **{f"{k}_range": [round(min(v), 1), round(max(v), 1)] for k, v in rates.items()}}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def rss_child(n: int, image_size: int, folder: str) -> None:
    """Run in a fresh process: the default (OpenVINO fp32) path over ``n`` images with MobileNetV2."""
    paths = sorted(Path(folder).rglob("*.jpg"))[:n]
    trunk = trunk_of(build_classifier("mobilenet_v2")).eval()
    runner = OpenVinoTrunk.from_module(trunk, image_size, "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        rate = pipeline(runner, 1280, paths, image_size, torch.device("cpu"), 32, 0, Path(tmp))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "peak_rss_mib": round(peak, 1), "images_per_second": round(rate, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-speed", type=int, default=64, help="images per deep speed measurement")
    parser.add_argument("--n-calibration", type=int, default=32, help="images the int8 variant calibrates on")
    parser.add_argument("--n-handcrafted", type=int, default=300, help="images per traditional measurement")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians and ranges reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (15-30 s per round)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--models", nargs="*", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--no-handcrafted", dest="handcrafted", action="store_false")
    parser.add_argument("--rss-sizes", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--rss-image-size", type=int, default=64, help="input size for the memory runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/extract-<isa class>.json (one file per machine kind)")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--family-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.family_child:
        return family_child(*args.family_child, args)
    if args.rss_child:
        n, size, folder = args.rss_child
        return rss_child(int(n), int(size), folder)

    device = resolve_device(args.device)
    isa = cpu_isa()
    args.out = args.out or REPO / "benchmarks" / "results" / f"extract-{isa_class()}.json"
    import openvino

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": isa,
               "all_flags_bf16_amx": sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f),
               "cpu_mhz": cpu_mhz(), "platform": platform.platform(), "torch": torch.__version__,
               "openvino": openvino.__version__.split("-")[0], "torch_threads": torch.get_num_threads(),
               "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
               "batch_size": args.batch_size, "image_size": args.image_size, "rounds": args.rounds,
               "shared_machine_note": "other processes may share these cores; ratios are from one run"}
    results = {"machine": machine, "deep": [], "handcrafted": [], "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_imgs = max([args.n_speed, args.n_handcrafted] + list(args.rss_sizes))
        paths = images(tmp / "imgs", n_imgs, 256)
        for arch in args.models:
            results["deep"].append(bench_model(arch, tmp / "imgs", args, device, isa["level"]))
        if args.handcrafted:
            results["handcrafted"] = bench_handcrafted(paths[:args.n_handcrafted], args.rounds)
        for n in args.rss_sizes:
            proc = subprocess.run([sys.executable, __file__, "--rss-child", str(n), str(args.rss_image_size),
                                   str(tmp / "imgs")], capture_output=True, text=True, check=True)
            results["memory"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results["memory"][-1]), flush=True)
    if len(results["memory"]) >= 2:
        first, last = results["memory"][0], results["memory"][-1]
        results["rss_growth"] = round(last["peak_rss_mib"] / first["peak_rss_mib"] - 1, 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{machine['cpu']}, {machine['cores']} cores, ISA class {isa['class']} ({' '.join(isa['flags'])})\n")
    print("| model | variant | precision run | img/s (median, range) | vs naive | vs torch eager | vs OpenVINO fp32 "
          "| setup (s) | share of peak |\n|---|---|---|---|---|---|---|---|---|")
    for model in results["deep"]:
        for r in model["rows"]:
            lo, hi = r["ips_range"]
            peak = "n/a" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%"
            print(f"| {r['model']} | {r['variant']} | {r['precision']} | {r['ips']} ({lo}–{hi}) | {r['vs_naive']}x "
                  f"| {r['vs_torch_eager']}x | {r['vs_openvino_fp32'] or 'n/a'}x | {r['setup_s']} | {peak} |")
    if results["handcrafted"]:
        print("\n| method | decoded at (px) | img/s, one process | img/s, default workers |\n|---|---|---|---|")
        for r in results["handcrafted"]:
            print(f"| {r['method']} | {r['decode_max_side']} | {r['one_process_ips']} | {r['default_workers_ips']} |")
    if results["memory"]:
        print("\n| images | peak RSS (MiB) |\n|---|---|")
        for r in results["memory"]:
            print(f"| {r['n']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
