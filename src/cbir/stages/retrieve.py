"""Stage ``retrieve``: a method's cosine top-k for every query, ``data/retrieval/<ds>/<method>.csv``
(``query_id, rank, image_id, score``) and ``.json`` (settings; with FAISS, recall@k against exact search)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cbir.config import method_config, section
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.fileio import atomic_path, write_json
from cbir.layout import Layout
from cbir.search.exact import exact_topk, ranking_frame, recall_at_k
from cbir.search.faiss_index import canonical_index
from cbir.search.prepared import (
    approximate_search,
    faiss_options,
    index_name,
    load_prepared,
)

log = logging.getLogger("cbir")


def run(params: dict, method: str, root: str | Path) -> None:
    """Top-k rankings of ``method`` to ``data/retrieval/<ds>/<method>.csv`` (+ ``.json`` info).

    ``retrieval.index`` is ``exact`` or a FAISS index (``faiss-flat``/``faiss-ivf``/``faiss-ivfpq``/
    ``faiss-hnsw`` or the aliases ``flat``/``ivf``/``ivfpq``/``hnsw``, options in ``retrieval.faiss``);
    with FAISS the JSON also records recall@k against exact search.
    """
    start = time.perf_counter()
    root = Path(root)
    paths = Layout(root, params)
    retrieval = section(params, "retrieval")
    k = int(retrieval.get("k", 10))
    block_size = int(retrieval.get("block_size", 1024))
    index = index_name(retrieval)
    if k < 1:
        raise CbirError(f"retrieval.k must be >= 1, got {k}")
    options = faiss_options(retrieval) if index != "exact" else {}
    method_config(params, method)  # an unknown method is one clear error, before any file is read
    data = load_prepared(params, method, root, read_manifest(paths.manifest))
    exact_idx, exact_scores = exact_topk(data["queries"], data["database"], k,
                                         block_size=block_size, exclude=data["exclude"])
    info: dict = {"method": method, "dataset": paths.dataset, "index": index, "k": int(exact_idx.shape[1]),
                  "n_queries": int(len(data["query_rows"])),
                  "n_database": int(len(data["database_rows"])), "rerank": data["rerank"]}
    indices, scores = exact_idx, exact_scores
    if index != "exact":
        indices, scores = approximate_search(data, retrieval, k, int(params.get("seed", 0)))
        info.update(index_name=canonical_index(index), faiss=options,
                    recall_at_k=round(recall_at_k(indices, exact_idx), 6))
        log.info("%s: FAISS %s recall@%d vs exact = %.4f", method, index, k, info["recall_at_k"])
    manifest = data["manifest"]
    ids = manifest["image_id"].to_numpy()
    frame = ranking_frame(ids[data["query_rows"]], ids[data["database_rows"]], indices, scores)
    out = paths.retrieval(method)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    write_json(paths.retrieval_info(method), info)
    log.info("retrieve %s: wrote %s (%d rows) and %s in %.2fs", method, out, len(frame),
             out.with_suffix(".json").name, time.perf_counter() - start)
