"""Curation: decode every candidate for real, drop what cannot be used (saying why), split.

The result is the manifest every later stage trusts (columns :data:`MANIFEST_COLUMNS`,
rows sorted by ``image_id``) and a report of what was dropped and why.

* ``image_id`` is the file's path relative to the raw folder without its extension
  (``animals/birds/robin``); when two files differ only by extension, both keep it.
* ``path`` is relative to the repository root and points at the raw file, except for
  Fashion-MNIST, whose idx files are decoded into PNG files under
  ``data/curated/<name>/images/{train,test}/<index>.png``.
* Exact duplicates (same decoded RGB pixels and shape) are kept once: the first by ``image_id``.
* Classes with fewer than ``min_per_class`` images are dropped (reason ``class_too_small``);
  a class folder left with no image is reported as an ``empty`` class.
* Split: ``holdout`` picks, per class, ``query_fraction`` of the images (when set, at least 1)
  or else ``queries_per_class`` images as queries with ``numpy.random.default_rng([seed,
  crc32(label)])`` over the class's image ids in sorted order, always leaving at least one
  database image; ``leave_one_out`` makes every row a database row (each is also a query);
  ``predefined`` uses the dataset's own split (Fashion-MNIST: test = queries, train =
  database) and is written to the manifest as ``holdout``.
* Fashion-MNIST: ``parts`` (default ``[train, test]``) selects the idx parts, ``per_class``
  (default all) keeps the first N images of each class in each part, in file order;
  ``min_side`` is capped at 28 unless ``dataset.curate.min_side`` is set.
* ``dataset.curate`` (optional) overrides ``curate.*`` for one dataset.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cbir.data.benchmarks import CURATED_SOURCES, curate_benchmark
from cbir.data.images import IMAGE_EXTENSIONS, ImageError, decode_rgb
from cbir.data.local import display_name, scan_tree
from cbir.data.manifest import MANIFEST_COLUMNS, image_ids, name_problem  # noqa: F401 (re-exported)
from cbir.data.sources import (
    COREL1K_LABELS,
    FASHION_MNIST_FILES,
    FASHION_MNIST_LABELS,
    PROVENANCE_FILE,
    corel1k_label,
    read_idx,
)
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, read_json, sha256_file
from cbir.settings import need

log = logging.getLogger("cbir")

#: the ``curate`` settings (conf/curate/default.yaml holds their values)
CURATE_KEYS = ("min_side", "max_pixels", "min_per_class", "dedupe")
SPLIT_KEYS = ("protocol", "queries_per_class", "query_fraction", "seed")
PROTOCOLS = ("holdout", "leave_one_out", "predefined")
CONVERSIONS = ("cmyk", "palette", "grey", "16bit", "alpha", "exif", "colorspace", "float")
FASHION_MNIST_SIDE = 28
_VARIANT = re.compile(r"_(mirror|flip)$")


@dataclass
class Candidate:
    """A file that may become a manifest row."""

    image_id: str
    file: Path
    label: str | None
    part: str | None = None


# ---------------------------------------------------------------- small pure helpers

def is_variant(rel_path: str) -> bool:
    """Tux Paint ``*_mirror`` / ``*_flip`` stamp variants."""
    return bool(_VARIANT.search(PurePosixPath(rel_path).stem))


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of an image's shape and pixel bytes (equal only for identical decoded images)."""
    pixels = np.ascontiguousarray(pixels)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def first_duplicates(ids: list[str], hashes: list[str]) -> dict[str, str]:
    """Map each duplicate id to the id it duplicates (the first with the same hash, by id order)."""
    kept: dict[str, str] = {}
    duplicates = {}
    for image_id, digest in sorted(zip(ids, hashes)):
        if digest in kept:
            duplicates[image_id] = kept[digest]
        else:
            kept[digest] = image_id
    return duplicates


def n_queries(n: int, queries_per_class: int | None, query_fraction: float | None) -> int:
    """Queries to draw from a class of ``n`` images (at most ``n - 1``: a class keeps a database image)."""
    if query_fraction is not None:
        wanted = max(1, int(round(float(query_fraction) * n)))
    else:
        wanted = int(queries_per_class)
    return max(0, min(wanted, n - 1))


def holdout_queries(image_ids: list[str], labels: list[str], queries_per_class: int | None,
                    query_fraction: float | None, seed: int) -> np.ndarray:
    """Boolean query mask: per class, a seeded draw over the class's ids in sorted order."""
    ids = np.asarray(image_ids, dtype=object)
    labels = np.asarray(labels, dtype=object)
    mask = np.zeros(len(ids), dtype=bool)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(ids[members].astype(str), kind="stable")]
        k = n_queries(len(members), queries_per_class, query_fraction)
        if k:
            rng = np.random.default_rng([int(seed), zlib.crc32(str(label).encode("utf-8"))])
            mask[members[rng.choice(len(members), size=k, replace=False)]] = True
    return mask


