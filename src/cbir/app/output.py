"""What ``cbir query`` prints and saves: a ranked table, JSON, and the paper's sample-trial figure."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from cbir.app.decode import check_shape
from cbir.app.engine import (
    QueryEngine,
    default_method,
    load_database,
    open_query_image,
    query_settings,
)
from cbir.app.feedback import crop_box, display_size, feedback_answer, feedback_marks, parse_box
from cbir.data.images import ImageError
from cbir.errors import CbirError
from cbir.figures.style import save_figure
from cbir.figures.thumbnails import thumbnail
from cbir.figures.trials import sample_trials_figure
from cbir.fileio import atomic_path, sha256_file
from cbir.search.feedback import FeedbackSettings

log = logging.getLogger("cbir")

#: file endings ``cbir query DIR`` picks up in a folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: columns of ``cbir query ... --out results.csv``: one row per query and rank
RESULT_COLUMNS = ("query", "query_image_id", "rank", "image_id", "label", "score", "relevant", "path")
BATCH = 16
#: what ``--out`` writes (by the file's ending) and the names ``--figure`` takes (it writes both PNG and PDF)
OUT_SUFFIXES = (".csv", ".json")
FIGURE_SUFFIXES = (".png", ".pdf")


#: the largest --k accepted (retrieval.k's own bound in the schema)
MAX_K = 100_000


def mark_lists(values) -> list[str]:
    """Image ids of repeated ``--relevant`` / ``--irrelevant`` values (``"a,b"`` each), in order, once each."""
    if isinstance(values, str):
        values = [values]
    return list(dict.fromkeys(i.strip() for v in values or () for i in str(v).split(",") if i.strip()))


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
    if q.get("box"):
        title += f"; region {','.join(map(str, q['box']))}"
    fb = answer.get("feedback")
    if fb:
        header = header[:3] + ("score",) + header[4:]
        title += (f"\nfeedback round {fb['round']}: {fb['method']} ({len(fb['relevant'])} relevant, "
                  f"{len(fb['irrelevant'])} irrelevant marked; marked images left out)"
                  + (f"; {fb['note']}" if fb.get("note") else ""))
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def answer_json(answers: dict | list[dict]) -> str:
    """JSON Lines: one compact line per query (so ``| head -1`` is the first query's whole answer)."""
    return "\n".join(json.dumps(a) for a in (answers if isinstance(answers, list) else [answers]))


def check_target(option: str, target: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """``target`` of ``--out`` / ``--figure``, refused in one line unless it ends in one of ``suffixes`` and its
    folder exists (nothing is created but the file itself)."""
    target = Path(target)
    if target.suffix.lower() not in suffixes:
        raise CbirError(f"{option} {target}: give a {' or '.join(suffixes)} file ({what})")
    if target.parent.exists() and not target.parent.is_dir():
        raise CbirError(f"{option} {target}: {target.parent} is a file, not a folder: pick a folder")
    if not target.parent.is_dir():
        raise CbirError(f"{option} {target}: the folder {target.parent} does not exist: create it, or pick an "
                        "existing folder")
    return target


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


def expand_queries(items: list[str | os.PathLike]) -> list[Path]:
    """Query image paths from files, folders (their image files, sorted) and glob patterns, in order;
    a name that matches nothing is one clear error."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CbirError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif path.exists() or not glob.has_magic(str(item)):
            paths.append(path)
        else:
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                raise CbirError(f"pattern {item!r} matches no file: give image files, a folder or a glob")
            paths += found
    if not paths:
        raise CbirError("no query image given: give image files, a folder or a glob")
    return list(dict.fromkeys(paths))


def results_frame(answers: list[dict]) -> pd.DataFrame:
    """One row per query and rank (:data:`RESULT_COLUMNS`)."""
    rows = [{"query": a["query"]["source"], "query_image_id": a["query"]["image_id"], **r}
            for a in answers for r in a["results"]]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def write_failed(option: str, target: Path, exc: OSError) -> CbirError:
    """One line for a write that failed (a read-only folder, a full disk, ...): nothing was left behind."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return CbirError(f"cannot write {option} {target}: {reason}; nothing was written: pick a writable folder "
                     "with free space")


def write_results(answers: list[dict], out: Path) -> Path:
    """``--out``: CSV (one row per query and rank) or JSON (the answers) by the file's ending, atomically
    (a failed write leaves no file, and an older ``out`` as it was)."""
    out = check_target("--out", out, OUT_SUFFIXES, "CSV rows or the JSON answers")
    try:
        with atomic_path(out) as tmp:
            if out.suffix.lower() == ".csv":
                results_frame(answers).to_csv(tmp, index=False)
            else:
                tmp.write_text(json.dumps(answers, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise write_failed("--out", out, exc) from None
    return out


def write_query_figure(answer: dict, image: Image.Image, root: Path, target: Path) -> list[Path]:
    """``--figure``: :func:`save_query_figure`'s PNG and PDF (``target`` with each suffix), both written into a
    temporary folder beside ``target`` and then renamed into place, so a failed write (read-only folder, full
    disk) leaves neither."""
    target = check_target("--figure", target, FIGURE_SUFFIXES, "the figure is saved as PNG and PDF")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise write_failed("--figure", target, exc) from None
    try:
        written = save_query_figure(answer, image, root, staging / target.name)
        final = [target.with_suffix(path.suffix) for path in written]
        for path, dest in zip(written, final):
            os.replace(path, dest)
        return final
    except OSError as exc:
        raise write_failed("--figure", target, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _batch_answers(engine: QueryEngine, paths: list[Path], k: int, exclude_self: bool, max_pixels: int,
                   quiet: bool) -> list[dict]:
    """Decode, embed (in batches) and rank every query; an undecodable image is skipped with a warning."""
    answers: list[dict] = []
    chunk: list[tuple[Image.Image, str, str]] = []

    def flush():
        images, sources, digests = zip(*chunk)
        answers.extend(engine.query_images(list(images), list(sources), list(digests), k, exclude_self))
        chunk.clear()

    for path in tqdm(paths, desc=f"query {engine.method}", unit="img", disable=quiet or None, leave=False):
        try:
            chunk.append((open_query_image(path, max_pixels, engine.resize_side), str(path), sha256_file(path)))
        except (ImageError, CbirError) as exc:
            log.warning("skipped %s", exc)
            continue
        if len(chunk) >= BATCH:
            flush()
    if chunk:
        flush()
    if not answers:
        raise CbirError(f"none of the {len(paths)} query images could be read: see the warnings above")
    return answers


def run_query(params: dict, root: Path, image, method: str | None = None, k: int | None = None,
              figure: str | os.PathLike | None = None, as_json: bool = False, out: str | os.PathLike | None = None,
              exclude_self: bool = False, quiet: bool = False, relevant=(), irrelevant=(),
              feedback: str | None = None, box: str | None = None) -> dict | list[dict]:
    """``cbir query``: check the inputs (cheap) before loading the model, then print or save the ranking.

    ``image`` is one path or a list of files, folders and globs; several queries are ranked in
    batches with a progress bar (``quiet`` hides it) and, with ``out``, saved as CSV or JSON.
    ``exclude_self`` drops each query's own database entry (matched by file or pixel hash).
    ``relevant`` / ``irrelevant`` (one ``"ID,ID"`` string per round) re-rank one query with relevance
    feedback (``feedback``: rocchio | svm), and ``box`` (``"x0,y0,x1,y1"``) queries a region of it.
    """
    root = Path(root)
    method = method or default_method(params)
    settings = query_settings(params)
    k = int(k if k is not None else settings["k"])
    if not 1 <= k <= MAX_K:
        raise CbirError(f"--k must be from 1 to {MAX_K}, got {k}: the ranking is cut to the database anyway")
    if out is not None:
        check_target("--out", Path(out), OUT_SUFFIXES, "CSV rows or the JSON answers")
    if figure is not None:
        check_target("--figure", Path(figure), FIGURE_SUFFIXES, "the figure is saved as PNG and PDF")
    paths = expand_queries(list(image) if isinstance(image, (list, tuple)) else [image])
    if len(paths) > 1 and figure is not None:
        raise CbirError("--figure draws one query: give a single image")
    rel_ids, irr_ids, rounds = mark_lists(relevant), mark_lists(irrelevant), max(len(relevant), len(irrelevant))
    region = parse_box(box) if box is not None else None
    if len(paths) > 1 and (rounds or region):
        raise CbirError("--relevant, --irrelevant and --box refine one query: give a single image")
    fb_settings = FeedbackSettings.from_config(params.get("feedback") or {}, feedback)
    db = load_database(params, method, root)
    if len(paths) > 1:
        engine = QueryEngine.from_params(params, method, root, db=db)
        answers = _batch_answers(engine, paths, k, exclude_self, settings["max_pixels"], quiet)
        if out is not None:
            print(f"{len(answers)} queries x top-{k} ({method}) written to {write_results(answers, Path(out))}")
        else:
            print(answer_json(answers) if as_json else "\n\n".join(format_table(a) for a in answers))
        return answers
    start = time.perf_counter()
    decoded = open_query_image(paths[0], settings["max_pixels"])  # a bad image fails before the model loads
    if region is not None:
        decoded = crop_box(decoded, region, display_size(paths[0]))
    if rounds:
        feedback_marks(db, rel_ids, irr_ids)  # an unknown id fails before the model loads
    decode_ms = (time.perf_counter() - start) * 1e3
    engine = QueryEngine.from_params(params, method, root, db=db)
    check_shape(str(paths[0]), decoded.size, settings["max_pixels"], engine.resize_side)  # the method's resize
    digest = sha256_file(paths[0])
    described = engine.describe_query(digest, str(paths[0]))
    if region is not None:
        described["box"] = list(region)
    if rounds:
        vector = engine.embed(decoded)
        exclude = engine.own_entry(decoded, vector, digest) if exclude_self else -1
        answer = feedback_answer(engine, vector, k, described, rel_ids, irr_ids, fb_settings, rounds, exclude)
    else:
        answer = engine.query_image(decoded, k, described, exclude_self, digest)
    answer["timings_ms"] = {"decode": round(decode_ms, 3), **answer["timings_ms"]}
    if figure is not None:
        written = write_query_figure(answer, decoded, root, Path(figure))
        answer["figure"] = [str(p) for p in written]
    if out is not None:
        write_results([answer], Path(out))
    print(answer_json(answer) if as_json else format_table(answer))
    if figure is not None and not as_json:
        print("figure: " + ", ".join(answer["figure"]))
    return answer
