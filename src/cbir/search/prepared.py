"""A method's searchable vectors: the manifest's query and database rows, the method's re-ranking,
and its search index, checked in one place.

Search settings are parameters of retrieve and evaluate only (changing them never re-extracts):
``retrieval.index`` and ``retrieval.faiss`` for every method, overridden per method by
``retrieval.per_method.<method>`` (``rerank``, ``index``, ``faiss``).
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from cbir.config import method_config, section
from cbir.data.manifest import split_indices
from cbir.errors import CbirError
from cbir.features.store import read_features, select_rows
from cbir.layout import Layout
from cbir.settings import need
from cbir.search.exact import exact_topk, l2_normalize, recall_at_k
from cbir.search.faiss_index import (
    FAISS_INDEXES,
    INDEX_ALIASES,
    build_faiss_index,
    canonical_index,
    search_built_index,
)
from cbir.search.rerank import apply_rerank, rerank_config

log = logging.getLogger("cbir")

RETRIEVAL_INDEXES = ("exact",) + FAISS_INDEXES + tuple(INDEX_ALIASES)


#: ``retrieval.faiss`` keys: IVF cells and probes, PQ sub-quantizers and bits, HNSW links and
#: beam widths, the candidate factor re-scored exactly for compressed indexes, and ``gpu`` (bool).
FAISS_PARAM_KEYS = ("nlist", "nprobe", "m", "nbits", "M", "efSearch", "efConstruction", "refine", "gpu")


#: keys of ``retrieval.per_method.<method>``
SEARCH_KEYS = ("rerank", "index", "faiss")


def search_settings(params: Mapping, method: str) -> dict:
    """``{rerank, index, faiss}`` of ``method``: the global ``retrieval`` settings, overridden by
    ``retrieval.per_method.<method>``; every bad value is one clear error naming its key."""
    cfg = method_config(params, method)
    if "rerank" in cfg:
        raise CbirError(f"methods.{method}.rerank is a search setting: move it to "
                        f"retrieval.per_method.{method}.rerank (see conf/method/mobilenet_v2-gap-aqe.yaml), "
                        "so that changing it re-runs retrieve and evaluate but never extract")
    retrieval = section(params, "retrieval")
    per_method = retrieval.get("per_method") or {}
    if not isinstance(per_method, Mapping):
        raise CbirError(f"retrieval.per_method must map method -> {{{', '.join(SEARCH_KEYS)}}}, got {per_method!r}")
    own = per_method.get(method) or {}
    if not isinstance(own, Mapping):
        raise CbirError(f"retrieval.per_method.{method} must be a mapping of {', '.join(SEARCH_KEYS)}, got {own!r}")
    unknown = sorted(set(own) - set(SEARCH_KEYS))
    if unknown:
        raise CbirError(f"unknown retrieval.per_method.{method} keys {unknown}; allowed: {', '.join(SEARCH_KEYS)}")
    try:
        rerank = rerank_config(own.get("rerank"))
    except CbirError as exc:
        raise CbirError(f"retrieval.per_method.{method}.rerank: {exc}") from None
    index = index_name({"index": own["index"] if "index" in own else need(retrieval, "index", "retrieval")})
    faiss = {**(retrieval.get("faiss") or {}), **(own.get("faiss") or {})} if index != "exact" else {}
    return {"rerank": rerank, "index": canonical_index(index) if index != "exact" else "exact",
            "faiss": faiss_options({"faiss": faiss})}


def prepare(manifest: pd.DataFrame, features: np.ndarray, method: str, rerank: Mapping | None = None,
            block_size: int = 1024) -> dict:
    """Manifest split + (re-ranked) query and database features of one method.

    Returns a dict with ``manifest, query_rows, database_rows, exclude, queries, database, rerank``:
    the one place where retrieve and evaluate apply a method's ``rerank`` (the query tool applies
    the same functions to one query, :mod:`cbir.app.engine`).
    """
    query_rows, database_rows, exclude = split_indices(manifest)
    rerank = rerank_config(rerank)
    all_rows = np.arange(len(features))
    if np.array_equal(query_rows, all_rows) and np.array_equal(database_rows, all_rows):
        # leave-one-out: every row is both a query and a database item; no copies
        query_features = database_features = features
    else:
        query_features = select_rows(features, query_rows)
        database_features = select_rows(features, database_rows)
    queries, database = apply_rerank(query_features, database_features, rerank,
                                     exclude=exclude, block_size=block_size)
    log.info("%s: %d queries x %d database rows, dim %d, protocol %s%s", method, len(query_rows),
             len(database_rows), features.shape[1], manifest["protocol"].iloc[0],
             f", rerank {rerank}" if rerank else "")
    return {"manifest": manifest, "query_rows": query_rows, "database_rows": database_rows,
            "exclude": exclude, "queries": queries, "database": database, "rerank": rerank}


def load_prepared(params: dict, method: str, root: Path, manifest: pd.DataFrame) -> dict:
    """:func:`prepare` for ``method`` of ``params``: its features file read and checked (memory-mapped);
    the result also holds the method's ``search`` settings (:func:`search_settings`)."""
    paths = Layout(root, params)
    settings = search_settings(params, method)
    features = read_features(paths.features(method), method, manifest)  # verified against its hashes
    block_size = int(need(section(params, "retrieval"), "block_size", "retrieval"))
    return {**prepare(manifest, features, method, settings["rerank"], block_size), "search": settings}


