"""A method's saved search index: ``data/index/<ds>/<method>/``, written by the retrieve stage.

``index.json`` records the search settings, the sha256 of the features file the index was built
from (``features_sha256``), the sha256 of ``index.faiss`` (``index_sha256``: its stored vectors and
graph) and the database size; ``ids.txt`` lists the database image ids in index-row order (the id
map); ``index.faiss`` holds the FAISS index when the method's index is approximate (exact search
needs no structure).  :func:`load_index` refuses, in one line, an index whose features or settings
changed, or whose files were damaged or edited, before FAISS parses anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from cbir.errors import CbirError
from cbir.fileio import atomic_dir, read_json, sha256_file
from cbir.search.faiss_index import _import_faiss

INFO, IDS, FAISS_FILE = "index.json", "ids.txt", "index.faiss"


def _cpu_index(index):
    faiss = _import_faiss()
    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__ \
        else index


def save_index(folder: Path, method: str, settings: Mapping, features_file: Path, database_ids: np.ndarray,
               index=None, features_sha256: str | None = None) -> dict:
    """Write the index folder atomically; returns its ``index.json`` content.

    ``features_sha256``: the features file's hash when the caller has verified it already (else hashed here).
    """
    info = {"method": method, "index": settings["index"], "faiss": dict(settings["faiss"]),
            "rerank": settings["rerank"], "features_sha256": features_sha256 or sha256_file(features_file),
            "n_database": int(len(database_ids))}
    with atomic_dir(Path(folder)) as tmp:
        (tmp / IDS).write_text("".join(f"{i}\n" for i in database_ids), encoding="utf-8")
        if index is not None:
            _import_faiss().write_index(_cpu_index(index), str(tmp / FAISS_FILE))
            info["index_sha256"] = sha256_file(tmp / FAISS_FILE)
        (tmp / INFO).write_text(_json(info), encoding="utf-8")
    return info


def _json(data: Mapping) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _read_info(folder: Path, rebuild: str) -> dict:
    try:
        info = read_json(folder / INFO)
    except (OSError, ValueError) as exc:
        raise CbirError(f"cannot read {folder / INFO} ({type(exc).__name__}: damaged): {rebuild}") from None
    if not isinstance(info, dict):
        raise CbirError(f"{folder / INFO} does not hold a mapping (damaged): {rebuild}")
    return info


def load_index(folder: Path, method: str, settings: Mapping, features_file: Path, database_ids: np.ndarray,
               features_sha256: str | None = None):
    """The saved FAISS index of ``method`` (``None`` for exact search), checked against the current
    features file (``features_sha256`` when the caller has verified it already), search settings and
    database ids, and ``index.faiss`` against its recorded hash; anything stale or damaged is one clear error."""
    folder = Path(folder)
    rebuild = (f"rebuild it with `dvc repro evaluate@{folder.parent.name}` "
               "(add -f -s if DVC sees no change)")
    if not (folder / INFO).is_file():
        raise CbirError(f"no saved index for {method!r} at {folder}: {rebuild}")
    info = _read_info(folder, rebuild)
    if info.get("features_sha256") != (features_sha256 or sha256_file(features_file)):
        raise CbirError(f"the saved index {folder} was built from other features than {features_file} "
                        f"(stale): {rebuild}")
    current = {"index": settings["index"], "faiss": dict(settings["faiss"]), "rerank": settings["rerank"]}
    saved = {key: info.get(key) for key in current}
    if saved != current:
        raise CbirError(f"the saved index {folder} was built with search settings {saved}, params.yaml says "
                        f"{current}: {rebuild}")
    try:
        ids = (folder / IDS).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CbirError(f"cannot read {folder / IDS} ({type(exc).__name__}): {rebuild}") from None
    if ids != [str(i) for i in database_ids]:
        raise CbirError(f"the saved index {folder} maps other database images than the manifest: {rebuild}")
    if settings["index"] == "exact":
        return None
    if not (folder / FAISS_FILE).is_file():
        raise CbirError(f"{folder / FAISS_FILE} is missing: {rebuild}")
    if not isinstance(info.get("index_sha256"), str):
        raise CbirError(f"{folder / INFO} records no hash of {FAISS_FILE} (written by an older retrieve): {rebuild}")
    if sha256_file(folder / FAISS_FILE) != info["index_sha256"]:
        raise CbirError(f"{folder / FAISS_FILE} does not match {INFO} (its stored vectors or graph were damaged "
                        f"or edited): {rebuild}")
    faiss = _import_faiss()
    try:
        index = faiss.read_index(str(folder / FAISS_FILE))
    except RuntimeError as exc:
        raise CbirError(f"cannot read {folder / FAISS_FILE} ({str(exc).splitlines()[0]}): {rebuild}") from None
    if int(index.ntotal) != len(ids):
        raise CbirError(f"{folder / FAISS_FILE} holds {index.ntotal} vectors, the id map {len(ids)}: {rebuild}")
    return index
