"""What ``cbir query`` prints and saves: a ranked table, JSON, and the paper's sample-trial figure."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cbir.app.engine import (
    QueryEngine,
    default_method,
    load_database,
    open_query_image,
    query_settings,
)
from cbir.errors import CbirError
from cbir.figures.style import save_figure
from cbir.figures.thumbnails import thumbnail
from cbir.figures.trials import sample_trials_figure
from cbir.fileio import sha256_file


def format_table(answer: dict) -> str:
    """A ranked text table: rank, image id, label, cosine similarity, path."""
    header = ("rank", "image_id", "label", "cosine", "path")
    rows = [(str(r["rank"]), r["image_id"], r["label"], f"{r['score']:.4f}", r["path"]) for r in answer["results"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = (True, False, False, True, False)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    q = answer["query"]
    known = f"{q['image_id']} (label {q['label']})" if q.get("image_id") else "not in the dataset"
    title = f"query {q.get('source')}: {known}; method {answer['method']}, top-{answer['k']} by cosine similarity"
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def answer_json(answer: dict) -> str:
    return json.dumps(answer, indent=2)


def save_query_figure(answer: dict, image: Image.Image, root: Path, target: Path,
                      thumb_size: int = 128) -> list[Path]:
    """The paper's sample-trial figure for one query (PNG + PDF beside it)."""

    query_image = ImageOps.pad(image.convert("RGB"), (thumb_size, thumb_size), color=(255, 255, 255))
    q = answer["query"]
    trial = {"query": {"image": np.asarray(query_image), "label": q.get("label") or "(not in dataset)",
                       "image_id": q.get("image_id")},
             "results": [{**r, "relevant": bool(r["relevant"]),
                          "image": thumbnail(Path(root) / r["path"], thumb_size)} for r in answer["results"]]}
    colour = " (green: same class)" if q.get("label") else ""
    fig = sample_trials_figure([trial], thumb_size=thumb_size,
                               title=f"{answer['method']}: cosine top-{answer['k']}{colour}")
    if not q.get("label"):  # relevance is unknown: neutral frames instead of red "irrelevant" ones
        for ax in fig.axes[1:]:
            for spine in ax.spines.values():
                spine.set_color("#777777")
            ax.title.set_color("#222222")
    return save_figure(fig, Path(target))


def run_query(params: dict, root: Path, image: str | os.PathLike, method: str | None = None, k: int | None = None,
              figure: str | os.PathLike | None = None, as_json: bool = False) -> dict:
    """``cbir query``: check the inputs (cheap) before loading the model, then print the ranking."""
    root = Path(root)
    method = method or default_method(params)
    settings = query_settings(params)
    k = int(k if k is not None else settings["k"])
    if k < 1:
        raise CbirError(f"--k must be at least 1, got {k}")
    db = load_database(params, method, root)
    start = time.perf_counter()
    decoded = open_query_image(image, settings["max_pixels"])  # a bad image fails before the model loads
    decode_ms = (time.perf_counter() - start) * 1e3
    engine = QueryEngine.from_params(params, method, root, db=db)
    answer = engine.query_image(decoded, k, engine.describe_query(sha256_file(image), str(image)))
    answer["timings_ms"] = {"decode": round(decode_ms, 3), **answer["timings_ms"]}
    if figure is not None:
        written = save_query_figure(answer, decoded, root, Path(figure))
        answer["figure"] = [str(p) for p in written]
    print(answer_json(answer) if as_json else format_table(answer))
    if figure is not None and not as_json:
        print("figure: " + ", ".join(answer["figure"]))
    return answer