def faiss_options(retrieval: Mapping) -> dict:
    extra = retrieval.get("faiss") or {}
    if not isinstance(extra, Mapping):
        raise CbirError(f"retrieval.faiss must be a mapping of {FAISS_PARAM_KEYS}, got {extra!r}")
    unknown = sorted(set(extra) - set(FAISS_PARAM_KEYS))
    if unknown:
        raise CbirError(f"unknown retrieval.faiss keys {unknown}; allowed: {', '.join(FAISS_PARAM_KEYS)}")
    options = {k: v for k, v in extra.items() if v is not None}
    for key, value in options.items():
        if key == "gpu":
            if not isinstance(value, bool):
                raise CbirError(f"retrieval.faiss.gpu must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CbirError(f"retrieval.faiss.{key} must be a positive integer (or null), got {value!r}")
    return options


def index_name(retrieval: Mapping) -> str:
    """``retrieval.index`` checked: ``exact`` or a FAISS index name (canonical or alias)."""
    index = str(need(retrieval, "index", "retrieval"))
    if index not in RETRIEVAL_INDEXES:
        raise CbirError(f"unknown retrieval.index '{index}'; expected one of {', '.join(RETRIEVAL_INDEXES)}")
    return index


def refine_factor(faiss: Mapping) -> int:
    """``retrieval.faiss.refine``: ``refine * k`` candidates re-scored exactly; null (dropped from the
    options) re-scores none beyond the ``k`` the index returns, a factor of 1."""
    return int(faiss["refine"]) if faiss.get("refine") is not None else 1


def build_index(data: Mapping, seed: int):
    """The FAISS index of ``load_prepared``'s database under its ``search`` settings (``refine`` kept
    for the search); a bad setting is one line."""
    settings = data["search"]
    options = {k: v for k, v in settings["faiss"].items() if k != "refine"}
    try:
        return build_faiss_index(data["database"], index=settings["index"], seed=seed, **options)
    except ValueError as exc:
        raise CbirError(f"retrieval.faiss: {exc}") from None


def approximate_search(data: Mapping, k: int, seed: int, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``load_prepared``'s queries with its FAISS index (built now unless ``index`` is given)."""
    settings = data["search"]
    index = build_index(data, seed) if index is None else index
    try:
        return search_built_index(index, settings["index"], data["queries"], data["database"], k,
                                  exclude=data["exclude"], refine=refine_factor(settings["faiss"]))
    except ValueError as exc:
        raise CbirError(f"retrieval.faiss: {exc}") from None


def index_summary(data: Mapping, k: int, seed: int, block_size: int) -> dict:
    """``{"name": canonical index, "recall@k": ...}``: the FAISS index's top-``k`` against exact search."""
    exact_idx, _ = exact_topk(data["queries"], data["database"], k, block_size=block_size,
                              exclude=data["exclude"])
    approx_idx, _ = approximate_search(data, k, seed)
    return {"name": data["search"]["index"], f"recall@{k}": round(recall_at_k(approx_idx, exact_idx), 6)}


def database_vectors(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]`` L2-normalised. Database rows that are one contiguous run (e.g. every row, or
    the queries listed first) of stored unit rows stay a view of the memory-mapped file: a million-row
    database is paged in where a search reads it (a compressed index's candidates), never copied whole."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
        view = np.asarray(features[int(rows[0]):int(rows[-1]) + 1], dtype=np.float32)
        if view.flags.c_contiguous and stored_unit_rows(view):
            return view
    return l2_normalize(np.ascontiguousarray(features[rows]))


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped ``array`` from this process's resident memory (they stay in the
    page cache; later reads fault in only what they touch). A plain array is left alone."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) or getattr(base, "base", None)
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def stored_unit_rows(x: np.ndarray, block: int = 65536, atol: float = 1e-4) -> bool:
    """Whether every non-zero row of ``x`` has unit norm (as :func:`l2_normalize` checks), a block at a time."""
    for start in range(0, x.shape[0], block):
        norms = np.sqrt(np.einsum("ij,ij->i", x[start:start + block], x[start:start + block], dtype=np.float64))
        if np.any(np.abs(norms[norms > 0] - 1.0) > atol):
            return False
    return True
