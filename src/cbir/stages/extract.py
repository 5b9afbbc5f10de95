"""Stage ``extract`` (one per dataset): every method's descriptors for every manifest row, L2-normalised float32
``[N, D]``; a method whose inputs are unchanged since its last run keeps its files (:func:`run`).

Writes ``data/features/<ds>/<method>.npy`` (streamed into a memmap whose blocks are allocated first, so a
full disk is one error at the start, never a bus error; renamed into place when complete) and
``<method>.json`` (dimension, device, settings, and the sha256 of the manifest rows and of the ``.npy``
that every reader verifies; no timings, so reruns give the same bytes).
With ``whiten:`` the features are PCA-whitened, learnt on the database rows only, and the learnt
projection is saved beside them for queries.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np

from cbir.codegraph import SRC, modules_digest, stage_closure
from cbir.data.images import check_images
from cbir.data.manifest import read_manifest
from cbir.features.handcrafted import DESCRIPTORS
from cbir.features.methods import build
from cbir.features.store import integrity_record
from cbir.features.whitening import apply_whitening, fit_whitening, save_whitening
from cbir.fileio import atomic_group, atomic_path, read_json, sha256_bytes, sha256_file
from cbir.layout import Layout
from cbir.machine import write_run_record
from cbir.settings import Extract, MethodRun, need

log = logging.getLogger("cbir")


def whiten_file(target: Path, is_database: np.ndarray, whiten_cfg: Mapping | bool, whitening: Path) -> int:
    """PCA-whiten the features file in place, learnt on the database rows; save the projection
    (``whiten_cfg``: ``true``, or ``{dim: <n>}``; no ``dim``: every dimension)."""
    dim = whiten_cfg.get("dim") if isinstance(whiten_cfg, Mapping) else None
    feats = np.load(target)
    fitted = fit_whitening(feats[is_database], None if dim is None else int(dim))
    whitened = apply_whitening(fitted, feats).astype(np.float32)
    save_whitening(fitted, whitening)
    with atomic_path(target) as tmp:
        np.save(tmp, whitened)
    log.info("whitening: learnt on %d database rows, %d -> %d dims", int(is_database.sum()), feats.shape[1],
             whitened.shape[1])
    return int(whitened.shape[1])


def preallocated_memmap(path: Path, shape: tuple[int, int]) -> np.memmap:
    """A float32 ``.npy`` memmap at ``path`` (the bytes ``open_memmap`` writes) whose blocks are allocated
    on disk before it is mapped: a full disk is an ``OSError`` here, never a SIGBUS on a later page."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        size = handle.tell() + int(np.prod(shape)) * 4
        handle.flush()
        if size > handle.tell():
            os.posix_fallocate(handle.fileno(), 0, size)
    return np.lib.format.open_memmap(path, mode="r+")


def method_code(run: MethodRun, src: Path = SRC) -> str:
    """Digest of the code ``run`` executes: the stage's code without the built-in descriptors it does not use
    (a traditional method uses those its ``_target_`` or fusion members name) and, unless it is deep, without the
    CNN package, so an edit to one descriptor redoes only the methods that use it."""
    builtins = {target.partition(":")[0]: name for name, target in DESCRIPTORS.items()}
    node = run.method.descriptor or {}
    target = str(node.get("_target_", ""))
    used = {m for m in builtins if target == m or target.startswith(m + ".")}
    used |= {m for m, name in builtins.items() if name in (node.get("members") or {})}
    modules = stage_closure("extract", src) - (set(builtins) - used)
    if run.method.kind != "deep":
        modules = {m for m in modules if not m.startswith("cbir.features.cnn")}
    return modules_digest(modules, src)


def inputs_key(run: MethodRun, manifest_file: Path, code: str, root: Path) -> str:
    """sha256 of everything method ``run`` computes its features from: the manifest's bytes, its typed settings
    (its own config and the sections it reads: a traditional method reads no ``extract`` or ``device``), the
    files it names (``requires``: weights, your own code) and its code (:func:`method_code`)."""
    named = [(run.method.raw.get("requires") or {}).get(key) for key in ("code", "data")]
    named = sorted({str(p) for item in named if item for p in ([item] if isinstance(item, str) else item)})
    files = {}
    for name in named:  # a file, or every file under a folder
        path = root / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts:
                files[file.relative_to(root).as_posix()] = sha256_file(file)
    record = {"manifest": sha256_file(manifest_file), "settings": asdict(run), "code": code, "files": files}
    return sha256_bytes(json.dumps(record, sort_keys=True, default=str).encode())


