"""Query any image: embed it with a pipeline method and rank the database by cosine similarity.

Pure logic shared by ``cbir query`` (command line) and ``cbir serve`` (web page):
:func:`load_database` reads one method's features and the manifest once,
:class:`QueryEngine` adds the method's model (built once by :func:`cbir.features.methods.build_method`)
and answers queries by image or by image id with the method's search settings (re-ranking, index: the
saved index of the retrieve stage) exactly as the pipeline ranks, and :func:`result_records` turns a ranking into plain
dicts (``rank, image_id, label, score, path, relevant``) that the table, the JSON output, the figure
and the web page all print.
"""

from __future__ import annotations

import dataclasses

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cbir.app.decode import check_shape, decode_image_bytes, open_query_image
from cbir.data.curate import pixel_hash
from cbir.data.manifest import database_rows, read_manifest
from cbir.errors import CbirError
from cbir.features.methods import build_method
from cbir.features.store import read_features, recorded_hashes
from cbir.features.whitening import apply_whitening, load_whitening
from cbir.fileio import sha256_bytes, sha256_file
from cbir.layout import Layout
from cbir.search.exact import exact_topk, l2_normalize
from cbir.search.faiss_index import search_built_index
from cbir.search.prepared import database_vectors, refine_factor, release_pages, search_settings
from cbir.search.rerank import alpha_query_expansion, database_augmentation
from cbir.search.saved import load_index
from cbir.settings import mapping, need


def default_method(params: dict) -> str:
    """The first method listed in ``params.yaml``."""
    methods = list(params.get("methods") or {})
    if not methods:
        raise CbirError("params.yaml lists no methods: add one under conf/method and regenerate params.yaml")
    return methods[0]


def query_settings(params: dict) -> dict:
    """``k``, ``block_size`` and ``max_pixels`` for queries, from ``retrieval`` and ``curate`` in params
    (conf/ sets them: a missing one is one line)."""
    retrieval, curate = mapping(params, "retrieval"), mapping(params, "curate")
    return {"k": int(need(retrieval, "k", "retrieval")), "block_size": int(need(retrieval, "block_size", "retrieval")),
            "max_pixels": int(need(curate, "max_pixels", "curate"))}


@dataclass
class Database:
    """One method's searchable state: the manifest, its features, and which rows are the database.

    ``features`` holds every manifest row (aligned with ``manifest``); ``rows`` are the
    manifest rows searched (``split == "database"``, or all rows under ``leave_one_out``);
    ``vectors`` are ``features[rows]`` L2-normalised (and augmented when the method's re-ranking
    includes DBA); ``search`` holds the method's ``{rerank, index, faiss}`` and ``index`` its saved
    FAISS index (``None`` for exact search).
    """

    method: str
    manifest: pd.DataFrame
    features: np.ndarray
    rows: np.ndarray
    vectors: np.ndarray
    search: dict | None = None
    index: object = None
    #: the dataset served, and ``{path: (mtime_ns, size)}`` of every file it was loaded from
    dataset: str = ""
    sources: dict = dataclasses.field(default_factory=dict)

    def changed_sources(self) -> list[str]:
        """The files this database was loaded from that differ on disk now (mtime or size; cheap: one stat each)."""
        return [path for path, seen in self.sources.items() if file_signature(Path(path)) != seen]

    def check_fresh(self) -> None:
        """Refuse, in one line, to answer from a database rebuilt on disk since it was loaded."""
        changed = self.changed_sources()
        if changed:
            raise StaleDatabase(f"the database of method {self.method!r} (dataset {self.dataset or '?'}) was rebuilt "
                                f"on disk since it was loaded ({Path(changed[0]).name} changed): restart `cbir serve` "
                                "to serve the new one")

    def __post_init__(self):
        self._row_of = {image_id: i for i, image_id in enumerate(self.manifest["image_id"])}
        self._row_of_sha = {}
        if "sha256" in self.manifest.columns:
            for i, digest in enumerate(self.manifest["sha256"].astype(str)):
                self._row_of_sha.setdefault(digest, i)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def row_of(self, image_id: str) -> int:
        """Manifest row of ``image_id``; an unknown id is a :class:`CbirError`."""
        try:
            return self._row_of[str(image_id)]
        except KeyError:
            raise CbirError(f"image id {image_id!r} is not in the manifest: pick an image id listed in "
                            "data/curated/<dataset>/manifest.csv") from None

    def has_id(self, image_id: str) -> bool:
        return str(image_id) in self._row_of

    def row_of_sha256(self, digest: str) -> int | None:
        """Manifest row whose file has this sha256 (the query is a dataset image), else ``None``."""
        return self._row_of_sha.get(digest)

    def position_of_row(self, row: int | None) -> int:
        """Position of manifest ``row`` among the database rows (``-1`` when it is not searched)."""
        if row is None:
            return -1
        hits = np.flatnonzero(self.rows == row)
        return int(hits[0]) if hits.size else -1


