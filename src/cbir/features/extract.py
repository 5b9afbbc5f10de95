"""The ``extract`` stage: one method's descriptors for every manifest row, L2-normalised float32 [N, D]."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cbir.config import dataset_name, method_config
from cbir.errors import CbirError
from cbir.fileio import atomic_path, write_json

log = logging.getLogger("cbir")


def manifest_path(root: Path, params: dict) -> Path:
    return Path(root) / "data" / "curated" / dataset_name(params) / "manifest.csv"


def features_path(root: Path, params: dict, method: str) -> Path:
    return Path(root) / "data" / "features" / dataset_name(params) / f"{method}.npy"


def read_manifest(path: Path) -> pd.DataFrame:
    """The curated manifest (typed by ``cbir.data.curate.read_manifest``); empty is an error."""
    from cbir.data.curate import read_manifest as read_typed

    manifest = read_typed(path)
    if manifest.empty:
        raise CbirError(f"{path} has no images: check curation.json beside it for why they were dropped")
    return manifest


def load_backbone(params: dict, name: str, root: Path):
    """The trunk of backbone ``name`` with the weights the ``weights`` stage wrote."""
    from cbir.features.backbones import load_trunk

    cfg = (params.get("backbones") or {}).get(name)
    if cfg is None:
        raise CbirError(f"backbone {name!r} is used by a method but not defined under backbones: in params.yaml")
    path = Path(root) / "models" / f"{name}.pt"
    if not path.exists():
        raise CbirError(f"weight file {path} is missing: run `dvc repro weights@{name}` first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_trunk(cfg["arch"], state), cfg


def make_pool(method_cfg: dict):
    from cbir.features.pooling import pool

    name = method_cfg.get("pooling", "gap")
    kwargs = dict(method_cfg.get("pooling_params") or {})
    pool(name, torch.zeros(1, 4, 3, 3), **kwargs)  # fail fast on a bad name or parameter
    return lambda fmap: pool(name, fmap, **kwargs)


@dataclass
class DeepSetup:
    """A deep method ready to run: trunk (weights loaded once), pooling, device and sizes."""

    trunk: torch.nn.Module
    pool: Callable
    device: torch.device
    image_size: int
    batch_size: int
    scales: list[float]
    dim: int
    max_pixels: int
    compile: bool


def prepare_deep(params: dict, method_cfg: dict, root: Path, n_images: int | None = None) -> DeepSetup:
    """Load the method's backbone once and work out everything ``extract_deep`` needs, dim included."""
    from cbir.features.deep import feature_dim, resolve_device, should_compile

    trunk, bcfg = load_backbone(params, method_cfg["backbone"], root)
    pool = make_pool(method_cfg)
    device = resolve_device(params.get("device", "auto"))
    size = int(method_cfg.get("image_size") or bcfg.get("image_size", 224))
    return DeepSetup(
        trunk=trunk, pool=pool, device=device, image_size=size,
        batch_size=int(method_cfg.get("batch_size") or bcfg.get("batch_size", 32)),
        scales=[float(x) for x in (method_cfg.get("scales") or [1.0])],
        dim=feature_dim(trunk, pool, size),
        max_pixels=int((params.get("curate") or {}).get("max_pixels", 40_000_000)),
        compile=should_compile((params.get("extract") or {}).get("compile", "auto"), device, n_images),
    )


def extract_deep(paths: list[Path], params: dict, method_cfg: dict, root: Path, out: np.ndarray | None = None,
                 num_workers: int | None = None, progress: bool = True,
                 setup: DeepSetup | None = None) -> tuple[np.ndarray, dict]:
    """Deep descriptors for ``paths`` (rows in order). Returns (array, run info)."""
    from cbir.features.deep import embed_batches, make_loader

    s = setup or prepare_deep(params, method_cfg, root, n_images=len(paths))
    if out is None:
        out = np.empty((len(paths), s.dim), dtype=np.float32)
    loader = make_loader(paths, s.image_size, s.batch_size, s.device, num_workers=num_workers,
                         max_pixels=s.max_pixels)
    embed_batches(s.trunk, s.pool, loader, out, s.device, progress=progress, scales=s.scales, compile=s.compile)
    return out, {"device": str(s.device), "image_size": s.image_size, "batch_size": s.batch_size,
                 "scales": s.scales, "torch_threads": torch.get_num_threads(), "compiled": s.compile,
                 "num_workers": loader.num_workers}