def up_to_date(paths: Layout, name: str, key: str) -> bool:
    """Whether ``name``'s features and sidecar are in place, were computed from inputs ``key`` and still hold
    the bytes the sidecar recorded (a damaged file is computed again)."""
    info = paths.features_info(name)
    if not (info.is_file() and paths.features(name).is_file()):
        return False
    try:
        record = read_json(info)
    except (OSError, ValueError):
        return False
    return record.get("inputs_sha256") == key and record.get("features_sha256") == sha256_file(paths.features(name))


def run(params: dict, root: str | Path, method: str | None = None) -> None:
    """Every method of ``params`` (or only ``method``) for the dataset: a method is extracted again only when
    :func:`inputs_key` changed, so one method's change redoes that method's work alone.  Files of methods no
    longer in ``params`` are removed (the folder is this stage's DVC output)."""
    root = Path(root)
    paths = Layout(root, params)
    names = [method] if method else list(need(params, "methods"))
    configs = {name: MethodRun.from_params(params, name) for name in names}  # an unknown method: one line, first
    read_manifest(paths.manifest)  # a missing or damaged manifest is one clear line before any work
    start = time.perf_counter()
    done = []
    for name, config in configs.items():
        key = inputs_key(config, paths.manifest, method_code(config), root)
        if up_to_date(paths, name, key):
            log.info("extract %s: up to date (inputs %s)", name, key[:12])
            continue
        extract_method(params, name, root, key)
        done.append(name)
    if method is None:
        stale = remove_stale(paths.features_dir, names)
        if stale:
            log.info("extract: removed %s (methods no longer in params)", ", ".join(stale))
    log.info("extract %s: %d of %d methods computed in %.1fs", paths.dataset, len(done), len(names),
             time.perf_counter() - start)


def remove_stale(folder: Path, names: list[str]) -> list[str]:
    """Delete the files in ``folder`` that belong to no method of ``names``; their names."""
    keep = {f"{n}{suffix}" for n in names for suffix in (".npy", ".json", ".whitening.npz")}
    stale = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in keep) if folder.is_dir() else []
    for name in stale:
        (folder / name).unlink()
    return stale


def extract_method(params: dict, name: str, root: str | Path, key: str) -> None:
    """Extract method ``name`` for every manifest row; its sidecar records ``key`` (:func:`inputs_key`)."""
    root = Path(root)
    paths = Layout(root, params)
    config = MethodRun.from_params(params, name)  # the method's own config, and the sections it reads
    settings = Extract.from_params(params)
    manifest = read_manifest(paths.manifest)
    images = [root / p for p in manifest["path"]]
    target = paths.features(name)
    start = time.perf_counter()
    method = build(config, root, lambda: paths.manifest, n_images=len(images))
    if method.kind != "precomputed":  # what curation drops, a hand-made manifest cannot bring back
        check_images(images, config.max_pixels, getattr(method, "image_size", None))
    outputs = [target, paths.features_info(name)] + ([paths.whitening(name)] if config.method.whiten else [])
    with atomic_group(outputs) as (tmp, info_tmp, *whitening_tmp):  # replaced together, or not at all
        out = preallocated_memmap(tmp, (len(images), method.dim))
        if settings.engine == "ray":
            from cbir.features.ray_engine import (
                extract_with_ray,  # optional extra: imported on use
            )

            info = extract_with_ray(images, params, name, root, out)
        else:
            info = method.extract(images, out, num_workers=settings.num_workers)
        out.flush()
        del out
        dim = method.dim
        whitening = None
        if config.method.whiten:
            is_database = (manifest["split"] == "database").to_numpy()
            dim = whiten_file(tmp, is_database, config.method.whiten, whitening_tmp[0])
            whitening = paths.whitening(name).name
        record = {"method": name, "n": len(images), "dim": dim, **info, "whitening": whitening,
                  "config": dict(config.method.raw), "inputs_sha256": key, **integrity_record(tmp, manifest)}
        info_tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - start
    log.info("extract %s: read %s (%d images), wrote %s [%d x %d] in %.1fs (%.1f images/s, %s)", name,
             paths.manifest, len(images), target, len(images), dim, seconds, len(images) / max(seconds, 1e-9),
             info.get("device"))
    machine = method.machine_info() if hasattr(method, "machine_info") else {}  # deep methods: workers, OpenVINO
    write_run_record(root, f"extract@{paths.dataset}-{name}", {"seconds": round(seconds, 3), "images": len(images),
                                                               **machine})
