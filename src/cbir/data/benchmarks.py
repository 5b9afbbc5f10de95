"""The standard retrieval benchmarks: their sources (download or local copy, sha256 recorded or pinned) and
their curation into a manifest plus per-query relevance judgements (``judgements.json``).

Sources (``dataset.source``), each from ``dataset.folder`` (an extracted copy), else ``dataset.archive``
(one path or a list: tar/zip archives are extracted safely, other files such as a ``gnd_*.pkl`` are
copied), else ``dataset.urls`` (downloaded once into ``data/downloads/<name>/``):

* ``roxford5k`` / ``rparis6k``: the Oxford / Paris Buildings images and revisitop's ``gnd_<name>.pkl``
  (``imlist``, ``qimlist``, ``gnd``: per query ``bbx``, ``easy``, ``hard``, ``junk``). The database is
  ``imlist``; each query is its image cropped to ``bbx`` (``dataset.crop_queries``, as revisitop's
  ``python/example_process_images.py`` does with PIL's ``crop``), written to ``data/curated/<name>/queries/``.
* ``holidays``: ``<group><nn>.jpg`` (group = stem // 100); a group's first queries all, itself junk; holidays_map.py AP.
* ``ukbench``: ``ukbench<NNNNN>.jpg``: group = ``NNNNN // 4``; every image is a query; the query's own
  database row is junk for mAP and counts as one of the 4 for the N-S score.
* ``copydays``: the originals form the database; queries are every image of the ``jpeg``, ``crop`` and
  ``strong`` archives plus the originals themselves (family ``original``); reference = the original of the
  same 4-digit block.
* ``caltech101``: ``101_ObjectCategories/<class>/image_NNNN.jpg``; the class folders become the raw folder
  (``BACKGROUND_Google`` left out unless ``dataset.keep_background``), then curated as class-level data.
* ``neardup``: generated (:mod:`cbir.data.neardup`).

Every file's SHA-256 goes to ``_source.json``; ``dataset.sha256`` (file name -> hash) pins them.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from cbir.data.download import archive_kind, fetch_first, safe_extract
from cbir.data.images import IMAGE_EXTENSIONS, ImageError, decode_rgb
from cbir.data.local import copy_tree, display_name, existing_folder, scan_tree
from cbir.data.manifest import MANIFEST_COLUMNS
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, sha256_file, write_json
from cbir.settings import need

log = logging.getLogger("cbir")

JUDGEMENTS_FILE = "judgements.json"
#: sources curated here (manifest + judgements); caltech101 is fetched here and curated as class folders
CURATED_SOURCES = ("roxford5k", "rparis6k", "holidays", "ukbench", "copydays", "neardup")
FETCHED_SOURCES = ("roxford5k", "rparis6k", "holidays", "ukbench", "copydays", "caltech101")
ROTATIONS = ("as_distributed", "manually_rotated")
NESTED = (".tar.gz", ".tgz", ".tar")


# ---------------------------------------------------------------- fetch

def _as_list(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _pins(dataset_cfg: dict) -> dict:
    pins = dataset_cfg.get("sha256") or {}
    if isinstance(pins, str):
        raise CbirError("dataset.sha256 must map each file name to its sha256 "
                        "(e.g. dataset.sha256: {gnd_roxford5k.pkl: <64 hex digits>})")
    return {str(k): str(v).lower().strip() for k, v in dict(pins).items() if v}


def _unpack(file: Path, tmp: Path) -> None:
    """An archive into ``tmp/<its name without extension>/``; any other file copied into ``tmp``."""
    try:
        kind = archive_kind(file)
    except CbirError:
        kind = None
    if kind is None:
        shutil.copyfile(file, tmp / file.name)
        return
    stem = file.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    safe_extract(file, tmp / stem)
    for nested in sorted((tmp / stem).rglob("*")):  # caltech-101.zip holds 101_ObjectCategories.tar.gz
        if nested.is_file() and nested.name.endswith(NESTED):  # extracted beside itself, as `tar -xf` there
            safe_extract(nested, scratch := nested.parent / f".{nested.name}.x")
            nested.unlink()
            _merge(scratch, nested.parent)


def _merge(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst`` (an archive that holds a folder of the same name)."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)
        else:
            os.replace(entry, target)
    src.rmdir()


def _caltech_layout(tmp: Path, keep_background: bool) -> list[str]:
    """Move the class folders of ``101_ObjectCategories`` to the top of ``tmp``; return the left-out folders."""
    found = sorted(p for p in tmp.rglob("101_ObjectCategories") if p.is_dir())
    if not found:
        raise CbirError("no 101_ObjectCategories folder in the Caltech-101 download; give caltech-101.zip, "
                        "101_ObjectCategories.tar.gz or the extracted 101_ObjectCategories folder")
    stage = tmp.parent / f".{tmp.name}.classes"
    os.replace(found[0], stage)
    for entry in sorted(tmp.iterdir()):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    left_out = []
    for entry in sorted(stage.iterdir()):
        if entry.name == "BACKGROUND_Google" and not keep_background:
            left_out.append(entry.name)
            shutil.rmtree(entry)
            continue
        os.replace(entry, tmp / entry.name)
    stage.rmdir()
    return left_out


def fetch_benchmark(dataset_cfg: dict, raw_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict:
    """Fill ``raw_dir`` for a standard benchmark (see the module docstring); return the provenance."""
    source = dataset_cfg["source"]
    name = str(need(dataset_cfg, "name", "dataset"))
    raw_dir = Path(raw_dir)
    pins = _pins(dataset_cfg)
    folder, archives, urls = dataset_cfg.get("folder"), _as_list(dataset_cfg.get("archive")), \
        _as_list(dataset_cfg.get("urls"))
    provenance: dict = {"source": source, "name": name, "license": dataset_cfg.get("license")}
    if source == "holidays":
        rotated = need(dataset_cfg, "rotated", f"datasets.{name}")
        if rotated not in ROTATIONS:
            raise CbirError(f"datasets.{name}.rotated={rotated!r}; use one of {', '.join(ROTATIONS)}")
        if rotated == "manually_rotated" and not folder:
            raise CbirError(f"datasets.{name}.rotated=manually_rotated needs datasets.{name}.folder= pointing at your "
                            "local copy of the manually rotated Holidays images (no official download exists)")
        provenance["rotated"] = rotated
    how = (f"give a local copy with datasets.{name}.folder=/path/to/extracted or datasets.{name}.archive=[file, ...] "
           f"(the files of conf/dataset/{name}.yaml's urls)")
    with atomic_dir(raw_dir) as tmp:
        if folder:
            folder = existing_folder(folder, f"datasets.{name}.folder", how)
            scan = scan_tree(folder)
            provenance.update(folder=display_name(folder.name), bytes=copy_tree(folder, tmp, scan.files, scan),
                              n_files=len(scan.files))
        else:
            files = []
            if archives:
                for given in archives:
                    path = Path(given).expanduser()
                    if not path.is_file():
                        raise CbirError(f"datasets.{name}.archive entry {display_name(str(path))} is not a file; {how}")
                    files.append({"path": path, "name": path.name})
            elif urls:
                cache = Path(cache_dir) if cache_dir is not None else raw_dir.parent.parent / "downloads"
                for url in urls:
                    base = PurePosixPath(url.split("?")[0]).name or "download"
                    dest = cache / name / base
                    try:
                        _, observed = fetch_first([url], dest, pins.get(base))
                    except CbirError as exc:
                        raise CbirError(f"{name}: {exc}; {how}") from None
                    files.append({"path": dest, "name": base, "url": url})
            else:
                raise CbirError(f"{name}: no dataset.folder, dataset.archive or dataset.urls; {how}")
            records = []
            for entry in files:
                observed = sha256_file(entry["path"])
                pinned = pins.get(entry["name"])
                if pinned and observed != pinned:
                    raise CbirError(f"sha256 mismatch for {entry['name']}: expected {pinned}, got {observed}; use the "
                                    f"right file or update dataset.sha256.{entry['name']}")
                if not pinned:
                    log.warning("%s: no sha256 pinned for %s; observed %s (pin it with dataset.sha256.%s=%s)",
                                name, entry["name"], observed, entry["name"], observed)
                _unpack(entry["path"], tmp)
                records.append({"name": entry["name"], "sha256": observed, "sha256_pinned": bool(pinned),
                                **({"url": entry["url"]} if "url" in entry else {})})
            provenance["files"] = records
        if source == "caltech101":
            provenance["left_out"] = _caltech_layout(tmp, bool(need(dataset_cfg, "keep_background", "dataset")))
        provenance["n_files"] = sum(1 for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / "_source.json", provenance)
    return provenance


# ---------------------------------------------------------------- curate

def _images(raw_dir: Path) -> list[str]:

    return scan_tree(raw_dir, IMAGE_EXTENSIONS).files


def _by_stem(files: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in files:
        out.setdefault(PurePosixPath(rel).stem, rel)
    if not out:
        raise CbirError(f"no images found for {what}; check the download (dataset.folder / dataset.archive)")
    return out


class _Rows:
    """Manifest rows, decoded for real (width, height; undecodable files dropped with their reason)."""

    def __init__(self, root: Path, settings: dict):
        self.root, self.settings, self.rows, self.dropped = root, settings, [], []
        self.conversions: Counter = Counter()
        self._seen: dict[str, tuple] = {}

    def add(self, image_id: str, file: Path, label: str, split: str) -> bool:
        key = str(file)
        if key not in self._seen:
            try:
                decoded = decode_rgb(file, max_pixels=int(self.settings["max_pixels"]), min_side=1)
            except ImageError as exc:
                self._seen[key] = None
                self.dropped.append({"path": os.path.relpath(file, self.root), "reason": exc.reason,
                                     "detail": exc.detail, "image_id": image_id})
                return False
            self.conversions.update(decoded.conversions)
            w, h = decoded.image.size
            self._seen[key] = (int(w), int(h), sha256_file(file))
        if self._seen[key] is None:
            return False
        w, h, digest = self._seen[key]
        self.rows.append({"image_id": image_id, "path": Path(os.path.relpath(file, self.root)).as_posix(),
                          "label": str(label), "split": split, "width": w, "height": h, "sha256": digest,
                          "protocol": "holdout"})
        return True


def _revisitop(raw_dir: Path, name: str, dataset_cfg: dict, rows: _Rows, root: Path) -> dict:
    gnds = sorted(raw_dir.rglob(f"gnd_{name}.pkl"))
    if not gnds:
        raise CbirError(f"gnd_{name}.pkl not found in {raw_dir}; add it to dataset.archive (revisitop's "
                        f"http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl)")
    try:
        with open(gnds[0], "rb") as handle:
            cfg = pickle.load(handle)
        imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
        raise CbirError(f"{gnds[0].name} is not a revisitop ground-truth file (dict with imlist, qimlist, gnd): "
                        f"{type(exc).__name__}; download it again") from None
    if len(gnd) != len(qimlist):
        raise CbirError(f"{gnds[0].name}: {len(qimlist)} query names but {len(gnd)} gnd entries; download it again")
    stems = _by_stem(_images(raw_dir), name)
    missing = [im for im in imlist + qimlist if im not in stems]
    if missing:
        raise CbirError(f"{name}: {len(missing)} image(s) of gnd_{name}.pkl missing from the download "
                        f"(first: {missing[0]}.jpg); check dataset.archive / dataset.folder")
    landmark = lambda im: im.rsplit("_", 1)[0]  # noqa: E731
    kept = [rows.add(f"jpg/{im}", raw_dir / stems[im], landmark(im), "database") for im in imlist]
    crop = bool(need(dataset_cfg, "crop_queries", "dataset"))
    queries_dir = root / "data" / "curated" / name / "queries"
    entries = []
    with atomic_dir(queries_dir) as tmp:
        for qim, entry in zip(qimlist, gnd):
            src = raw_dir / stems[qim]
            if crop:
                with Image.open(src) as im:
                    cropped = im.convert("RGB").crop(tuple(float(v) for v in entry["bbx"]))
                cropped.save(tmp / f"{qim}.png", format="PNG")
    for qim, entry in zip(qimlist, gnd):
        file = queries_dir / f"{qim}.png" if crop else raw_dir / stems[qim]
        if not rows.add(f"query/{qim}", file, landmark(qim), "query"):
            continue
        ids = lambda key: [f"jpg/{imlist[int(i)]}"  # noqa: E731
                           for i in np.asarray(entry.get(key, []), dtype=np.int64).ravel() if kept[int(i)]]
        entries.append({"query_id": f"query/{qim}", "easy": ids("easy"), "hard": ids("hard"), "junk": ids("junk"),
                        "bbx": [float(v) for v in entry["bbx"]]})
    return {"kind": "revisitop", "ap": "trapezoidal", "crop_queries": crop, "queries": entries}


def _groups(raw_dir: Path, source: str, rows: _Rows) -> dict:
    stems = _by_stem(_images(raw_dir), source)
    if source == "holidays":
        numbered = {s: int(s) for s in stems if s.isdigit()}
        group_of = {s: f"{n // 100:04d}" for s, n in numbered.items()}
    else:
        numbered = {s: int(s[7:]) for s in stems if s.startswith("ukbench") and s[7:].isdigit()}
        group_of = {s: f"{n // 4:05d}" for s, n in numbered.items()}
    if not numbered:
        raise CbirError(f"no {source} images (e.g. {'100000.jpg' if source == 'holidays' else 'ukbench00000.jpg'}) "
                        f"in {raw_dir}; check dataset.folder / dataset.archive")
    order = sorted(numbered, key=lambda s: numbered[s])
    kept = {s for s in order if rows.add(f"db/{s}", raw_dir / stems[s], group_of[s], "database")}
    members: dict[str, list[str]] = {}
    for s in order:
        if s in kept:
            members.setdefault(group_of[s], []).append(s)
    queries = [m[0] for m in members.values()] if source == "holidays" else [s for s in order if s in kept]
    entries = []
    for s in queries:
        rows.add(f"query/{s}", raw_dir / stems[s], group_of[s], "query")
        entries.append({"query_id": f"query/{s}", "positives": [f"db/{o}" for o in members[group_of[s]] if o != s],
                        "junk": [f"db/{s}"]})
    ap = "non-interpolated" if source == "ukbench" else "trapezoidal"  # Holidays: holidays_map.py's AP
    return {"kind": "ukbench" if source == "ukbench" else "groups", "ap": ap, "queries": entries}


def _copydays_family(rel: str) -> tuple[str, str]:
    parts = [p.lower() for p in PurePosixPath(rel).parts[:-1]]
    for i, part in enumerate(parts):
        for family, names in (("jpeg", ("jpegqual", "jpeg")), ("crop", ("crops", "crop")), ("strong", ("strong",))):
            if part in names or part.endswith(tuple(f"_{n}" for n in names)):
                level = next((p for p in parts[i + 1:] if p.isdigit()), "")
                return family, level
    return "original", ""


def _copydays(raw_dir: Path, rows: _Rows) -> dict:
    files = _images(raw_dir)
    originals, queries = {}, []
    for rel in files:
        family, level = _copydays_family(rel)
        stem = PurePosixPath(rel).stem
        if len(stem) < 4 or not stem[:4].isdigit():
            continue
        if family == "original":
            originals.setdefault(stem[:4], rel)
        queries.append((family, level, rel))
    if not originals:
        raise CbirError(f"no Copydays originals (e.g. original/200000.jpg) in {raw_dir}; add copydays_original.tar.gz")
    kept = {b for b, rel in sorted(originals.items()) if rows.add(f"original/{b}", raw_dir / rel, b, "database")}
    entries = []
    for family, level, rel in sorted(queries, key=lambda q: q[2]):
        block = PurePosixPath(rel).stem[:4]
        qid = "query/" + PurePosixPath(rel).with_suffix("").as_posix()
        if rows.add(qid, raw_dir / rel, family, "query"):
            entries.append({"query_id": qid, "positives": [f"original/{block}"] if block in kept else [],
                            "junk": [], "family": family, "level": level})
    return {"kind": "pairs", "ap": "non-interpolated", "queries": entries}


def _neardup(raw_dir: Path, rows: _Rows) -> dict:
    truth = raw_dir / "ground_truth.csv"
    if not truth.is_file():
        raise CbirError(f"{truth} not found; run the download stage again (dataset=neardup generates it)")
    db = sorted(p for p in (raw_dir / "database").iterdir() if p.suffix == ".png")
    kept = {p.stem for p in db if rows.add(f"database/{p.stem}", p,
                                           "reference" if p.stem.startswith("o") else "distractor", "database")}
    entries = []
    with open(truth, newline="", encoding="utf-8") as handle:
        for rec in csv.DictReader(handle):
            file = next((raw_dir / "queries" / f"{rec['query_id']}{ext}" for ext in (".png", ".jpg")
                         if (raw_dir / "queries" / f"{rec['query_id']}{ext}").is_file()), None)
            if file is None or not rows.add(f"queries/{rec['query_id']}", file, rec["family"], "query"):
                continue
            ref = rec["reference_id"]
            entries.append({"query_id": f"queries/{rec['query_id']}",
                            "positives": [f"database/{ref}"] if ref and ref in kept else [], "junk": [],
                            "family": rec["family"]})
    return {"kind": "pairs", "ap": "non-interpolated", "queries": entries}


def curate_benchmark(raw_dir: Path, dataset_cfg: dict, settings: dict, root: Path) -> tuple[pd.DataFrame, dict]:
    """The manifest (sorted by ``image_id``) and curation report of a benchmark; the report's ``judgements``
    entry is what the curate stage writes to ``judgements.json`` beside the manifest."""
    source = dataset_cfg["source"]
    name = str(need(dataset_cfg, "name", "dataset"))
    rows = _Rows(root, settings)
    if source in ("roxford5k", "rparis6k"):
        judgements = _revisitop(raw_dir, source, dataset_cfg, rows, root)
    elif source in ("holidays", "ukbench"):
        judgements = _groups(raw_dir, source, rows)
    elif source == "copydays":
        judgements = _copydays(raw_dir, rows)
    else:
        judgements = _neardup(raw_dir, rows)
    if not rows.rows or not judgements["queries"]:
        raise CbirError(f"curation of {raw_dir} kept no query or no database image; check the download")
    manifest = pd.DataFrame(rows.rows, columns=MANIFEST_COLUMNS).sort_values("image_id", kind="stable")
    manifest = manifest.drop_duplicates("image_id").reset_index(drop=True)
    judgements = {"benchmark": source, **judgements}
    n_q = int((manifest["split"] == "query").sum())
    classes = {str(label): {"images": int(len(g)), "query": int((g["split"] == "query").sum()),
                            "database": int((g["split"] == "database").sum())}
               for label, g in manifest.groupby("label", sort=True)}
    report = {"dataset": name, "source": source, "raw_dir": Path(os.path.relpath(raw_dir, root)).as_posix(),
              "settings": settings, "n_candidates": len(rows.rows) + len(rows.dropped), "n_kept": int(len(manifest)),
              "n_dropped": len(rows.dropped),
              "drop_counts": dict(sorted(Counter(d["reason"] for d in rows.dropped).items())),
              "conversions": dict(sorted(rows.conversions.items())), "classes": classes, "classes_dropped": {},
              "split": {"protocol": f"benchmark:{source}", "manifest_protocol": "holdout", "n_query": n_q,
                        "n_database": int(len(manifest)) - n_q},
              "dropped": sorted(rows.dropped, key=lambda d: (d["reason"], d["path"])),
              "judgements": judgements}
    log.info("curated %s: %d database images, %d queries (%s judgements)", name, len(manifest) - n_q, n_q,
             judgements["kind"])
    return manifest, report
