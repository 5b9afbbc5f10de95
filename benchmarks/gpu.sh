#!/usr/bin/env bash
# GPU throughput of the two heavy parts of the pipeline, in one run, written as JSON:
#
#   1. ResNet50 extraction, images/second end to end (JPEG bytes on disk -> L2-normalised 2048-d GAP rows
#      in host memory), two ways:
#        - "gpu_decode": file bytes read by a thread pool, decoded on the GPU (torchvision.io.decode_jpeg with
#          device="cuda", nvJPEG, a list per batch), resized / cropped / normalised on the GPU, bf16 autocast,
#          channels-last, large batches;
#        - "project_loader": the pipeline's own local engine (cbir.features.cnn.runtime.make_loader + embed_batches:
#          Pillow decoding in DataLoader workers, then the same trunk), the reference to beat.
#   2. Top-k search at N = 1,000,000 database vectors: FAISS on the GPU (GpuIndexFlatIP exact, IVF-Flat and
#      IVF-PQ with recall@k against the flat index) when faiss-gpu is importable or installable; otherwise an
#      exact blocked matmul + topk in PyTorch on the GPU, and the JSON says why FAISS GPU was not used.
#
# The weights are randomly initialised (speed does not depend on them; no download is needed) and the JPEGs are
# generated (smooth random scenes, 500 x 375, quality 90, like Corel-1K), so the script needs no network.
#
#   bash benchmarks/gpu.sh                          # CUDA, full sizes; JSON to $OUT or benchmarks/results/gpu.json
#   bash benchmarks/gpu.sh --device cpu --images 32 --batch-size 16 --db 20000 --dim 256 --queries 200 --pq-m 16
#                                                   # the CPU fallback path, tiny sizes (a check that it runs)
# Options: --images N (default 20000) --unique N (distinct JPEG files, cycled; 512) --batch-size N (256)
#          --workers N (DataLoader workers of project_loader; default: CPUs - 1, at most 16) --db N (1000000)
#          --dim N (2048) --queries N (10000) --k N (10) --nlist N (4096) --nprobe N (32) --pq-m N (64)
#          --no-install (do not try `pip install faiss-gpu-cu12` when faiss has no GPU support) --out FILE
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DEFAULT_OUT=benchmarks/results/gpu.json
[ -n "${OUT:-}" ] && DEFAULT_OUT="$OUT/gpu.json"

if [[ " $* " != *" --no-install "* && " $* " != *" --device cpu "* ]]; then
  # faiss-gpu only where faiss lacks GPU support and a GPU is there; failure is not fatal (reported in the JSON)
  if ! "$PY" -c 'import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)' 2>/dev/null \
     && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "faiss has no GPU support here: trying pip install faiss-gpu-cu12 (5 s timeout)" >&2
    "$PY" -m pip install -q --disable-pip-version-check --retries 0 --timeout 5 'faiss-gpu-cu12==1.14.1.post1' \
      >&2 || echo "faiss-gpu-cu12 could not be installed; the search falls back to PyTorch on the GPU" >&2
  fi
fi

exec "$PY" - --default-out "$DEFAULT_OUT" "$@" <<'PY'
import argparse
import concurrent.futures as futures
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.nn import functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

warnings.filterwarnings("ignore", message=".*(deprecated|TorchCodec).*")

p = argparse.ArgumentParser()
p.add_argument("--default-out", required=True)
p.add_argument("--out", default=None)
p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
p.add_argument("--images", type=int, default=20000)
p.add_argument("--unique", type=int, default=512)
p.add_argument("--batch-size", type=int, default=256)
p.add_argument("--workers", type=int, default=None)
p.add_argument("--image-size", type=int, default=224)
p.add_argument("--db", type=int, default=1_000_000)
p.add_argument("--dim", type=int, default=2048)
p.add_argument("--queries", type=int, default=10000)
p.add_argument("--k", type=int, default=10)
p.add_argument("--nlist", type=int, default=4096)
p.add_argument("--nprobe", type=int, default=32)
p.add_argument("--pq-m", type=int, default=64)
p.add_argument("--no-install", action="store_true")
args = p.parse_args()
out_path = Path(args.out or args.default_out)

if args.device == "cuda" and not torch.cuda.is_available():
    sys.exit("error: --device cuda but no CUDA GPU is visible: run on a GPU machine or pass --device cpu")
device = torch.device(args.device)
cuda = device.type == "cuda"
torch.backends.cudnn.benchmark = True
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def sync():
    if cuda:
        torch.cuda.synchronize()


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cpu_count": os.cpu_count(), "device": args.device}
    if cuda:
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    try:
        import faiss
        env.update(faiss=faiss.__version__, faiss_gpus=int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0)
    except ImportError:
        env["faiss"] = None
    return env


# ------------------------------------------------------------------ 1. extraction

