"""The manifest, the one contract every stage after curate trusts: its columns, the one reader, and
the rules for a valid ``image_id``, and the protocol rules that turn it into query and database rows.

Columns: ``image_id`` (stable string), ``path`` (relative to the repo root), ``label`` (always a
string: a class named ``NA``, ``null`` or ``None`` stays that string), ``split`` (``query`` or
``database``), ``width``, ``height``, ``sha256``, ``protocol``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cbir.errors import CbirError

MANIFEST_COLUMNS = ["image_id", "path", "label", "split", "width", "height", "sha256", "protocol"]
TEXT_COLUMNS = ("image_id", "path", "label", "split", "sha256", "protocol")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def image_ids(rel_paths: list[str]) -> list[str]:
    """Stable, unique ids: the relative path without extension, or with it where ids would collide.

    (``a/x.png`` and ``a/x.jpg`` both keep their extension; so does ``a/x.jpg.png`` when its stem
    ``a/x.jpg`` would equal another file's full path.) Relative paths are unique, so this terminates.
    """
    ids = [PurePosixPath(p).with_suffix("").as_posix() for p in rel_paths]
    while True:
        counts = Counter(ids)
        clashing = [i for i, (image_id, rel) in enumerate(zip(ids, rel_paths)) if counts[image_id] > 1 and image_id != rel]
        if not clashing:
            return ids
        for i in clashing:
            ids[i] = rel_paths[i]


def name_problem(rel_path: str) -> tuple[str, str] | None:
    """Why a relative path cannot be an ``image_id`` (``(reason, detail)``), or ``None`` when it can.

    ``undecodable_name``: bytes that are not UTF-8 (old cameras, other operating systems), which no
    UTF-8 manifest, CSV or JSON file can hold; ``control_character_name``: a newline, tab or other
    control character, which would break the CSV rows, Markdown tables and logs people read.
    Leading dashes, spaces and long names are kept.
    """
    try:
        rel_path.encode("utf-8")
    except UnicodeEncodeError:
        return "undecodable_name", "file or folder name is not valid UTF-8: rename it"
    if _CONTROL.search(rel_path):
        return "control_character_name", "file or folder name holds a control character (newline, tab, ...): rename it"
    return None


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by the curate stage with the right types (ids and labels stay strings)."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"manifest not found: {path}; run the curate stage first (python -m cbir curate)")
    text_columns = {c: str for c in TEXT_COLUMNS}
    try:
        manifest = pd.read_csv(path, dtype={**text_columns, "width": "int64", "height": "int64"},
                               keep_default_na=False, na_filter=False, encoding="utf-8")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CbirError(f"{path} is not a readable manifest ({first}); run the curate stage again") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise CbirError(f"{path} lacks column(s) {', '.join(missing)}; run the curate stage again")
    if manifest.empty:
        raise CbirError(f"{path} has no images: check curation.json beside it for why they were dropped")
    return manifest


def column_digests(manifest: pd.DataFrame) -> dict[str, str]:
    """sha256 of each manifest column (:data:`MANIFEST_COLUMNS`), its values as text, one a line, in row order."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise CbirError(f"manifest lacks column(s) {', '.join(missing)}; run the curate stage again")
    return {column: hashlib.sha256("".join(f"{value}\n" for value in manifest[column].tolist()).encode("utf-8"))
            .hexdigest() for column in MANIFEST_COLUMNS}


def manifest_digest(manifest: pd.DataFrame, columns: dict[str, str] | None = None) -> str:
    """sha256 of every column a stage reads (ids, paths, labels, splits, sizes, file hashes, protocol), in
    row order: the one hash of a manifest that outputs record and every reader checks (``columns``: its
    :func:`column_digests`, when already computed)."""
    columns = columns if columns is not None else column_digests(manifest)
    return hashlib.sha256("".join(f"{c}\t{columns[c]}\n" for c in MANIFEST_COLUMNS).encode("ascii")).hexdigest()


def changed_columns(recorded: dict, manifest: pd.DataFrame) -> list[str]:
    """The columns of ``manifest`` whose digests differ from ``recorded`` (:func:`column_digests` of the
    manifest an output was computed from); every column when ``recorded`` is not such a mapping."""
    now = column_digests(manifest)
    if not isinstance(recorded, dict):
        return list(MANIFEST_COLUMNS)
    return [c for c in MANIFEST_COLUMNS if recorded.get(c) != now[c]]


def split_indices(manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Query rows, database rows and the per-query excluded database position.

    ``holdout`` / ``predefined``: queries are the ``split == "query"`` rows, the database
    the ``split == "database"`` rows, nothing excluded (``None``). ``leave_one_out``:
    every row queries every row and ``exclude[i] = i`` drops the query itself.
    ``exclude`` holds positions in the database rows (what ``exact_topk`` expects).
    """
    for column in ("split", "protocol"):
        if column not in manifest.columns:
            raise CbirError(f"manifest has no '{column}' column: re-run the curate stage")
    protocols = sorted(set(manifest["protocol"].astype(str)))
    if len(protocols) != 1:
        raise CbirError(f"manifest mixes protocols {protocols}: re-run the curate stage")
    protocol = protocols[0]
    split = manifest["split"].astype(str).to_numpy()
    if protocol == "leave_one_out":
        rows = np.arange(len(manifest), dtype=np.int64)
        if len(rows) < 2:
            raise CbirError("leave_one_out needs at least 2 images in the manifest")
        return rows, rows.copy(), rows.copy()
    if protocol in ("holdout", "predefined"):
        unknown = sorted(set(split) - {"query", "database"})
        if unknown:
            raise CbirError(f"manifest split has values {unknown}; expected 'query' or 'database'")
        query_rows = np.flatnonzero(split == "query").astype(np.int64)
        database_rows = np.flatnonzero(split == "database").astype(np.int64)
        if len(query_rows) == 0 or len(database_rows) == 0:
            raise CbirError(
                f"manifest ({protocol}) has {len(query_rows)} query and {len(database_rows)} "
                "database rows; both must be non-empty: check the split settings and re-run curate")
        return query_rows, database_rows, None
    raise CbirError(f"unknown protocol '{protocol}' in the manifest; expected holdout, "
                    "predefined or leave_one_out")


def database_rows(manifest: pd.DataFrame) -> np.ndarray:
    """Manifest rows a query searches: ``split == "database"``, or every row under ``leave_one_out``."""
    return split_indices(manifest)[1]
