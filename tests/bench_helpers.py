"""Helpers of the benchmark tests: params composed from conf/ for one benchmark with a cheap handcrafted
method, the stages run in order in a temporary root, and tiny archives in each benchmark's real layout."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cbir.config import compose_yaml, select_dataset
from cbir.scoring import metric_files
from cbir.search import rankings
from cbir.stages import curate, download, extract
from cbir.features.handcrafted import descriptor_node

REPO = Path(__file__).resolve().parents[1]
METHOD = {"kind": "handcrafted", "descriptor": descriptor_node("color_moments", {})}


def bench_params(dataset: str, *overrides: str) -> dict:
    """``experiment=<dataset>``'s params with one cheap handcrafted method and small bootstraps."""
    overrides = [f"datasets.{dataset}." + o.removeprefix("dataset.") if o.startswith("dataset.") else o
                 for o in overrides]  # the dataset's own keys sit under datasets.<name>
    params = select_dataset(yaml.safe_load(compose_yaml(REPO / "conf", [f"experiment={dataset}", *overrides])),
                            dataset)
    params["methods"] = {"color_moments": dict(METHOD)}
    params["backbones"] = {}
    params["evaluation"].update(n_bootstrap=50, n_permutations=50, baseline=None)
    params["retrieval"]["index"] = "exact"
    params.setdefault("extract", {})["num_workers"] = 0
    return params


def run_stages(params: dict, root: Path) -> dict:
    """download -> curate -> extract -> each method's rankings and metrics, combined, in ``root``; returns
    reports/<ds>/metrics.json."""
    import json

    download.run(params, root)
    curate.run(params, root)
    extract.run(params, root)
    for method in params["methods"]:
        rankings.run(params, method, root)
    metric_files.run(params, root)
    name = params["dataset"]["name"]
    return json.loads((root / "reports" / name / "metrics.json").read_text())


def jpeg_bytes(seed: int, size=(48, 40), base: np.ndarray | None = None) -> bytes:
    """A small seeded JPEG (``base`` + noise when given: a near copy)."""
    rng = np.random.default_rng(seed)
    if base is None:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    else:
        pixels = np.clip(base.astype(int) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def colour_image(colour, size=(48, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = colour
    return np.clip(pixels.astype(int) + rng.integers(-6, 7, pixels.shape), 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 0
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(members):
            zf.writestr(name, members[name])
    return path


PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def revisitop_archives(folder: Path, name: str = "roxford5k") -> list[Path]:
    """Oxford: one flat tgz; Paris: two tgz with ``paris/<landmark>/paris_<landmark>_NNNNNN.jpg``."""
    if name == "rparis6k":
        return _paris(folder)
    return _oxford(folder, name)


def _gnd(imlist: list[str], qimlist: list[str], folder: Path, name: str) -> Path:
    gnd = []
    for li in range(3):
        base = li * 4
        gnd.append({"bbx": [4.0, 4.0, 40.5, 30.2], "easy": [base + 1], "hard": [base + 2], "junk": [base + 3]})
    gnd_file = folder / f"gnd_{name}.pkl"
    with open(gnd_file, "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    return gnd_file


def _paris(folder: Path) -> list[Path]:
    imlist, parts = [], [{}, {}]
    for li, landmark in enumerate(("defense", "eiffel", "louvre")):
        for j in range(4):
            stem = f"paris_{landmark}_{j:06d}"
            imlist.append(stem)
            parts[li % 2][f"paris/{landmark}/{stem}.jpg"] = encode(colour_image(PALETTE[li], seed=li * 10 + j))
    archives = [write_tar(folder / f"paris_{i + 1}-v1.tgz", members) for i, members in enumerate(parts)]
    qimlist = [imlist[0], imlist[4], imlist[8]]
    return archives + [_gnd(imlist, qimlist, folder, "rparis6k")]


def _oxford(folder: Path, name: str) -> list[Path]:
    """A 12-image Oxford-style tgz (flat ``*.jpg``) and a ``gnd_<name>.pkl`` in revisitop's format with 3 queries.

    Landmark ``a`` images are red, ``b`` green, ``c`` blue; query q (of landmark a, b, c) lists its own
    landmark's other images as easy (the first) and hard (the second), junk the third."""
    imlist, members = [], {}
    for li, landmark in enumerate("abc"):
        for j in range(4):
            stem = f"{landmark}_{j:06d}"
            imlist.append(stem)
            members[f"{stem}.jpg"] = encode(colour_image(PALETTE[li], seed=li * 10 + j))
    qimlist = ["a_000000", "b_000000", "c_000000"]
    archive = write_tar(folder / "oxbuild_images-v1.tgz", members)
    return [archive, _gnd(imlist, qimlist, folder, name)]
