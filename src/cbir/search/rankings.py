"""A method's cosine top-k for every query, ``data/retrieval/<ds>/<method>.csv``
(``query_id, rank, image_id, score``) and ``.json`` (settings; with FAISS, recall@k against exact search)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from cbir.config import method_config, section
from cbir.settings import need
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.features.store import recorded_hashes
from cbir.fileio import atomic_group
from cbir.layout import Layout
from cbir.search.exact import exact_topk, ranking_frame, recall_at_k
from cbir.search.prepared import approximate_search, build_index, load_prepared
from cbir.search.saved import save_index

log = logging.getLogger("cbir")


def run(params: dict, method: str, root: str | Path) -> None:
    """Top-k rankings of ``method`` to ``data/retrieval/<ds>/<method>.csv`` (+ ``.json`` info), and its
    search index with the id map to ``data/index/<ds>/<method>/`` (read by ``cbir query``/``serve``).

    The index is ``exact`` or a FAISS index (``faiss-flat``/``faiss-ivf``/``faiss-ivfpq``/``faiss-hnsw``
    or the aliases ``flat``/``ivf``/``ivfpq``/``hnsw``): ``retrieval.index`` and ``retrieval.faiss``,
    overridden per method by ``retrieval.per_method.<method>``, which also holds the re-ranking;
    with FAISS the JSON also records recall@k against exact search.
    """
    start = time.perf_counter()
    root = Path(root)
    paths = Layout(root, params)
    retrieval = section(params, "retrieval")
    k = int(need(retrieval, "k", "retrieval"))
    block_size = int(need(retrieval, "block_size", "retrieval"))
    if k < 1:
        raise CbirError(f"retrieval.k must be >= 1, got {k}")
    method_config(params, method)  # an unknown method is one clear error, before any file is read
    data = load_prepared(params, method, root, read_manifest(paths.manifest))
    settings = data["search"]
    exact_idx, exact_scores = exact_topk(data["queries"], data["database"], k,
                                         block_size=block_size, exclude=data["exclude"])
    info: dict = {"method": method, "dataset": paths.dataset, "index": settings["index"],
                  "k": int(exact_idx.shape[1]), "n_queries": int(len(data["query_rows"])),
                  "n_database": int(len(data["database_rows"])), "rerank": data["rerank"]}
    indices, scores, index = exact_idx, exact_scores, None
    if settings["index"] != "exact":
        seed = int(need(params, "seed"))
        index = build_index(data, seed)
        indices, scores = approximate_search(data, k, seed, index=index)
        info.update(index_name=settings["index"], faiss=settings["faiss"],
                    recall_at_k=round(recall_at_k(indices, exact_idx), 6))
        log.info("%s: FAISS %s recall@%d vs exact = %.4f", method, settings["index"], k, info["recall_at_k"])
    manifest = data["manifest"]
    ids = manifest["image_id"].to_numpy()
    frame = ranking_frame(ids[data["query_rows"]], ids[data["database_rows"]], indices, scores)
    out = paths.retrieval(method)
    with atomic_group([out, paths.retrieval_info(method)]) as (tmp, info_tmp):  # replaced together
        frame.to_csv(tmp, index=False)
        info_tmp.write_text(json.dumps(info, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    save_index(paths.index_dir(method), method, settings, paths.features(method), ids[data["database_rows"]],
               index, features_sha256=recorded_hashes(paths.features(method), method)["features_sha256"])
    log.info("retrieve %s: wrote %s (%d rows), %s and %s in %.2fs", method, out, len(frame),
             out.with_suffix(".json").name, paths.index_dir(method), time.perf_counter() - start)