class StaleDatabase(CbirError):
    """The features, manifest or index behind a loaded database changed on disk."""


def file_signature(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``path``, ``None`` when it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def source_signatures(paths: list[Path]) -> dict:
    """:func:`file_signature` of each file (a folder: each file in it)."""
    files: list[Path] = []
    for path in paths:
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): file_signature(p) for p in files}


def load_database(params: dict, method: str, root: Path) -> Database:
    """Read the manifest, ``data/features/<ds>/<method>.npy`` and, for a FAISS index, the saved index
    ``data/index/<ds>/<method>/`` of a method the pipeline has built (a stale one is refused)."""

    settings = search_settings(params, method)  # an unknown method or a bad setting is one clear error
    paths = Layout(root, params)
    sources = source_signatures([paths.manifest, paths.features(method), paths.index_dir(method)])
    manifest = read_manifest(paths.manifest).reset_index(drop=True)
    path = paths.features(method)
    features = read_features(path, method, manifest)  # memory-mapped, verified against its hashes
    rows = database_rows(manifest)
    rerank = settings["rerank"]
    vectors = database_vectors(features, rows)
    if rerank and "dba" in rerank["kind"]:
        vectors = database_augmentation(vectors, rerank["n"], rerank["alpha"],
                                        block_size=query_settings(params)["block_size"])
    index = None
    if settings["index"] != "exact":
        index = load_index(paths.index_dir(method), method, settings, path,
                           manifest["image_id"].astype(str).to_numpy()[rows],
                           features_sha256=recorded_hashes(path, method)["features_sha256"])
    release_pages(features)  # the checks above read every page: a search pages in only what it reads
    return Database(method=method, manifest=manifest, features=features, rows=rows, vectors=vectors,
                    search=settings, index=index, dataset=paths.dataset, sources=sources)


def query_vectors(db: Database, vectors: np.ndarray, k: int) -> np.ndarray:
    """Query vectors as float32 ``[Q, D]``, checked against the database (``k`` at least 1, same dimension)."""
    if k < 1:
        raise CbirError(f"k must be at least 1, got {k}")
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if vectors.shape[1] != db.dim:
        raise CbirError(f"the query has {vectors.shape[1]} dimensions but the {db.method} features have {db.dim}: "
                        f"the features are stale, rebuild them with `dvc repro extract@{db.dataset}`")
    return vectors


