"""Dataset sources: each ``fetch_<source>(dataset_cfg, raw_dir)`` fills ``raw_dir`` atomically.

``raw_dir`` receives the collection exactly as delivered (files copied, archives
safely extracted) plus ``_source.json``, the provenance returned by ``fetch``.  Each source checks
its inputs first, then reads ``name`` (which conf/dataset/ always sets) for the provenance.
Labels are not decided here but at curation (:mod:`cbir.data.curate`):

* ``tuxpaint``  the image files (raster and SVG) of the Tux Paint stamps tree; label =
  top-level category folder. ``*_mirror`` / ``*_flip`` variants are copied as delivered
  and dropped at curation with the reason ``variant``; SVG files are dropped there
  as ``unsupported_extension``.
* ``corel1k``   Corel-1K / Wang (``image.orig/0.jpg … 999.jpg``) from ``folder``, ``archive``
  or ``urls`` (tried in that order); label = ``int(stem) // 100``.
* ``fashion_mnist`` the four idx ``*-ubyte.gz`` files, copied unchanged; curation decodes them.
* ``folder``    any folder with one sub-folder per class: its regular image files (by extension) are
  copied; every other entry is listed in ``_source.json`` ``skipped`` so that curation reports it.

Local copies are bounded (:mod:`cbir.data.local`): ``limits`` (``download.max_bytes`` and
``download.min_free_bytes``, :class:`~cbir.data.local.CopyLimits`) is checked before and while copying, and
a folder on a virtual file system, holding the repository or inside its outputs is refused.
* ``synthetic`` generated images (:mod:`cbir.data.synthetic`).
* ``neardup`` (:mod:`cbir.data.neardup`); the standard benchmarks: :mod:`cbir.data.benchmarks`.
"""

from __future__ import annotations

import gzip
import logging
import os
import urllib.parse
from pathlib import Path

import numpy as np

from cbir.data.benchmarks import FETCHED_SOURCES, fetch_benchmark
from cbir.data.download import fetch_first, safe_extract
from cbir.data.images import IMAGE_EXTENSIONS
from cbir.data.local import (
    TUXPAINT_PACKAGE,
    VECTOR_EXTENSIONS,
    CopyLimits,
    check_source_folder,
    copy_tree,
    debian_version,
    display_name,
    existing_folder,
    list_files,
    scan_tree,
    shown,
)
from cbir.data.neardup import fetch_neardup
from cbir.data.synthetic import fetch_synthetic
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, sha256_file, write_json
from cbir.settings import need

log = logging.getLogger("cbir")

PROVENANCE_FILE = "_source.json"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_LABELS = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                        "sandal", "shirt", "sneaker", "bag", "ankle_boot")
COREL1K_LABELS = ("africa", "beach", "buildings", "buses", "dinosaurs",
                  "elephants", "flowers", "horses", "mountains", "food")
COREL1K_URLS = ("http://wang.ist.psu.edu/~jwang/test1.tar",)


# ---------------------------------------------------------------- helpers

def _finish(tmp: Path, provenance: dict) -> dict:
    """Write ``_source.json``. Local folders and archives are named, never given as absolute paths, so the
    output is the same wherever the inputs sit (a rerun elsewhere gives the same bytes)."""
    write_json(tmp / PROVENANCE_FILE, provenance)
    return provenance