def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct 500 x 375 JPEGs: smooth random scenes plus fine noise (realistic file sizes)."""
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        coarse = torch.rand((1, 3, 6, 8), generator=g) * 255
        img = F.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)[0]
        img = (img + 12 * torch.randn(img.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
        paths.append(path)
    return paths


def resnet50_trunk() -> torch.nn.Module:
    """torchvision ResNet50 (random weights) without avgpool/fc, via the project's loader when importable."""
    torch.manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    try:
        from cbir.features.cnn.backbones import load_trunk
        return load_trunk("resnet50", state)
    except ImportError:
        model = torchvision.models.resnet50()
        model.load_state_dict(state)
        return torch.nn.Sequential(*list(model.children())[:-2]).eval()


@torch.inference_mode()
def describe(trunk, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
        fmap = trunk(x)
    return F.normalize(fmap.float().mean(dim=(2, 3)), dim=1)


@torch.inference_mode()
def gpu_decode_pipeline(trunk, paths: list[Path], batch: int, size: int) -> tuple[np.ndarray, dict]:
    """Bytes read ahead by threads; decode (nvJPEG on CUDA), resize, crop and normalise on ``device``."""
    mean, std = MEAN.to(device), STD.to(device)
    out = np.empty((len(paths), 2048), dtype=np.float32)
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    timings = {"read_wait_s": 0.0, "decode_s": 0.0, "model_s": 0.0}
    with futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        def read(group):
            return list(pool.map(read_file, [str(p) for p in group]))
        pending = pool.submit(read, batches[0])
        row = 0
        for b in range(len(batches)):
            t0 = time.perf_counter()
            data = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(read, batches[b + 1])
            t1 = time.perf_counter()
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            images = [TF.center_crop(TF.resize(im, [size], antialias=True), [size, size]) for im in images]
            x = (torch.stack(images).float().div_(255) - mean) / std
            sync()
            t2 = time.perf_counter()
            vec = describe(trunk, x).cpu().numpy()
            t3 = time.perf_counter()
            out[row:row + len(vec)] = vec
            row += len(vec)
            timings["read_wait_s"] += t1 - t0
            timings["decode_s"] += t2 - t1
            timings["model_s"] += t3 - t2
    return out, {k: round(v, 3) for k, v in timings.items()}


def project_loader_pipeline(trunk, paths: list[Path], batch: int, size: int, workers: int) -> np.ndarray:
    from cbir.features.cnn.runtime import embed_batches, make_loader
    out = np.empty((len(paths), 2048), dtype=np.float32)
    loader = make_loader(paths, size, batch, device, num_workers=workers)
    embed_batches(trunk, lambda f: f.mean(dim=(2, 3), keepdim=True), loader, out, device, progress=False)
    return out


def timed(fn, *a, n_images: int) -> dict:
    sync()
    t0 = time.perf_counter()
    result = fn(*a)
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "images_per_s": round(n_images / seconds, 1)}, result


def bench_extraction() -> dict:
    workers = args.workers if args.workers is not None else max(0, min(16, (os.cpu_count() or 1) - 1))
    trunk = resnet50_trunk().to(device).to(memory_format=torch.channels_last).eval()
    res: dict = {"model": "resnet50 (random init; GAP, 2048-d)", "images": args.images, "unique_files": args.unique,
                 "image": "500x375 JPEG q90 (generated)", "batch_size": args.batch_size,
                 "image_size": args.image_size, "bf16_autocast": cuda, "channels_last": True,
                 "note": "files cycle over the distinct ones, so reads come from the page cache"}
    with tempfile.TemporaryDirectory() as tmp:
        unique = make_jpegs(Path(tmp), min(args.unique, args.images))
        paths = [unique[i % len(unique)] for i in range(args.images)]
        warm = paths[: min(len(paths), 2 * args.batch_size)]
        gpu_decode_pipeline(trunk, warm, args.batch_size, args.image_size)  # cudnn autotune, nvJPEG init
        stats, (a, parts) = timed(gpu_decode_pipeline, trunk, paths, args.batch_size, args.image_size,
                                  n_images=len(paths))
        res["gpu_decode" if cuda else "tensor_decode_cpu"] = {**stats, **parts}
        stats, b = timed(project_loader_pipeline, trunk, paths, args.batch_size, args.image_size, workers,
                         n_images=len(paths))
        res["project_loader"] = {**stats, "num_workers": workers, "decoder": "Pillow (cbir.data.images.open_rgb)"}
    # the two decoders and resizers differ slightly (nvJPEG/libjpeg-turbo, tensor vs PIL resize): same descriptors?
    res["cosine_gpu_decode_vs_project"] = round(float(np.mean(np.sum(a * b, axis=1))), 4)
    return res


# ------------------------------------------------------------------ 2. search

