"""Converted OpenVINO trunks kept across runs: ``$CBIR_CACHE/openvino/<key>/trunk.xml`` (+ ``.bin``).

Converting a torch trunk takes seconds and needs torchvision to build it; reading a saved conversion
takes a fraction of a second.  The key covers everything a conversion depends on: the weight file's
bytes, the architecture, the input size, the code that builds and converts the trunk, and the
versions of torch, torchvision, efficientnet-lite-pytorch and OpenVINO.  A model is always run as
read back from its saved files, so a run that converts and a run that reads the cache compute the
same descriptors, bit for bit (tested).  Each entry records the sha256 of its files: a damaged entry
(truncated, edited, bit rot) is never run, but converted again; a cache that cannot be written only
costs the conversion.  ``$CBIR_OPENVINO_CACHE`` moves the cache elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from cbir.fileio import atomic_dir, cache_dir, sha256_bytes, sha256_file

log = logging.getLogger("cbir")

#: entries kept (the most recently used); a ResNet50 entry is about 100 MB
MAX_ENTRIES = 8
#: the modules whose code shapes a conversion: building the trunk, converting it
CONVERSION_CODE = ("cbir.features.cnn.backbones", "cbir.features.cnn.openvino_runtime")
CONVERSION_PACKAGES = ("torch", "torchvision", "efficientnet-lite-pytorch", "openvino")
MODEL_FILE = "trunk.xml"
CHECKSUMS_FILE = "sha256.json"


def openvino_cache_dir() -> Path:
    """``$CBIR_OPENVINO_CACHE``, else ``openvino/`` under the project's cache (:func:`cbir.fileio.cache_dir`)."""
    return Path(os.environ.get("CBIR_OPENVINO_CACHE") or cache_dir() / "openvino")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def conversion_key(weights: Path, arch: str, image_size: int) -> str:
    """The cache key of the trunk of ``arch`` with the weight file ``weights`` (hex, 32 characters)."""
    parts = {
        "weights": sha256_file(weights),
        "arch": arch,
        "image_size": int(image_size),
        "versions": {name: _version(name) for name in CONVERSION_PACKAGES},
        "code": {name: sha256_file(find_spec(name).origin) for name in CONVERSION_CODE},
    }
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())[:32]


def _one_line(exc: BaseException) -> str:
    """The end of an error's message on one line (OpenVINO's start with long source-file prefixes)."""
    text = " ".join(str(exc).split())
    return (text if len(text) <= 160 else "…" + text[-160:]) or type(exc).__name__


def saved_model(core, key: str | None, convert: Callable[[], object], root: Path | None = None):
    """The OpenVINO model for ``key``, read from the cache or made by ``convert()``, saved, and read back.

    ``key=None`` (e.g. a trunk from your own factory) converts and reads back from a temporary folder,
    so it runs exactly like a cached model but leaves nothing behind.
    """
    root = openvino_cache_dir() if root is None else Path(root)
    entry = None if key is None else root / key
    if entry is not None and (entry / MODEL_FILE).is_file():
        try:
            verify(entry)
            model = core.read_model(entry / MODEL_FILE)
            os.utime(entry)  # most recently used
            return model
        except Exception as exc:  # a damaged entry (truncated, edited): convert again
            log.warning("OpenVINO cache entry %s is unreadable (%s): converting again", entry, _one_line(exc))
            shutil.rmtree(entry, ignore_errors=True)
    model = convert()
    if entry is not None:
        try:
            with atomic_dir(entry) as tmp:
                _save(model, tmp)
            prune(root)
            return core.read_model(entry / MODEL_FILE)
        except (OSError, RuntimeError) as exc:  # read-only or full disk: the cache is only a saving
            log.warning("cannot write the OpenVINO cache %s (%s): converting on every run", root, _one_line(exc))
    with tempfile.TemporaryDirectory(prefix="cbir-openvino-") as tmp:
        _save(model, Path(tmp))
        return core.read_model(Path(tmp) / MODEL_FILE)  # its weights map the .bin, which outlives the folder


def _save(model, folder: Path) -> None:
    import openvino as ov

    ov.save_model(model, folder / MODEL_FILE, compress_to_fp16=False)
    sums = {path.name: sha256_file(path) for path in sorted(folder.iterdir())}
    (folder / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")


def verify(entry: Path) -> None:
    """Raise ``ValueError`` unless the entry's files are exactly those saved, with the same sha256."""
    try:
        recorded = json.loads((entry / CHECKSUMS_FILE).read_text())
    except (OSError, ValueError):
        raise ValueError(f"no readable {CHECKSUMS_FILE}") from None
    found = {path.name for path in entry.iterdir() if path.name != CHECKSUMS_FILE}
    if not isinstance(recorded, dict) or set(recorded) != found or MODEL_FILE not in found:
        raise ValueError(f"its files are not the ones {CHECKSUMS_FILE} lists")
    for name, digest in recorded.items():
        if sha256_file(entry / name) != digest:
            raise ValueError(f"{name} does not match the sha256 recorded when it was saved")


def prune(root: Path, keep: int = MAX_ENTRIES) -> list[Path]:
    """Remove all but the ``keep`` most recently used entries; returns the removed ones."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return entries[keep:]
