"""Query expansion (αQE) and database-side augmentation (DBA), after Radenović et al.

Both replace a vector by the L2-normalised weighted sum of itself (weight 1) and its
top-``n`` database neighbours, each weighted by ``max(sim, 0) ** alpha``; ``alpha = 0``
gives average query expansion (every neighbour weighs 1). Pure functions on arrays;
``apply_rerank`` is the one entry point the retrieve and evaluate stages share.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from cbir.errors import CbirError
from cbir.search.exact import exact_topk, l2_normalize

RERANK_KINDS = ("aqe", "dba", "dba+aqe")
#: a ``rerank`` mapping is free-form in the schema (its own keys): ``n`` and ``alpha`` where it leaves them
#: out (conf/retrieval/search/*.yaml sets both)
RERANK_N, RERANK_ALPHA = 3, 3.0


def _weights(sims: np.ndarray, alpha: float) -> np.ndarray:
    sims = np.clip(sims.astype(np.float64), 0.0, None)
    if alpha == 0:
        return np.ones_like(sims)
    return sims ** alpha


def _expand(vectors: np.ndarray, database: np.ndarray, indices: np.ndarray,
            sims: np.ndarray, alpha: float) -> np.ndarray:
    """normalise(v + sum_j w_j * database[indices_j]) for each row v."""
    weights = _weights(sims, alpha)
    out = vectors.astype(np.float64, copy=True)
    for j in range(indices.shape[1]):
        out += weights[:, j:j + 1] * database[indices[:, j]]
    return l2_normalize(out.astype(np.float32))


def alpha_query_expansion(queries: np.ndarray, database: np.ndarray, n: int = 3,
                          alpha: float = 3.0, exclude: np.ndarray | None = None,
                          block_size: int = 1024) -> np.ndarray:
    """αQE: each query becomes normalise(q + Σ_{j≤n} sim_j^alpha · d_j) over its top-``n``.

    ``exclude`` (leave-one-out) keeps a query from expanding with its own database row.
    Returns new L2-normalised float32 queries ``[Q, D]``.
    """
    q = l2_normalize(queries)
    db = l2_normalize(database)
    if n < 1:
        return q.copy()
    idx, sims = exact_topk(q, db, n, block_size=block_size, exclude=exclude)
    return _expand(q, db, idx, sims, alpha)


def database_augmentation(database: np.ndarray, n: int = 3, alpha: float = 3.0,
                          block_size: int = 1024) -> np.ndarray:
    """DBA: each database row becomes normalise(d + Σ_{j≤n} sim_j^alpha · d_j) over its
    top-``n`` other database rows (itself excluded from the neighbours, added with weight 1).
    """
    db = l2_normalize(database)
    if n < 1 or db.shape[0] < 2:
        return db.copy()
    self_rows = np.arange(db.shape[0], dtype=np.int64)
    idx, sims = exact_topk(db, db, n, block_size=block_size, exclude=self_rows)
    return _expand(db, db, idx, sims, alpha)


def rerank_config(config: Mapping | None) -> dict | None:
    """Validated ``{kind, n, alpha}`` from a method's ``rerank`` entry (``None`` = no re-ranking)."""
    if config is None or config is False:
        return None
    if not isinstance(config, Mapping):
        raise CbirError(f"rerank must be a mapping like {{kind: aqe, n: 3, alpha: 3.0}}, got {config!r}")
    kind = config.get("kind")
    if kind in (None, "none"):
        return None
    kind = str(kind).lower()
    if kind not in RERANK_KINDS:
        raise CbirError(f"unknown rerank kind '{kind}'; expected one of {', '.join(RERANK_KINDS)}")
    try:
        n = int(config.get("n", RERANK_N))
        alpha = float(config.get("alpha", RERANK_ALPHA))
    except (TypeError, ValueError) as exc:
        raise CbirError(f"rerank n must be an integer and alpha a number, got {dict(config)}") from exc
    if n < 1 or alpha < 0:
        raise CbirError(f"rerank needs n >= 1 and alpha >= 0, got n={n}, alpha={alpha}")
    return {"kind": kind, "n": n, "alpha": alpha}


def apply_rerank(queries: np.ndarray, database: np.ndarray, config: Mapping | None,
                 exclude: np.ndarray | None = None,
                 block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Apply a method's ``rerank`` config; returns ``(queries, database)`` to search with.

    ``aqe`` expands the queries; ``dba`` augments the database (queries unchanged);
    ``dba+aqe`` augments the database, then expands the queries against it. No config:
    the L2-normalised inputs unchanged.
    """
    cfg = rerank_config(config)
    q = l2_normalize(queries)
    db = l2_normalize(database)
    if cfg is None:
        return q, db
    if "dba" in cfg["kind"]:
        db = database_augmentation(db, cfg["n"], cfg["alpha"], block_size=block_size)
    if "aqe" in cfg["kind"]:
        q = alpha_query_expansion(q, db, cfg["n"], cfg["alpha"], exclude=exclude,
                                  block_size=block_size)
    return q, db