def clustered(n: int, d: int, clusters: int = 1000, seed: int = 0, chunk: int = 1 << 17) -> np.ndarray:
    """Unit vectors around ``clusters`` Gaussian centres, generated on ``device`` in chunks."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn((clusters, d), generator=torch.Generator(device=device).manual_seed(12345), device=device)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        lab = torch.randint(0, clusters, (m,), generator=g, device=device)
        x = centres[lab] + 0.6 * torch.randn((m, d), generator=g, device=device)
        out[s:s + m] = F.normalize(x, dim=1).cpu().numpy()
    return out


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


@torch.inference_mode()
def torch_exact(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    """Exact inner-product top-k: the database resident on ``device``, queries in blocks."""
    t0 = time.perf_counter()
    dbt = torch.from_numpy(db).to(device, dtype=torch.float16 if cuda else torch.float32)
    sync()
    t1 = time.perf_counter()
    parts = []
    step = 1024 if cuda else 256
    for s in range(0, len(q), step):
        qt = torch.from_numpy(q[s:s + step]).to(device, dtype=dbt.dtype)
        parts.append(torch.topk((qt @ dbt.T).float(), k, dim=1).indices.cpu())
    sync()
    t2 = time.perf_counter()
    return torch.cat(parts).numpy(), {"build_s": round(t1 - t0, 3), "search_s": round(t2 - t1, 3),
                                      "queries_per_s": round(len(q) / (t2 - t1), 1),
                                      "dtype": str(dbt.dtype).replace("torch.", "")}


def bench_search() -> dict:
    t0 = time.perf_counter()
    db = clustered(args.db, args.dim, seed=0)
    q = clustered(args.queries, args.dim, seed=1)
    res: dict = {"n": args.db, "dim": args.dim, "queries": args.queries, "k": args.k,
                 "generate_s": round(time.perf_counter() - t0, 2), "results": []}
    exact, stats = torch_exact(db, q, args.k)
    res["results"].append({"method": f"torch_exact_{args.device}", **stats, "recall_at_k": 1.0})
    try:
        import faiss
    except ImportError:
        res["faiss"] = "not installed"
        return res
    gpu = cuda and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    res["faiss"] = f"faiss {faiss.__version__} on {'GPU' if gpu else 'CPU'}"
    if cuda and not gpu:
        res["faiss_gpu_unavailable"] = ("faiss here has no GPU support and faiss-gpu-cu12 could not be installed "
                                        "(no network on the machine, or no wheel for its CUDA): CPU FAISS below")
    resources = faiss.StandardGpuResources() if gpu else None
    nlist = max(1, min(args.nlist, args.db // 39))
    m = args.pq_m if args.dim % args.pq_m == 0 else 8
    specs = [("flat", None), ("ivf_flat", f"IVF{nlist},Flat"), ("ivf_pq", f"IVF{nlist},PQ{m}")]
    if not gpu:
        specs.append(("hnsw", "HNSW32"))
    for name, factory in specs:
        t1 = time.perf_counter()
        if factory is None:
            index = faiss.GpuIndexFlatIP(resources, args.dim) if gpu else faiss.IndexFlatIP(args.dim)
        else:
            index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
            if gpu:
                options = faiss.GpuClonerOptions()
                # IVF-PQ: float16 intermediate lookup tables, needed for codes of 56 bytes and more
                options.useFloat16 = name == "ivf_pq"
                index = faiss.index_cpu_to_gpu(resources, 0, index, options)
            train = db[np.random.default_rng(0).choice(len(db), min(len(db), 256 * nlist), replace=False)]
            index.train(train)
        index.add(db)
        if factory and "IVF" in factory:
            space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
            space.set_index_parameter(index, "nprobe", args.nprobe)
        if name == "hnsw":
            index.hnsw.efSearch = 128
        t2 = time.perf_counter()
        index.search(q[:16], args.k)  # warm-up
        t3 = time.perf_counter()
        _, found = index.search(q, args.k)
        t4 = time.perf_counter()
        res["results"].append({"method": f"faiss_{name}_{'gpu' if gpu else 'cpu'}", "factory": factory or "FlatIP",
                               "build_s": round(t2 - t1, 3), "search_s": round(t4 - t3, 3),
                               "queries_per_s": round(len(q) / (t4 - t3), 1),
                               "recall_at_k": round(recall(found, exact), 4),
                               **({"nprobe": args.nprobe} if factory and "IVF" in factory else {})})
        del index
    return res


if __name__ == "__main__":
    result = {"benchmark": "gpu", "config": {k: v for k, v in vars(args).items() if k != "default_out"},
              "environment": environment()}
    print(f"extraction: {args.images} images, batch {args.batch_size}, {args.device}", file=sys.stderr, flush=True)
    result["extraction"] = bench_extraction()
    print(json.dumps(result["extraction"], indent=1), file=sys.stderr, flush=True)
    print(f"search: N = {args.db}, d = {args.dim}, {args.queries} queries", file=sys.stderr, flush=True)
    result["search"] = bench_search()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out_path)
    print(json.dumps(result["search"], indent=1), file=sys.stderr)
    print(f"wrote {out_path}", file=sys.stderr)
PY