def search(db: Database, vectors: np.ndarray, k: int, block_size: int,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each query vector among the database rows, as the retrieve stage ranks: the
    method's query expansion, then exact cosine search or its saved FAISS index.

    ``exclude`` (int ``[Q]``, database positions, ``-1`` = none) keeps a query's own entry out.
    Returns manifest row numbers (int64 ``[Q, k']``) and scores (float32 ``[Q, k']``),
    ties broken by the lower image id (see :func:`cbir.search.exact.exact_topk`).
    """

    vectors = query_vectors(db, vectors, k)
    settings = db.search or {"rerank": None, "index": "exact", "faiss": {}}
    rerank = settings["rerank"]
    queries = l2_normalize(vectors)
    if rerank and "aqe" in rerank["kind"]:
        queries = alpha_query_expansion(queries, db.vectors, rerank["n"], rerank["alpha"], exclude=exclude,
                                        block_size=block_size)
    if db.index is None:
        idx, scores = exact_topk(queries, db.vectors, k, block_size=block_size, exclude=exclude)
    else:
        idx, scores = search_built_index(db.index, settings["index"], queries, db.vectors, k, exclude=exclude,
                                         refine=refine_factor(settings["faiss"]))
        keep = idx[0] >= 0 if len(idx) == 1 else slice(None)
        idx, scores = idx[:, keep], scores[:, keep]
    return db.rows[idx], scores


def result_records(db: Database, rows: np.ndarray, scores: np.ndarray, query_label: str | None = None) -> list[dict]:
    """One dict per hit, best first: ``rank`` (1-based), ``image_id``, ``label``, ``score``, ``path``,
    ``relevant`` (same label as the query; ``None`` when the query's label is unknown)."""
    manifest, rows = db.manifest, np.asarray(rows, dtype=np.int64).tolist()
    # positional cell lookups: label lookups (.at) or a take on a million-row column cost more than the search
    ids, labels, paths = ([str(manifest.iat[row, manifest.columns.get_loc(column)]) for row in rows]
                          for column in ("image_id", "label", "path"))
    return [{"rank": rank, "image_id": image_id, "label": label, "score": float(score), "path": path,
             "relevant": None if query_label is None else label == query_label}
            for rank, (image_id, label, path, score) in enumerate(zip(ids, labels, paths,
                                                                      np.asarray(scores).tolist()), start=1)]


class QueryEmbedder:
    """A method's model for query images, plus the PCA-whitening its extract stage learnt (if any)."""

    def __init__(self, method, whitening=None):
        self.method, self.whitening = method, whitening

    @classmethod
    def from_params(cls, params: dict, name: str, root: Path) -> "QueryEmbedder":
        method = build_method(name, params, root)
        whitening = None
        if method.config.get("whiten"):
            path = Layout(root, params).whitening(name)
            if not path.exists():
                raise CbirError(f"{path} is missing: run `dvc repro extract@{path.parent.name}` first")
            whitening = load_whitening(path)
        return cls(method, whitening)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised descriptors ``[n, D]`` in the space of the stored features."""
        out = self.method.embed(images)
        if self.whitening is not None:
            out = apply_whitening(self.whitening, out).astype(np.float32)
        return out


class QueryEngine:
    """A method's model and database, loaded once; answers queries (thread-safe, one at a time)."""

    def __init__(self, db: Database, embedder, k: int, block_size: int, max_pixels: int, root: Path | None = None):
        self.db, self.embedder, self.root = db, embedder, root
        self.k, self.block_size, self.max_pixels = int(k), int(block_size), int(max_pixels)
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        return self.db.method

    @property
    def resize_side(self) -> int | None:
        """The side a deep method resizes a query's shorter side to (``None`` for other methods): the
        decoder refuses a shape whose resize would exceed the pixel budget (:func:`cbir.app.decode.check_shape`)."""
        side = getattr(getattr(self.embedder, "method", None), "image_size", None)
        return int(side) if isinstance(side, int) and not isinstance(side, bool) and side > 0 else None

    @classmethod
    def from_params(cls, params: dict, method: str, root: Path, db: Database | None = None) -> "QueryEngine":

        db = db if db is not None else load_database(params, method, root)
        return cls(db, QueryEmbedder.from_params(params, method, Path(root)), root=Path(root),
                   **query_settings(params))

    def embed(self, image: Image.Image, name: str = "query") -> np.ndarray:
        """The image's L2-normalised descriptor ``[1, D]``. Its shape is checked first (a region cut from an
        image, too, is refused beyond 50:1 or when the method's resize would exceed the pixel budget)."""
        check_shape(name, image.size, self.max_pixels, self.resize_side)
        with self._lock:
            return self.embedder.embed([image])

    def _answer(self, vector: np.ndarray, k: int | None, query: dict, timings: dict, exclude: int = -1) -> dict:
        start = time.perf_counter()
        rows, scores = search(self.db, vector, int(k or self.k), self.block_size,
                              exclude=np.array([exclude]) if exclude >= 0 else None)
        timings["search_ms"] = (time.perf_counter() - start) * 1e3
        results = result_records(self.db, rows[0], scores[0], query.get("label"))
        # "k" is how many results there are: a --k beyond the database returns (and titles) what exists
        return {"method": self.method, "k": len(results), "query": query, "results": results,
                "timings_ms": {key.removesuffix("_ms"): round(val, 3) for key, val in timings.items()}}

    def describe_query(self, digest: str | None, source: str) -> dict:
        """``{image_id, label, source}`` of a query; ``image_id``/``label`` set when it is a dataset image."""
        row = self.db.row_of_sha256(digest) if digest else None
        if row is None:
            return {"image_id": None, "label": None, "source": source}
        return {"image_id": str(self.db.manifest.at[row, "image_id"]),
                "label": str(self.db.manifest.at[row, "label"]), "source": source}

    def own_entry(self, image: Image.Image, vector: np.ndarray, digest: str | None = None) -> int:
        """Database position of the query's own entry (same file sha256, or the same decoded pixels:
        checked on the database rows whose cosine with the query is 1), ``-1`` when it has none."""
        position = self.db.position_of_row(self.db.row_of_sha256(digest) if digest else None)
        if position >= 0:
            return position
        target = pixel_hash(np.asarray(image))
        idx, scores = exact_topk(vector, self.db.vectors, min(8, len(self.db.rows)), block_size=self.block_size)
        for pos, score in zip(idx[0].tolist(), scores[0].tolist()):
            if score < 1 - 1e-4:
                break
            path = Path(self.root or ".") / str(self.db.manifest.at[int(self.db.rows[pos]), "path"])
            try:
                if pixel_hash(np.asarray(open_query_image(path, self.max_pixels))) == target:
                    return int(pos)
            except (CbirError, OSError):
                continue
        return -1

    def query_image(self, image: Image.Image, k: int | None = None, query: dict | None = None,
                    exclude_self: bool = False, digest: str | None = None) -> dict:
        """Rank the database for a decoded image; ``query`` describes it (see :meth:`describe_query`).
        ``exclude_self`` drops the query's own database entry (:meth:`own_entry`)."""
        start = time.perf_counter()
        vector = self.embed(image)
        timings = {"embed_ms": (time.perf_counter() - start) * 1e3}
        exclude = self.own_entry(image, vector, digest) if exclude_self else -1
        return self._answer(vector, k, dict(query or {"image_id": None, "label": None, "source": None}), timings,
                            exclude)

    def query_images(self, images: list[Image.Image], sources: list[str], digests: list[str | None],
                     k: int | None = None, exclude_self: bool = False) -> list[dict]:
        """:meth:`query_image` for a batch, embedded together (what ``cbir query DIR`` runs)."""
        if not images:
            return []
        for image, source in zip(images, sources):
            check_shape(source, image.size, self.max_pixels, self.resize_side)
        with self._lock:
            vectors = self.embedder.embed(list(images))
        answers = []
        for i, (image, source, digest) in enumerate(zip(images, sources, digests)):
            vector = vectors[i:i + 1]
            exclude = self.own_entry(image, vector, digest) if exclude_self else -1
            answers.append(self._answer(vector, k, self.describe_query(digest, source), {}, exclude))
        return answers

    def query_bytes(self, data: bytes, name: str = "upload", k: int | None = None,
                    exclude_self: bool = False) -> tuple[dict, Image.Image]:
        """Decode uploaded bytes and rank the database; returns (answer, decoded image)."""
        start = time.perf_counter()
        image = decode_image_bytes(data, name, self.max_pixels, self.resize_side)
        decode_ms = (time.perf_counter() - start) * 1e3
        digest = sha256_bytes(data)
        answer = self.query_image(image, k, self.describe_query(digest, name), exclude_self, digest)
        answer["timings_ms"] = {"decode": round(decode_ms, 3), **answer["timings_ms"]}
        return answer, image

    def query_path(self, path: str | os.PathLike, k: int | None = None,
                   exclude_self: bool = False) -> tuple[dict, Image.Image]:
        """Decode an image file and rank the database; returns (answer, decoded image)."""
        start = time.perf_counter()
        image = open_query_image(path, self.max_pixels, self.resize_side)
        decode_ms = (time.perf_counter() - start) * 1e3
        digest = sha256_file(path)
        answer = self.query_image(image, k, self.describe_query(digest, str(path)), exclude_self, digest)
        answer["timings_ms"] = {"decode": round(decode_ms, 3), **answer["timings_ms"]}
        return answer, image

    def query_id(self, image_id: str, k: int | None = None, exclude_self: bool = False) -> dict:
        """Rank the database for a dataset image by id, using its stored features (no decoding);
        ``exclude_self`` drops the image's own database entry (the leave-one-out ranking)."""
        row = self.db.row_of(image_id)
        query = {"image_id": str(image_id), "label": str(self.db.manifest.at[row, "label"]),
                 "source": str(self.db.manifest.at[row, "path"])}
        exclude = self.db.position_of_row(row) if exclude_self else -1
        return self._answer(self.db.features[row:row + 1], k, query, {}, exclude)