def describe_image(method_cfg: dict, image: np.ndarray) -> np.ndarray:
    """One traditional descriptor, or the weighted late fusion of several (``descriptor: fusion``).

    Fusion params: ``members: {descriptor: {params}}`` and ``weights: {descriptor: w}`` (default 1);
    the cosine of fused vectors is the weighted mean of the members' cosines.
    """
    from cbir.features.handcrafted import describe, fuse

    name = method_cfg["descriptor"]
    params = dict(method_cfg.get("params") or {})
    if name != "fusion":
        return np.asarray(describe(name, image, params), dtype=np.float32)
    members = params.get("members") or {}
    if not members:
        raise CbirError("a fusion method needs params.members: {descriptor: {params}, ...}")
    weights = params.get("weights") or {}
    blocks = [np.asarray(describe(m, image, dict(p or {})), dtype=np.float32)[None] for m, p in members.items()]
    return fuse(blocks, [float(weights.get(m, 1.0)) for m in members])[0]


def handcrafted_dim(method_cfg: dict) -> int:
    probe = np.full((64, 64, 3), 127, dtype=np.uint8)
    return int(describe_image(method_cfg, probe).shape[0])


def extract_handcrafted(paths: list[Path], method_cfg: dict, out: np.ndarray | None = None,
                        max_pixels: int = 40_000_000, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Traditional descriptors for ``paths``, L2-normalised rows."""
    from cbir.data.images import load_rgb

    if out is None:
        out = np.empty((len(paths), handcrafted_dim(method_cfg)), dtype=np.float32)
    for i, path in enumerate(tqdm(paths, desc=method_cfg["descriptor"], unit="img", disable=not progress)):
        vec = describe_image(method_cfg, load_rgb(path, max_pixels=max_pixels))
        norm = float(np.linalg.norm(vec))
        out[i] = vec / norm if norm > 0 else vec
    return out, {"device": "cpu"}


def whitening_path(features: Path) -> Path:
    return features.with_suffix(".whitening.npz")


def whiten_in_place(target: Path, manifest: pd.DataFrame, whiten_cfg: dict | bool) -> str:
    """PCA-whiten the features file, learnt on the database rows only (never on queries).

    The learnt mean/components are saved beside the features so a query image can be
    projected the same way (``cbir query``).
    """
    from cbir.features.whitening import apply_whitening, fit_whitening, save_whitening

    dim = whiten_cfg.get("dim") if isinstance(whiten_cfg, dict) else None
    feats = np.load(target)
    is_db = (manifest["split"] == "database").to_numpy()
    fitted = fit_whitening(feats[is_db], None if dim is None else int(dim))
    whitened = apply_whitening(fitted, feats).astype(np.float32)
    save_whitening(fitted, whitening_path(target))
    with atomic_path(target) as tmp:
        np.save(tmp, whitened)
    log.info("whitening: learnt on %d database rows, %d -> %d dims", int(is_db.sum()), feats.shape[1],
             whitened.shape[1])
    return whitening_path(target).name


def run_extract(params: dict, method: str, root: Path) -> None:
    """Stage shell: write ``data/features/<ds>/<method>.npy`` (+ ``.json``) atomically, streaming to a memmap."""
    root = Path(root)
    cfg = method_config(params, method)
    manifest = read_manifest(manifest_path(root, params))
    paths = [root / p for p in manifest["path"]]
    target = features_path(root, params, method)
    kind = cfg.get("kind")
    start = time.perf_counter()
    engine = (params.get("extract") or {}).get("engine", "local")
    if engine not in ("local", "ray"):
        raise CbirError(f"extract.engine is {engine!r}: use local or ray")
    setup = None
    if kind == "deep":
        setup = prepare_deep(params, cfg, root, n_images=len(paths))
        dim = setup.dim
    elif kind == "handcrafted":
        dim = handcrafted_dim(cfg)
    else:
        raise CbirError(f"method {method} has kind {kind!r}: use deep or handcrafted")
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(paths), dim))
        if engine == "ray":
            from cbir.features.ray_engine import extract_with_ray

            del setup  # Ray actors load their own copy of the backbone
            info = extract_with_ray(paths, params, cfg, root, out)
        elif kind == "deep":
            workers = (params.get("extract") or {}).get("num_workers")
            _, info = extract_deep(paths, params, cfg, root, out=out, num_workers=workers, setup=setup)
        else:
            max_pixels = int((params.get("curate") or {}).get("max_pixels", 40_000_000))
            _, info = extract_handcrafted(paths, cfg, out=out, max_pixels=max_pixels)
        out.flush()
        del out
    whitening = None
    if cfg.get("whiten"):
        whitening = whiten_in_place(target, manifest, cfg["whiten"])
        dim = int(np.load(target, mmap_mode="r").shape[1])
    seconds = time.perf_counter() - start
    write_json(target.with_suffix(".json"), {
        "method": method, "n": len(paths), "dim": dim, "seconds": round(seconds, 3),
        "images_per_second": round(len(paths) / seconds, 2) if seconds > 0 else None,
        **info, "whitening": whitening, "config": cfg,
    })
    log.info("extract %s: read %s (%d images), wrote %s [%d x %d] in %.1fs (%s)", method,
             manifest_path(root, params), len(paths), target, len(paths), dim, seconds, info["device"])
