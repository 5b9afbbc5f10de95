"""An offline near-duplicate (copy detection) benchmark generated from the Tux Paint stamps.

``fetch_neardup(dataset_cfg, raw_dir)`` writes, deterministically (byte for byte for one seed, one
stamps tree and one Pillow build):

* ``database/<id>.png``: ``n_originals`` stamps (the references) and ``n_distractors`` other stamps,
  each composited on white and scaled to at most ``size`` px;
* ``queries/<qid>.png`` (``.jpg`` where the transformation includes JPEG): ``n_queries`` seeded
  transformations, spread evenly over :data:`FAMILIES`; ``n_absent`` of them are made from stamps that
  are *not* in the database (their reference is empty, as DISC21's queries without a match);
* ``ground_truth.csv``: ``query_id, reference_id, family, params`` (``reference_id`` empty when absent).

Stamps are drawn from the sorted list of raster stamps (``*_mirror`` / ``*_flip`` left out) with
``numpy.random.default_rng(seed)``; query ``i`` uses ``default_rng([seed, i])``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from cbir.data.local import TUXPAINT_PACKAGE, debian_version
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, write_json
from cbir.settings import need

log = logging.getLogger("cbir")

#: the transformation families, in the order queries are assigned to them
FAMILIES = ("crop", "rescale", "rotate", "jpeg", "color", "blur", "overlay_text", "overlay_stamp", "flip",
            "combo")
#: what a ``combo`` query chains (two or three of them, seeded)
COMBO_PARTS = ("crop", "rotate", "jpeg", "color", "blur", "overlay_text", "flip")
#: the generator's settings, each read from ``dataset`` (conf/dataset/neardup.yaml sets them)
SETTINGS = ("n_originals", "n_distractors", "n_queries", "n_absent", "size", "seed")
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",)
WORDS = ("COPY", "SAMPLE", "2024", "meme", "LOL", "hello", "@user", "SALE")


def _stamp_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() == ".png" and not stem.endswith(("_mirror", "_flip")) and not name.startswith("."):
                files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_stamp(path: Path, size: int) -> Image.Image:
    """A stamp as RGB on white, scaled so that its longer side is at most ``size``."""
    with Image.open(path) as im:
        im.load()
        rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(background, rgba).convert("RGB")
    scale = min(1.0, size / max(rgb.size))
    if scale < 1.0:
        rgb = rgb.resize((max(8, round(rgb.width * scale)), max(8, round(rgb.height * scale))), Image.BICUBIC)
    return rgb


def _font(px: int):
    for candidate in FONT_CANDIDATES:
        if os.path.isfile(candidate):
            return ImageFont.truetype(candidate, px)
    return ImageFont.load_default()


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def transform(im: Image.Image, family: str, rng: np.random.Generator, overlay: Image.Image | None) -> tuple[
        Image.Image, dict]:
    """One seeded transformation of ``family``; returns the image and its parameters."""
    w, h = im.size
    if family == "crop":
        frac = float(rng.uniform(0.3, 0.8))  # the kept fraction of the area
        side = np.sqrt(frac)
        cw, ch = max(8, int(w * side)), max(8, int(h * side))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return im.crop((x, y, x + cw, y + ch)), {"area": round(frac, 3)}
    if family == "rescale":
        factor = float(rng.choice([rng.uniform(0.4, 0.8), rng.uniform(1.25, 2.0)]))
        return im.resize((max(8, round(w * factor)), max(8, round(h * factor))), Image.BILINEAR), \
            {"factor": round(factor, 3)}
    if family == "rotate":
        angle = float(rng.choice([-1, 1]) * rng.uniform(10, 90))
        return im.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=(255, 255, 255)), \
            {"angle": round(angle, 1)}
    if family == "jpeg":
        quality = int(rng.integers(20, 76))
        return _jpeg(im, quality), {"quality": quality}
    if family == "color":
        b, c, s = (float(rng.uniform(0.6, 1.4)) for _ in range(3))
        out = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(b)).enhance(c)).enhance(s)
        return out, {"brightness": round(b, 2), "contrast": round(c, 2), "saturation": round(s, 2)}
    if family == "blur":
        radius = float(rng.uniform(1.0, 3.0))
        return im.filter(ImageFilter.GaussianBlur(radius)), {"radius": round(radius, 2)}
    if family == "overlay_text":
        out = im.copy()
        draw = ImageDraw.Draw(out)
        word = str(rng.choice(WORDS))
        px = max(10, int(h * rng.uniform(0.12, 0.25)))
        x, y = int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - px)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.text((x, y), word, fill=colour, font=_font(px))
        return out, {"text": word, "px": px}
    if family == "overlay_stamp":
        out = im.copy()
        if overlay is not None:
            scale = float(rng.uniform(0.2, 0.4))
            ov = overlay.resize((max(4, int(w * scale)), max(4, int(overlay.height * w * scale / overlay.width))),
                                Image.BILINEAR)
            x, y = int(rng.integers(0, max(1, w - ov.width))), int(rng.integers(0, max(1, h - ov.height)))
            out.paste(ov, (x, y))
            return out, {"scale": round(scale, 2)}
        return out, {}
    if family == "flip":
        if rng.random() < 0.5:
            return ImageOps.mirror(im), {"axis": "horizontal"}
        return ImageOps.flip(im), {"axis": "vertical"}
    raise CbirError(f"unknown near-duplicate transformation {family!r}; use one of {', '.join(FAMILIES)}")


def make_query(im: Image.Image, family: str, rng: np.random.Generator, overlay: Image.Image | None) -> tuple[
        Image.Image, dict, bool]:
    """The query image of ``family`` (``combo``: two or three parts chained), its parameters, and whether it
    is to be stored as JPEG."""
    if family != "combo":
        out, params = transform(im, family, rng, overlay)
        return out, params, family == "jpeg"
    n = int(rng.integers(2, 4))
    parts = [str(p) for p in rng.choice(COMBO_PARTS, size=n, replace=False)]
    # JPEG last, so the saved file is that JPEG
    parts.sort(key=lambda p: p == "jpeg")
    steps, out, jpeg = [], im, False
    for part in parts:
        out, params = transform(out, part, rng, overlay)
        steps.append({"family": part, **params})
        jpeg = part == "jpeg"
    return out, {"steps": steps}, jpeg


def settings(dataset_cfg: dict) -> dict:
    cfg = {k: int(need(dataset_cfg, k, "dataset")) for k in SETTINGS}
    if cfg["n_absent"] > cfg["n_queries"]:
        raise CbirError(f"dataset.n_absent={cfg['n_absent']} exceeds dataset.n_queries={cfg['n_queries']}")
    if min(cfg["n_originals"], cfg["n_queries"], cfg["size"]) < 1 or min(cfg["n_distractors"], cfg["n_absent"]) < 0:
        raise CbirError("dataset.n_originals, n_queries and size must be >= 1, n_distractors and n_absent >= 0")
    return cfg


def fetch_neardup(dataset_cfg: dict, raw_dir: str | os.PathLike) -> dict:
    """Generate the benchmark into ``raw_dir`` (see the module docstring); return the provenance."""

    cfg = settings(dataset_cfg)
    name = need(dataset_cfg, "name", "dataset")
    root = Path(str(need(dataset_cfg, "root", "dataset")))
    if not root.is_dir():
        raise CbirError(f"Tux Paint stamps not found at {root}: install the Debian package {TUXPAINT_PACKAGE} or "
                        "set dataset.root= to a copy of the stamps folder")
    files = _stamp_files(root)
    n_absent_stamps = min(cfg["n_absent"], max(1, cfg["n_absent"] // 2)) if cfg["n_absent"] else 0
    needed = cfg["n_originals"] + cfg["n_distractors"] + n_absent_stamps + 1
    if len(files) < needed:
        raise CbirError(f"neardup needs {needed} raster stamps under {root} but found {len(files)}; lower "
                        "dataset.n_originals / n_distractors / n_absent")
    rng = np.random.default_rng(cfg["seed"])
    picked = [files[i] for i in rng.permutation(len(files))[:needed]]
    originals = picked[:cfg["n_originals"]]
    distractors = picked[cfg["n_originals"]:cfg["n_originals"] + cfg["n_distractors"]]
    absent = picked[cfg["n_originals"] + cfg["n_distractors"]:needed - 1]
    overlay = load_stamp(picked[-1], cfg["size"])
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    with atomic_dir(raw_dir) as tmp:
        (tmp / "database").mkdir()
        (tmp / "queries").mkdir()
        images = {}
        for kind, group in (("o", originals), ("d", distractors), ("a", absent)):
            for i, path in enumerate(group):
                image_id = f"{kind}{i:04d}"
                images[image_id] = load_stamp(path, cfg["size"])
                if kind != "a":
                    images[image_id].save(tmp / "database" / f"{image_id}.png", format="PNG")
        rows = []
        present = [f"o{i:04d}" for i in range(len(originals))]
        gone = [f"a{i:04d}" for i in range(len(absent))]
        for q in range(cfg["n_queries"]):
            family = FAMILIES[q % len(FAMILIES)]
            qrng = np.random.default_rng([cfg["seed"], q])
            is_absent = q >= cfg["n_queries"] - cfg["n_absent"]
            source = gone[q % len(gone)] if is_absent else present[int(qrng.integers(len(present)))]
            out, params, jpeg = make_query(images[source], family, qrng, overlay)
            qid = f"q{q:04d}"
            if jpeg:
                out.save(tmp / "queries" / f"{qid}.jpg", format="JPEG", quality=95)
            else:
                out.convert("RGB").save(tmp / "queries" / f"{qid}.png", format="PNG")
            rows.append({"query_id": qid, "reference_id": "" if is_absent else source, "family": family,
                         "params": json.dumps(params, sort_keys=True)})
        with open(tmp / "ground_truth.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["query_id", "reference_id", "family", "params"],
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        provenance = {"source": "neardup", "name": name, "root": str(root),
                      "debian_package": TUXPAINT_PACKAGE, "package_version": debian_version(TUXPAINT_PACKAGE),
                      "license": "GPL-2.0 (the Tux Paint stamps)", **cfg, "families": list(FAMILIES),
                      "stamps": {"originals": [rel(p) for p in originals],
                                 "distractors": [rel(p) for p in distractors],
                                 "absent": [rel(p) for p in absent], "overlay": rel(picked[-1])}}
        files = [p for p in tmp.rglob("*") if p.is_file()]
        provenance.update(n_files=len(files), bytes=sum(p.stat().st_size for p in files))
        write_json(tmp / "_source.json", provenance)
    log.info("neardup: %d database images, %d queries (%d without a reference) in %s",
             len(originals) + len(distractors), cfg["n_queries"], cfg["n_absent"], raw_dir)
    return provenance
