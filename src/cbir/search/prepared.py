"""A method's searchable vectors: the manifest's query and database rows, the method's re-ranking,
and the configured search index (``retrieval.index``, ``retrieval.faiss``), checked in one place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from cbir.config import method_config, section
from cbir.data.manifest import split_indices
from cbir.errors import CbirError
from cbir.features.store import read_features, select_rows
from cbir.layout import Layout
from cbir.search.exact import exact_topk, recall_at_k
from cbir.search.faiss_index import (
    FAISS_INDEXES,
    INDEX_ALIASES,
    canonical_index,
    faiss_topk,
)
from cbir.search.rerank import apply_rerank, rerank_config

log = logging.getLogger("cbir")

RETRIEVAL_INDEXES = ("exact",) + FAISS_INDEXES + tuple(INDEX_ALIASES)


#: ``retrieval.faiss`` keys: IVF cells and probes, PQ sub-quantizers and bits, HNSW links and
#: beam widths, the candidate factor re-scored exactly for compressed indexes, and ``gpu`` (bool).
FAISS_PARAM_KEYS = ("nlist", "nprobe", "m", "nbits", "M", "efSearch", "efConstruction", "refine", "gpu")


def prepare(manifest: pd.DataFrame, features: np.ndarray, method: str, method_cfg: Mapping,
            block_size: int = 1024) -> dict:
    """Manifest split + (re-ranked) query and database features of one method.

    Returns a dict with ``manifest, query_rows, database_rows, exclude, queries, database, rerank``:
    the one place where retrieve, evaluate and the query tool apply a method's ``rerank``.
    """
    query_rows, database_rows, exclude = split_indices(manifest)
    rerank = rerank_config(method_cfg.get("rerank") if isinstance(method_cfg, Mapping) else None)
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
    """:func:`prepare` for ``method`` of ``params``: its features file read and checked (memory-mapped)."""
    paths = Layout(root, params)
    features = read_features(paths.features(method), method, len(manifest))
    block_size = int(section(params, "retrieval").get("block_size", 1024))
    return prepare(manifest, features, method, method_config(params, method), block_size)


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
    index = str(retrieval.get("index", "exact"))
    if index not in RETRIEVAL_INDEXES:
        raise CbirError(f"unknown retrieval.index '{index}'; expected one of {', '.join(RETRIEVAL_INDEXES)}")
    return index


def approximate_search(data: Mapping, retrieval: Mapping, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``prepare``'s queries with the FAISS index of ``retrieval``; a bad setting is one line."""
    options = faiss_options(retrieval)
    try:
        return faiss_topk(data["queries"], data["database"], k, index=index_name(retrieval),
                          exclude=data["exclude"], seed=seed, **options)
    except ValueError as exc:
        raise CbirError(f"retrieval.faiss: {exc}") from None


def index_summary(data: Mapping, retrieval: Mapping, k: int, seed: int, block_size: int) -> dict:
    """``{"name": canonical index, "recall@k": ...}``: the FAISS index's top-``k`` against exact search."""
    exact_idx, _ = exact_topk(data["queries"], data["database"], k, block_size=block_size,
                              exclude=data["exclude"])
    approx_idx, _ = approximate_search(data, retrieval, k, seed)
    return {"name": canonical_index(index_name(retrieval)),
            f"recall@{k}": round(recall_at_k(approx_idx, exact_idx), 6)}
