"""int8 trunks: NNCF post-training quantisation of the OpenVINO conversion, calibrated on database images.

``extract.precision=int8`` is opt-in, never the default.  The calibration set is a seeded subset of
the manifest's *database* rows, never its queries: ``extract.calibration.size`` images drawn with
``extract.calibration.seed``, kept in manifest order.  Its digest is the sha256 of the rows' ids and
content hashes, in order.  It enters the cache key of the quantised model (with the fp32 conversion's
key, NNCF's version and this module's code) and the features ``.json``, so the extract stage and the
query path run the same int8 model.  NNCF's default post-training quantisation (min-max ranges, fast
bias correction) on a fixed calibration set is deterministic: two quantisations give the same bytes
(tested).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.data.images import ImageError, open_rgb
from cbir.errors import CbirError
from cbir.features.cnn.preprocess import imagenet_input
from cbir.fileio import sha256_bytes, sha256_file

log = logging.getLogger("cbir")


@dataclass(frozen=True)
class Calibration:
    """The images an int8 trunk is calibrated on: their paths, in order, and what identifies them."""

    paths: tuple[Path, ...]
    seed: int
    sha256: str

    def provenance(self) -> dict:
        """What the features ``.json`` records of the calibration."""
        return {"calibration": {"size": len(self.paths), "seed": self.seed, "split": "database",
                                "sha256": self.sha256}}


def calibration_rows(manifest: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """``size`` database rows of ``manifest`` drawn with ``seed`` (all of them when there are fewer), in
    manifest order; query rows are never drawn."""
    database = manifest[manifest["split"] == "database"]
    if database.empty:
        raise CbirError("extract.precision=int8 calibrates on database images, and the manifest has none")
    if size >= len(database):
        return database
    chosen = np.sort(np.random.default_rng(seed).choice(len(database), size=size, replace=False))
    return database.iloc[chosen]


def calibration_digest(rows: pd.DataFrame) -> str:
    """sha256 of the rows' ``image_id`` and content ``sha256``, one tab-separated line each, in order."""
    lines = "".join(f"{image_id}\t{digest}\n" for image_id, digest in zip(rows["image_id"], rows["sha256"]))
    return sha256_bytes(lines.encode())


def calibration_for(manifest: pd.DataFrame, root: Path, settings: Mapping) -> Calibration:
    """The calibration set ``extract.calibration`` (``size``, ``seed``) names in ``manifest``."""
    seed = int(settings["seed"])
    rows = calibration_rows(manifest, int(settings["size"]), seed)
    return Calibration(paths=tuple(root / p for p in rows["path"]), seed=seed, sha256=calibration_digest(rows))


def calibration_inputs(paths: Sequence[Path], image_size: int, max_pixels: int) -> list[np.ndarray]:
    """Each calibration image as the trunk's input, float32 ``[1, 3, S, S]`` (the extraction preprocessing)."""
    inputs = []
    for path in paths:
        try:
            image = open_rgb(path, max_pixels=max_pixels)
        except ImageError as exc:
            raise CbirError(f"int8 calibration: {exc}; rerun `dvc repro curate`") from None
        inputs.append(imagenet_input(image, image_size)[None])
    return inputs


def nncf_version() -> str:
    try:
        return version("nncf")
    except PackageNotFoundError:
        return "none"


def int8_key(fp32_key: str, calibration: Calibration) -> str:
    """The cache key of the int8 model quantised from the conversion ``fp32_key`` on ``calibration``."""
    parts = {"fp32": fp32_key, "calibration": calibration.sha256, "nncf": nncf_version(),
             "code": sha256_file(find_spec(__name__).origin)}
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())[:32]


def quantize(model, inputs: Sequence[np.ndarray]):
    """``model`` (an OpenVINO fp32 model) quantised to int8 by NNCF on the calibration ``inputs``."""
    try:
        import nncf
    except ImportError:
        raise CbirError("extract.precision=int8 needs NNCF: pip install nncf (it is in pyproject.toml)") from None
    nncf.set_log_level(logging.ERROR)
    log.info("int8: quantising with NNCF %s on %d database images", nncf_version(), len(inputs))
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's statistics progress bars: this line says it all
        return nncf.quantize(model, nncf.Dataset(list(inputs)), subset_size=len(inputs))
