"""Stage ``extract``: one method's descriptors for every manifest row, L2-normalised float32 ``[N, D]``.

Writes ``data/features/<ds>/<method>.npy`` (streamed into a memmap whose blocks are allocated first, so a
full disk is one error at the start, never a bus error; renamed into place when complete) and
``<method>.json`` (dimension, device, settings, and the sha256 of the manifest rows and of the ``.npy``
that every reader verifies; no timings, so reruns give the same bytes).
With ``whiten:`` the features are PCA-whitened, learnt on the database rows only, and the learnt
projection is saved beside them for queries.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from cbir.data.manifest import read_manifest
from cbir.features.methods import build
from cbir.features.store import integrity_record
from cbir.features.whitening import apply_whitening, fit_whitening, save_whitening
from cbir.fileio import atomic_path, write_json
from cbir.layout import Layout
from cbir.settings import Extract, MethodRun

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


def run(params: dict, name: str, root: str | Path) -> None:
    """Extract method ``name`` for every manifest row."""
    root = Path(root)
    paths = Layout(root, params)
    config = MethodRun.from_params(params, name)  # the method's own config, and the sections it reads
    settings = Extract.from_params(params)
    manifest = read_manifest(paths.manifest)
    images = [root / p for p in manifest["path"]]
    target = paths.features(name)
    start = time.perf_counter()
    method = build(config, root, lambda: paths.manifest, n_images=len(images))
    with atomic_path(target) as tmp:
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
        dim = whiten_file(target, is_database, config.method.whiten, paths.whitening(name))
        whitening = paths.whitening(name).name
    write_json(paths.features_info(name), {"method": name, "n": len(images), "dim": dim, **info,
                                           "whitening": whitening, "config": dict(config.method.raw),
                                           **integrity_record(target, manifest)})
    seconds = time.perf_counter() - start
    log.info("extract %s: read %s (%d images), wrote %s [%d x %d] in %.1fs (%.1f images/s, %s)", name,
             paths.manifest, len(images), target, len(images), dim, seconds, len(images) / max(seconds, 1e-9),
             info.get("device"))
