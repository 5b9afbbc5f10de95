"""Relevance feedback and region queries for the query tool and the web page, on :mod:`cbir.app.engine`'s
database: image ids marked relevant / irrelevant become database positions, the query is re-ranked as the
``feedback`` stage ranks it (:mod:`cbir.search.feedback`), and ``--box`` crops the query image to a region.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.app.decode import decode_query
from cbir.app.engine import Database, QueryEngine, query_vectors, result_records
from cbir.errors import CbirError
from cbir.search.exact import l2_normalize
from cbir.search.feedback import FeedbackSettings, Marks, rank_one
from cbir.search.rerank import alpha_query_expansion


def feedback_marks(db: Database, relevant=(), irrelevant=()) -> Marks:
    """Image ids marked relevant / irrelevant as database positions; an unknown id, an image that is not in the
    searched database, or one marked both ways is one clear :class:`CbirError`."""
    def positions(ids, what):
        out = []
        for image_id in ids:
            if not db.has_id(image_id):
                raise CbirError(f"--{what} {image_id}: no image with that id in the manifest; mark image ids "
                                "the ranking returned (the image_id column)")
            position = db.position_of_row(db.row_of(image_id))
            if position < 0:
                raise CbirError(f"--{what} {image_id}: that image is a query image, not in the database searched; "
                                "mark only images the ranking returned")
            out.append(position)
        return out

    both = sorted(set(map(str, relevant)) & set(map(str, irrelevant)))
    if both:
        raise CbirError(f"image ids {', '.join(both)} are marked both relevant and irrelevant: mark each image once")
    return Marks(tuple(positions(relevant, "relevant")), tuple(positions(irrelevant, "irrelevant")))


def feedback_search(db: Database, vector: np.ndarray, marks: Marks, k: int, settings: FeedbackSettings,
                    block_size: int = 1024, exclude: int = -1) -> tuple[np.ndarray, np.ndarray, str]:
    """Top-``k`` after feedback for one query vector, as the feedback stage ranks: the method's query expansion
    (as :func:`search`), then :func:`cbir.search.feedback.rank_one` over the database vectors (always exact
    search). Returns manifest rows, scores and the feedback method that ran (``svm`` may fall back to Rocchio)."""
    vector = query_vectors(db, vector, k)
    query = l2_normalize(vector)
    rerank = (db.search or {}).get("rerank")
    if rerank and "aqe" in rerank["kind"]:
        query = alpha_query_expansion(query, db.vectors, rerank["n"], rerank["alpha"],
                                      exclude=np.array([exclude]) if exclude >= 0 else None, block_size=block_size)
    positions, scores, used = rank_one(query[0], db.vectors, marks, k, settings, exclude=exclude,
                                       block_size=block_size)
    return db.rows[positions], scores, used


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` (integer pixels, ``x0 < x1``, ``y0 < y1``) from text; anything else is one clear error."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise CbirError(f"--box {text!r}: give four integers x0,y0,x1,y1 (pixels, top-left origin), e.g. 10,20,200,180")
    x0, y0, x1, y1 = box
    if min(box) < 0 or x0 >= x1 or y0 >= y1:
        raise CbirError(f"--box {text!r}: needs 0 <= x0 < x1 and 0 <= y0 < y1 (pixels, top-left origin)")
    return box


def display_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as shown (EXIF rotation applied), at full resolution, from its header."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def crop_box(image: Image.Image, box: tuple[int, int, int, int], full_size: tuple[int, int] | None = None,
             ) -> Image.Image:
    """The region ``box`` (pixels of the image at ``full_size``, default its own size) of a decoded image.

    A JPEG over the pixel budget is decoded at reduced size: the box is scaled by the same factor. A box that does
    not fit in the image is one clear :class:`CbirError`."""
    width, height = full_size or image.size
    x0, y0, x1, y1 = box
    if x1 > width or y1 > height:
        raise CbirError(f"--box {x0},{y0},{x1},{y1} does not fit in the {width}x{height} image: "
                        f"needs x1 <= {width} and y1 <= {height}")
    sx, sy = image.size[0] / width, image.size[1] / height
    scaled = (int(x0 * sx), int(y0 * sy), max(int(x0 * sx) + 1, round(x1 * sx)), max(int(y0 * sy) + 1, round(y1 * sy)))
    return image.crop(scaled)


def feedback_answer(engine: QueryEngine, vector: np.ndarray, k: int | None, query: dict, relevant, irrelevant,
                    settings: FeedbackSettings, rounds: int = 1, exclude: int = -1, timings: dict | None = None) -> dict:
    """An answer (as :meth:`QueryEngine.query_image` gives) re-ranked with the marks; ``feedback`` says how:
    the method that ran, the round, the marked ids. Marked images are not among the results."""
    timings = dict(timings or {})
    marks = feedback_marks(engine.db, relevant, irrelevant)
    start = time.perf_counter()
    rows, scores, used = feedback_search(engine.db, vector, marks, int(k or engine.k), settings, engine.block_size,
                                         exclude)
    timings["search_ms"] = (time.perf_counter() - start) * 1e3
    results = result_records(engine.db, rows, scores, query.get("label"))
    note = "" if used == settings.method else f"{settings.method} needs relevant and irrelevant marks: Rocchio instead"
    return {"method": engine.method, "k": len(results), "query": query, "results": results,
            "feedback": {"method": used, "requested": settings.method, "round": int(rounds),
                         "relevant": [str(i) for i in dict.fromkeys(map(str, relevant))],
                         "irrelevant": [str(i) for i in dict.fromkeys(map(str, irrelevant))], "note": note},
            "timings_ms": {key.removesuffix("_ms"): round(val, 3) for key, val in timings.items()}}


def query_id_feedback(engine: QueryEngine, image_id: str, relevant, irrelevant, settings: FeedbackSettings,
                      k: int | None = None, exclude_self: bool = False, rounds: int = 1) -> dict:
    """:func:`feedback_answer` for a dataset image by id (its stored features), as the feedback stage ranks it."""
    row = engine.db.row_of(image_id)
    query = {"image_id": str(image_id), "label": str(engine.db.manifest.at[row, "label"]),
             "source": str(engine.db.manifest.at[row, "path"])}
    exclude = engine.db.position_of_row(row) if exclude_self else -1
    return feedback_answer(engine, engine.db.features[row:row + 1], k, query, relevant, irrelevant, settings,
                           rounds, exclude)


#: a web page's per-result mark: ``mark:<image id>`` = ``relevant`` | ``irrelevant`` | empty (unmarked)
MARK_PREFIX = "mark:"


def refine_request(engine: QueryEngine, params: dict, root, args) -> dict:
    """The web page's ``/refine``: a dataset image ``id`` re-ranked with relevance feedback, or a region of it.

    ``args`` (a werkzeug ``MultiDict``): ``id``; ``relevant`` / ``irrelevant`` (repeated: the marks of earlier
    rounds), ``mark:<image id>`` = ``relevant`` | ``irrelevant`` (this round's), ``round`` (the round shown
    so far; one more when this request adds marks), ``feedback`` (rocchio | svm; default the first of
    ``feedback.methods``), ``box`` (``x0,y0,x1,y1``) with ``box_size`` (``WxH``: the image the box was drawn
    on; default the image's full size). Returns the answer, with ``feedback`` (always: round 0 without marks).
    """
    image_id = args.get("id")
    if not image_id:
        raise CbirError("no query: refine needs the id of a dataset image (query by id, then refine)")
    row = engine.db.row_of(image_id)
    relevant, irrelevant = list(args.getlist("relevant")), list(args.getlist("irrelevant"))
    new = 0
    for key, value in args.items(multi=True):
        if key.startswith(MARK_PREFIX) and value in ("relevant", "irrelevant"):
            (relevant if value == "relevant" else irrelevant).append(key[len(MARK_PREFIX):])
            new += 1
    try:
        past = int(args.get("round") or 0)
    except ValueError:
        raise CbirError(f"round={args.get('round')!r} is not a round number") from None
    rounds = max(0, past) + (1 if new else 0)
    try:
        settings = FeedbackSettings.from_config(params.get("feedback") or {}, args.get("feedback") or None)
    except ValueError as exc:
        raise CbirError(str(exc)) from None
    manifest = engine.db.manifest
    query = {"image_id": str(image_id), "label": str(manifest.at[row, "label"]), "source": str(manifest.at[row, "path"])}
    vector = engine.db.features[row:row + 1]
    if args.get("box"):
        box = parse_box(args["box"])
        path = Path(root) / str(manifest.at[row, "path"])
        full = display_size(path)
        if args.get("box_size"):
            try:
                full = tuple(int(v) for v in str(args["box_size"]).lower().split("x"))
                assert len(full) == 2 and min(full) > 0
            except (ValueError, AssertionError):
                raise CbirError(f"box_size={args['box_size']!r}: give WxH, the size of the image the box is on") from None
        image = decode_query(path, str(image_id), engine.max_pixels)
        vector = engine.embed(crop_box(image, box, full_size=full))
        query["box"] = list(box)
    return feedback_answer(engine, vector, None, query, relevant, irrelevant, settings, rounds)