def corel1k_label(stem: str) -> str | None:
    """Corel-1K class of an image named ``<id>.jpg``: ``COREL1K_LABELS[id // 100]`` (``None`` if not 0–999)."""
    if not stem.isdigit():
        return None
    index = int(stem)
    return COREL1K_LABELS[index // 100] if index < 100 * len(COREL1K_LABELS) else None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an (optionally gzipped) idx file of unsigned bytes (MNIST format) into a ``uint8`` array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise CbirError(f"cannot read idx file {path}: {exc}; fetch the dataset again") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise CbirError(f"{path} is not an unsigned-byte idx file (bad magic number); fetch the dataset again")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise CbirError(f"{path}: idx header declares shape {shape} but the file holds "
                        f"{len(data) - header} bytes of data; fetch the dataset again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# ---------------------------------------------------------------- sources

def fetch_tuxpaint(dataset_cfg: dict, raw_dir: str | os.PathLike, limits: CopyLimits | None = None) -> dict:
    """Copy the image files of the Tux Paint stamps tree (``root``) into ``raw_dir``."""
    root = Path(str(need(dataset_cfg, "root", "dataset")))
    if not root.is_dir():
        raise CbirError(f"Tux Paint stamps not found at {root}: install the Debian package {TUXPAINT_PACKAGE} "
                        f"(`make setup` or `sudo apt-get install {TUXPAINT_PACKAGE}`) or set dataset.root= to a "
                        "copy of the stamps folder")
    files = list_files(root, IMAGE_EXTENSIONS | VECTOR_EXTENSIONS)
    if not files:
        raise CbirError(f"no image files under {root}; reinstall {TUXPAINT_PACKAGE} or fix dataset.root")
    name = need(dataset_cfg, "name", "dataset")
    check_source_folder(root, raw_dir, "dataset.root")
    log.info("copying %d image files from %s", len(files), root)
    with atomic_dir(raw_dir) as tmp:
        n_bytes = copy_tree(root, tmp, files, limits=limits, what=f"dataset.root={shown(root)}")
        return _finish(tmp, {
            "source": "tuxpaint", "name": name, "root": str(root),
            "debian_package": TUXPAINT_PACKAGE, "package_version": debian_version(TUXPAINT_PACKAGE),
            "license": "GPL-2.0", "n_files": len(files), "bytes": n_bytes,
        })


def fetch_folder(dataset_cfg: dict, raw_dir: str | os.PathLike, limits: CopyLimits | None = None) -> dict:
    """Copy the image files of a folder with one sub-folder per class (``folder``) into ``raw_dir``, never
    reading outside it, within ``limits``.

    Entries that are not copied are listed in the provenance's ``skipped`` (path, reason, detail;
    see :func:`scan_tree`; files directly in ``folder`` are ``no_class_folder``, files whose extension is
    not a raster image's ``unsupported_extension``); curation counts them.
    """
    folder = dataset_cfg.get("folder")
    if not folder:
        raise CbirError("dataset.source=folder needs dataset.folder=/path/to/images (one sub-folder per class)")
    folder = existing_folder(folder, "dataset.folder", "set dataset.folder= to a folder with one sub-folder "
                              "per class")
    check_source_folder(folder, raw_dir, "dataset.folder")
    scan = scan_tree(folder, empty_folders=True)
    files = [f for f in scan.files if "/" in f]
    ignored = [f for f in scan.files if "/" not in f]
    for rel in ignored:
        scan.skip(rel, "no_class_folder", "file is not inside a class folder")
    for rel in [f for f in files if Path(f).suffix.lower() not in IMAGE_EXTENSIONS]:
        scan.skip(rel, "unsupported_extension", f"extension {Path(rel).suffix or '(none)'!r} is not a raster image")
        files.remove(rel)
    if not files:
        raise CbirError(f"no image files inside class sub-folders of {shown(folder)}; "
                        "expected <folder>/<class>/<image>")
    name = need(dataset_cfg, "name", "dataset")
    log.info("copying %d files from %s (%d entries skipped)", len(files), shown(folder), len(scan.skipped))
    with atomic_dir(raw_dir) as tmp:
        n_bytes = copy_tree(folder, tmp, files, scan, limits=limits, what=f"dataset.folder={shown(folder)}")
        return _finish(tmp, {
            "source": "folder", "name": name, "folder": display_name(folder.name),
            "n_files": len(files), "bytes": n_bytes, "ignored_top_level_files": [display_name(f) for f in ignored],
            "skipped": sorted(scan.skipped, key=lambda d: (d["path"], d["reason"])),
        })


def _corel_check(tmp: Path, where: str) -> int:
    count = sum(1 for f in list_files(tmp, IMAGE_EXTENSIONS) if corel1k_label(Path(f).stem) is not None)
    if count == 0:
        raise CbirError(f"no Corel-1K images (0.jpg … 999.jpg) found in {where}; check dataset.folder, "
                        "dataset.archive or dataset.urls")
    return count


def _corel_input(dataset_cfg: dict) -> tuple[Path | None, Path | None]:
    """The checked local copy of Corel-1K: ``(folder, None)``, ``(None, archive)`` or ``(None, None)`` (download)."""
    folder, archive = dataset_cfg.get("folder"), dataset_cfg.get("archive")
    if folder:
        return existing_folder(folder, "dataset.folder", "point it at the extracted Corel-1K folder "
                               "(image.orig) or use dataset.archive="), None
    if not archive:
        return None, None
    archive = Path(str(archive)).expanduser()
    if archive.is_dir():
        raise CbirError(f"dataset.archive={display_name(str(archive))} is a folder, not an archive file; "
                        "give the path of test1.tar, or use dataset.folder= for an extracted folder")
    if not archive.is_file():
        raise CbirError(f"dataset.archive={display_name(str(archive))} does not exist; give the path of "
                        "test1.tar (or use dataset.folder=)")
    return None, archive


def fetch_corel1k(dataset_cfg: dict, raw_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  limits: CopyLimits | None = None) -> dict:
    """Corel-1K from ``folder``, else ``archive``, else the first working URL of ``urls`` (sha256-checked)."""
    pinned = (dataset_cfg.get("sha256") or "").lower().strip() or None
    folder, archive = _corel_input(dataset_cfg)
    name = need(dataset_cfg, "name", "dataset")
    provenance: dict = {"source": "corel1k", "name": name, "labels": list(COREL1K_LABELS)}
    raw_dir = Path(raw_dir)
    if folder:
        check_source_folder(folder, raw_dir, "dataset.folder")
        scan = scan_tree(folder)
        with atomic_dir(raw_dir) as tmp:
            copied = copy_tree(folder, tmp, scan.files, scan, limits=limits, what=f"dataset.folder={shown(folder)}")
            provenance.update(folder=display_name(folder.name), bytes=copied, n_files=len(scan.files))
            provenance["skipped"] = sorted(scan.skipped, key=lambda d: (d["path"], d["reason"]))
            provenance["n_images"] = _corel_check(tmp, str(folder))
            return _finish(tmp, provenance)

    if archive:
        observed = sha256_file(archive)
        if pinned and observed != pinned:
            raise CbirError(f"sha256 mismatch for {archive}: expected {pinned}, got {observed}; "
                            "use the right archive or update dataset.sha256")
        provenance.update(archive=display_name(archive.name))
    else:
        urls = [str(u) for u in (dataset_cfg.get("urls") or [])]
        cache = Path(cache_dir) if cache_dir is not None else raw_dir.parent.parent / "downloads"
        suffix = "".join(Path(urllib.parse.urlparse(urls[0]).path).suffixes) if urls else ""
        target = cache / f"{name}{suffix or '.archive'}"
        how = ("supply the images in one of two ways: a URL that works in dataset.urls, or a local copy with "
               "dataset.archive=/path/to/test1.tar or dataset.folder=/path/to/image.orig in params")
        if not urls:
            raise CbirError(f"corel1k: no dataset.urls and no local copy configured; {how}")
        try:
            url, observed = fetch_first(urls, target, pinned)
        except CbirError as exc:
            raise CbirError(f"corel1k: {exc}; no local copy configured; {how}") from None
        archive = target
        provenance.update(url=url, urls=urls, downloaded_to=target.name)
    provenance.update(sha256=observed, sha256_pinned=pinned is not None)
    if pinned is None:
        log.warning("corel1k: no sha256 pinned; observed sha256 %s - pin it with dataset.sha256=%s", observed, observed)
    with atomic_dir(raw_dir) as tmp:
        members = safe_extract(archive, tmp)
        provenance.update(n_files=sum(1 for m in members if not m.endswith("/")))
        provenance["n_images"] = _corel_check(tmp, str(archive))
        return _finish(tmp, provenance)


def fetch_fashion_mnist(dataset_cfg: dict, raw_dir: str | os.PathLike, limits: CopyLimits | None = None) -> dict:
    """Copy the four Fashion-MNIST idx files (Debian ``dataset-fashion-mnist``) into ``raw_dir``."""
    root = Path(str(need(dataset_cfg, "root", "dataset")))
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise CbirError(f"Fashion-MNIST files missing in {root}: {', '.join(missing)}; install the Debian package "
                        f"{FASHION_MNIST_PACKAGE} (`make setup` or `sudo apt-get install {FASHION_MNIST_PACKAGE}`) "
                        "or set dataset.root= to a folder holding the *-ubyte.gz files")
    name = need(dataset_cfg, "name", "dataset")
    check_source_folder(root, raw_dir, "dataset.root")
    with atomic_dir(raw_dir) as tmp:
        n_bytes = copy_tree(root, tmp, names, limits=limits, what=f"dataset.root={shown(root)}")
        return _finish(tmp, {
            "source": "fashion_mnist", "name": name, "root": str(root),
            "debian_package": FASHION_MNIST_PACKAGE, "package_version": debian_version(FASHION_MNIST_PACKAGE),
            "license": "MIT", "labels": list(FASHION_MNIST_LABELS), "n_files": len(names), "bytes": n_bytes,
            "sha256": {n: sha256_file(tmp / n) for n in names},
        })


SOURCES = ("tuxpaint", "corel1k", "fashion_mnist", "folder", "synthetic", "neardup", *FETCHED_SOURCES)


def fetch(dataset_cfg: dict, raw_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
          limits: CopyLimits | None = None) -> dict:
    """Fill ``raw_dir`` from the source named by ``dataset_cfg["source"]``; return the provenance.

    ``limits`` (:meth:`CopyLimits.from_params`: ``download.*``) bounds what a local source copies."""
    source = dataset_cfg.get("source")
    if source == "tuxpaint":
        return fetch_tuxpaint(dataset_cfg, raw_dir, limits)
    if source == "corel1k":
        return fetch_corel1k(dataset_cfg, raw_dir, cache_dir=cache_dir, limits=limits)
    if source == "fashion_mnist":
        return fetch_fashion_mnist(dataset_cfg, raw_dir, limits)
    if source == "folder":
        return fetch_folder(dataset_cfg, raw_dir, limits)
    if source == "synthetic":
        return fetch_synthetic(dataset_cfg, raw_dir)
    if source == "neardup":
        return fetch_neardup(dataset_cfg, raw_dir)
    if source in FETCHED_SOURCES:
        return fetch_benchmark(dataset_cfg, raw_dir, cache_dir=cache_dir)
    raise CbirError(f"unknown dataset.source {source!r}; use one of {', '.join(SOURCES)}")