def curation_settings(curate_cfg: dict, dataset_cfg: dict | None = None) -> dict:
    """``curate`` (every key of :data:`CURATE_KEYS`, from conf/curate/), overridden by ``dataset.curate``.

    Fashion-MNIST images are 28 px by construction, so unless ``dataset.curate.min_side`` says
    otherwise its ``min_side`` is at most 28 (the filter is meant for stray icons in photo collections).
    """
    dataset_cfg = dataset_cfg or {}
    overrides = {k: v for k, v in (dataset_cfg.get("curate") or {}).items() if v is not None}
    settings = {key: need(curate_cfg, key, "curate") for key in CURATE_KEYS}
    if dataset_cfg.get("source") == "fashion_mnist" and "min_side" not in overrides:
        settings["min_side"] = min(int(settings["min_side"]), FASHION_MNIST_SIDE)
    settings.update(overrides)
    return settings


def split_settings(split_cfg: dict) -> dict:
    """Validated split settings (:data:`SPLIT_KEYS`, from conf/split/)."""
    cfg = {key: need(split_cfg, key, "split") for key in SPLIT_KEYS}
    if cfg["protocol"] not in PROTOCOLS:
        raise CbirError(f"unknown split.protocol {cfg['protocol']!r}; use one of {', '.join(PROTOCOLS)}")
    if cfg["query_fraction"] is not None and not 0.0 < float(cfg["query_fraction"]) < 1.0:
        raise CbirError(f"split.query_fraction={cfg['query_fraction']} must lie strictly between 0 and 1 (or be null)")
    if cfg["query_fraction"] is None and cfg["protocol"] == "holdout" and (
            cfg["queries_per_class"] is None or int(cfg["queries_per_class"]) < 1):
        raise CbirError("split.protocol=holdout needs split.queries_per_class >= 1 or a split.query_fraction")
    return cfg


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, as printable UTF-8 (undecodable bytes escaped as ``\\xNN``)."""
    return display_name(Path(os.path.relpath(path, root)).as_posix())


def _source_skips(raw_dir: Path, root: Path) -> list[dict]:
    """Entries the download stage skipped (``_source.json`` ``skipped``), as drop records under ``raw_dir``."""
    try:
        provenance = read_json(raw_dir / PROVENANCE_FILE)
    except (OSError, ValueError):
        return []
    skipped = provenance.get("skipped") if isinstance(provenance, dict) else None
    prefix = _relative(raw_dir, root)
    return [{"path": f"{prefix}/{d['path']}", "reason": str(d["reason"]), "detail": str(d.get("detail", "")),
             "stage": "download"} for d in (skipped or []) if isinstance(d, dict) and "path" in d and "reason" in d]


# ---------------------------------------------------------------- candidates per source

def _folder_candidates(raw_dir: Path, source: str, dataset_cfg: dict, drop) -> tuple[list[Candidate], list[str]]:
    """Candidates of class-folder sources (and Corel-1K); returns them and the expected class names."""
    scan = scan_tree(raw_dir)
    for entry in scan.skipped:
        drop(raw_dir / entry["path"], entry["reason"], entry["detail"])
    files = []
    for rel in scan.files:
        problem = name_problem(rel)
        if problem:
            drop(raw_dir / rel, *problem)
        elif rel != PROVENANCE_FILE:
            files.append(rel)
    drop_variants = bool(need(dataset_cfg, "drop_variants", "dataset"))
    if source == "corel1k":
        classes = list(COREL1K_LABELS)
    else:
        classes = sorted(p.name for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                         and name_problem(p.name) is None)
    candidates = []
    for rel, image_id in zip(files, image_ids(files)):
        path = raw_dir / rel
        if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
            drop(path, "unsupported_extension", f"extension {Path(rel).suffix or '(none)'!r} is not a raster image")
            continue
        if drop_variants and is_variant(rel):
            drop(path, "variant", "mirrored/flipped copy of another stamp")
            continue
        if source == "corel1k":
            label = corel1k_label(Path(rel).stem)
            if label is None:
                drop(path, "unlabelled", "name is not <0-999>.jpg")
                continue
        elif "/" not in rel:
            drop(path, "no_class_folder", "file is not inside a class folder")
            continue
        else:
            label = rel.split("/", 1)[0]
        candidates.append(Candidate(image_id=image_id, file=path, label=label))
    return candidates, classes


def _fashion_candidates(raw_dir: Path, dataset_cfg: dict, images_dir: Path) -> tuple[list[Candidate], list[str], dict]:
    """Decode the idx files into PNG files under ``images_dir`` (atomically); return candidates and counts."""
    parts = list(dataset_cfg.get("parts") or ["train", "test"])
    unknown = [p for p in parts if p not in FASHION_MNIST_FILES]
    if unknown:
        raise CbirError(f"dataset.parts: unknown Fashion-MNIST part(s) {unknown}; use train and/or test")
    per_class = dataset_cfg.get("per_class")
    info = {"parts": parts, "per_class": per_class, "available": {}, "used": {}}
    selected = []
    for part in parts:
        images_file, labels_file = (raw_dir / name for name in FASHION_MNIST_FILES[part])
        for needed in (images_file, labels_file):
            if not needed.is_file():
                raise CbirError(f"{needed} is missing; run the download stage first (python -m cbir download)")
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise CbirError(f"{images_file} / {labels_file}: shapes {images.shape} / {labels.shape} do not match")
        keep = np.ones(len(labels), dtype=bool)
        if per_class is not None:
            rank = np.zeros(len(labels), dtype=np.int64)
            for value in np.unique(labels):
                where = np.flatnonzero(labels == value)
                rank[where] = np.arange(len(where))
            keep = rank < int(per_class)
        info["available"][part], info["used"][part] = int(len(labels)), int(keep.sum())
        selected.append((part, images, labels, np.flatnonzero(keep)))
    width = 5
    candidates = []
    with atomic_dir(images_dir) as tmp:
        for part, images, labels, indices in selected:
            (tmp / part).mkdir()
            for index in tqdm(indices, desc=f"fashion_mnist {part} -> png", disable=None, leave=False):
                rel = f"{part}/{index:0{width}d}.png"
                Image.fromarray(images[index], mode="L").save(tmp / rel, format="PNG")
        for part, images, labels, indices in selected:
            for index in indices:
                label_index = int(labels[index])
                if label_index >= len(FASHION_MNIST_LABELS):
                    raise CbirError(f"Fashion-MNIST label {label_index} out of range in {part}; fetch the dataset again")
                candidates.append(Candidate(image_id=f"{part}/{index:0{width}d}",
                                            file=images_dir / f"{part}/{index:0{width}d}.png",
                                            label=FASHION_MNIST_LABELS[label_index], part=part))
    return candidates, list(FASHION_MNIST_LABELS), info


# ---------------------------------------------------------------- curation

def curate(raw_dir: str | os.PathLike, dataset_cfg: dict, curate_cfg: dict, split_cfg: dict,
           root: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Build the manifest (sorted by ``image_id``) and the curation report for ``raw_dir``."""
    raw_dir, root = Path(raw_dir), Path(root)
    source = need(dataset_cfg, "source", "dataset")
    name = need(dataset_cfg, "name", "dataset")
    settings = curation_settings(curate_cfg, dataset_cfg)
    split = split_settings(split_cfg)
    if not raw_dir.is_dir():
        raise CbirError(f"raw data folder {raw_dir} not found; run the download stage first (python -m cbir download)")

    if source in CURATED_SOURCES:  # benchmarks: their own queries and judgements (cbir.data.benchmarks)
        return curate_benchmark(raw_dir, dataset_cfg, settings, root)
    dropped: list[dict] = _source_skips(raw_dir, root)

    def drop(path: Path, reason: str, detail: str, image_id: str | None = None, **extra) -> None:
        entry = {"path": _relative(path, root), "reason": reason, "detail": detail}
        if image_id is not None:
            entry["image_id"] = image_id
        entry.update(extra)
        dropped.append(entry)

    source_info = None
    if source == "fashion_mnist":
        images_dir = root / "data" / "curated" / name / "images"
        candidates, classes, source_info = _fashion_candidates(raw_dir, dataset_cfg, images_dir)
    else:
        candidates, classes = _folder_candidates(raw_dir, source, dataset_cfg, drop)
    if split["protocol"] == "predefined" and any(c.part is None for c in candidates):
        raise CbirError(f"split.protocol=predefined needs a dataset with a standard split (fashion_mnist); "
                        f"{name} has none: use holdout or leave_one_out")
    n_candidates = len(candidates) + len(dropped)
    candidates.sort(key=lambda c: c.image_id)

    rows = []
    for cand in tqdm(candidates, desc=f"curate {name}", unit="img", disable=None, leave=False):
        try:
            decoded = decode_rgb(cand.file, max_pixels=int(settings["max_pixels"]), min_side=int(settings["min_side"]))
        except ImageError as exc:
            drop(cand.file, exc.reason, exc.detail, cand.image_id)
            continue
        pixels = np.asarray(decoded.image)
        rows.append({"image_id": cand.image_id, "path": _relative(cand.file, root), "label": cand.label,
                     "part": cand.part, "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
                     "sha256": sha256_file(cand.file), "pixel_hash": pixel_hash(pixels),
                     "conversions": decoded.conversions})

    if settings["dedupe"] and rows:
        duplicates = first_duplicates([r["image_id"] for r in rows], [r["pixel_hash"] for r in rows])
        for r in rows:
            if r["image_id"] in duplicates:
                drop(root / r["path"], "duplicate", f"same pixels as {duplicates[r['image_id']]}", r["image_id"],
                     duplicate_of=duplicates[r["image_id"]])
        rows = [r for r in rows if r["image_id"] not in duplicates]

    counts = Counter(r["label"] for r in rows)
    classes_dropped = {}
    for label in sorted(set(classes) | set(counts)):
        n = counts.get(label, 0)
        if n == 0:
            classes_dropped[label] = {"reason": "empty", "images": 0}
        elif n < int(settings["min_per_class"]):
            classes_dropped[label] = {"reason": "class_too_small", "images": n}
    for r in rows:
        if r["label"] in classes_dropped:
            drop(root / r["path"], "class_too_small",
                 f"class {r['label']!r} has {counts[r['label']]} < min_per_class {settings['min_per_class']} images",
                 r["image_id"])
    rows = [r for r in rows if r["label"] not in classes_dropped]

    drop_counts = dict(sorted(Counter(d["reason"] for d in dropped).items()))
    if not rows:
        raise CbirError(f"curation of {raw_dir} kept no images (dropped: "
                        f"{', '.join(f'{k}={v}' for k, v in drop_counts.items()) or 'none found'}); "
                        "check the dataset and the curate.* settings in params")

    manifest = pd.DataFrame(rows).sort_values("image_id", kind="stable").reset_index(drop=True)
    protocol = split["protocol"]
    if protocol == "leave_one_out":
        manifest["split"] = "database"
    elif protocol == "predefined":
        manifest["split"] = np.where(manifest["part"] == "test", "query", "database")
    else:
        is_query = holdout_queries(manifest["image_id"].tolist(), manifest["label"].tolist(),
                                   split["queries_per_class"], split["query_fraction"], int(split["seed"]))
        manifest["split"] = np.where(is_query, "query", "database")
    manifest["protocol"] = "leave_one_out" if protocol == "leave_one_out" else "holdout"
    if protocol != "leave_one_out" and not (manifest["split"] == "query").any():
        raise CbirError(f"the {protocol} split of {name} has no query image (every class has a single image); "
                        "use split.protocol=leave_one_out or a dataset with more images per class")

    conversions = Counter(c for cs in manifest["conversions"] for c in cs)
    per_class = {}
    for label, group in manifest.groupby("label", sort=True):
        per_class[str(label)] = {"images": int(len(group)), "query": int((group["split"] == "query").sum()),
                                 "database": int((group["split"] == "database").sum())}
    split_report = {
        "protocol": protocol, "manifest_protocol": str(manifest["protocol"].iloc[0]),
        "queries_per_class": split["queries_per_class"], "query_fraction": split["query_fraction"],
        "seed": int(split["seed"]),
        "n_query": int((manifest["split"] == "query").sum()) if protocol != "leave_one_out" else int(len(manifest)),
        "n_database": int((manifest["split"] == "database").sum()),
    }
    if protocol == "holdout":
        split_report["queries_capped"] = {
            label: c["query"] for label, c in per_class.items()
            if c["query"] < (split["queries_per_class"] or 0) and split["query_fraction"] is None}
    report = {
        "dataset": name, "source": source, "raw_dir": _relative(raw_dir, root), "settings": settings,
        "n_candidates": n_candidates, "n_kept": int(len(manifest)), "n_dropped": len(dropped),
        "drop_counts": drop_counts,
        "conversions": {c: int(conversions.get(c, 0)) for c in CONVERSIONS},
        "classes": per_class, "classes_dropped": classes_dropped, "split": split_report,
        "dropped": sorted(dropped, key=lambda d: (d["reason"], d["path"])),
    }
    if source_info is not None:
        report["source_info"] = source_info
    manifest = manifest[MANIFEST_COLUMNS].copy()
    manifest["width"] = manifest["width"].astype("int64")
    manifest["height"] = manifest["height"].astype("int64")
    log.info("curated %s: kept %d of %d candidates in %d classes (%s)", name, len(manifest), n_candidates,
             len(per_class), ", ".join(f"{k}={v}" for k, v in drop_counts.items()) or "nothing dropped")
    return manifest, report
