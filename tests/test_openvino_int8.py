"""int8 on request: the calibration set (database rows only, seeded), its digest, the quantised model's
determinism and cache, what the features .json records, and the query path running the same model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from methods_helpers import params_for, real_images

from cbir.data.images import open_rgb
from cbir.errors import CbirError
from cbir.features.cnn.openvino_int8 import calibration_digest, calibration_rows
from cbir.features.methods import build_method
from cbir.fileio import sha256_file

GAP = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}


def manifest(n_query: int = 2, n_database: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n_query + n_database)],
                         "sha256": [f"h{k}" for k in range(n_query + n_database)],
                         "split": ["query"] * n_query + ["database"] * n_database})


def test_calibration_draws_database_rows_only_seeded_in_manifest_order():
    frame = manifest()
    rows = calibration_rows(frame, 3, seed=0)
    assert len(rows) == 3 and set(rows["split"]) == {"database"}
    assert list(rows.index) == sorted(rows.index)  # manifest order
    assert calibration_rows(frame, 3, seed=0).equals(rows)
    assert not calibration_rows(frame, 3, seed=1).equals(rows)
    assert list(calibration_rows(frame, 100, seed=0)["image_id"]) == [f"i{k}" for k in range(2, 8)]
    with pytest.raises(CbirError, match="calibrates on database images, and the manifest has none"):
        calibration_rows(manifest(3, 0), 2, seed=0)


def test_calibration_digest_is_the_sha256_of_ids_and_content_hashes_in_order():
    rows = pd.DataFrame({"image_id": ["a", "b"], "sha256": ["x", "y"]})
    assert calibration_digest(rows) == hashlib.sha256(b"a\tx\nb\ty\n").hexdigest()
    assert calibration_digest(rows.iloc[::-1]) == hashlib.sha256(b"b\ty\na\tx\n").hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root) -> tuple[Path, dict]:
    """A project root with a curated manifest of real stamps (2 queries, 8 database images) and the real
    MobileNetV2 ImageNet weights (a random network's activations are too small for int8 ranges to mean
    anything: its int8 descriptors come out all zero)."""
    import yaml

    from cbir.stages.weights import run as run_weights

    root = tmp_path_factory.mktemp("int8")
    images = root / "images"
    images.mkdir()
    rows = []
    for k, source in enumerate(real_images(10)):
        target = images / f"{k:02d}.png"
        target.write_bytes(source.read_bytes())
        width, height = open_rgb(target).size
        rows.append({"image_id": f"s/{k:02d}", "path": target.relative_to(root).as_posix(), "label": "s",
                     "split": "query" if k < 2 else "database", "protocol": "holdout", "width": width,
                     "height": height, "sha256": sha256_file(target)})
    (root / "data/curated/toy").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "data/curated/toy/manifest.csv", index=False)
    backbone = yaml.safe_load((repo_root / "conf/backbone/mobilenet_v2.yaml").read_text())
    params = params_for(None, "openvino", "int8")
    params["backbones"] = {"mobilenet_v2": {**backbone, "image_size": 96, "batch_size": 5}}
    params["extract"]["calibration"] = {"size": 5, "seed": 0}
    params.update({"dataset": {"name": "toy"}, "methods": {"m": GAP}})
    run_weights(params, "mobilenet_v2", root)
    return root, params


def test_int8_stage_records_precision_and_calibration_and_reruns_to_the_same_bytes(project, monkeypatch, tmp_path):
    from cbir.stages.extract import run as run_extract

    root, params = project
    run_extract(params, root, method="m")
    meta_file, feats_file = root / "data/features/toy/m.json", root / "data/features/toy/m.npy"
    meta = json.loads(meta_file.read_text())
    database = pd.read_csv(root / "data/curated/toy/manifest.csv", dtype=str).query("split == 'database'")
    chosen = calibration_rows(database, 5, seed=0)
    assert meta["precision"] == "int8" and meta["runtime"] == "openvino"
    assert meta["calibration"] == {"size": 5, "seed": 0, "split": "database", "sha256": calibration_digest(chosen)}
    first, feats = meta_file.read_bytes(), feats_file.read_bytes()
    meta_file.unlink()  # as `dvc repro -f` of a changed stage: the method is computed again, not reused
    run_extract(params, root, method="m")  # the quantised model read back from the cache
    assert meta_file.read_bytes() == first and feats_file.read_bytes() == feats
    monkeypatch.setenv("CBIR_OPENVINO_CACHE", str(tmp_path / "empty-cache"))
    meta_file.unlink()
    run_extract(params, root, method="m")  # quantised again from nothing: the same bytes
    assert meta_file.read_bytes() == first and feats_file.read_bytes() == feats
    assert (tmp_path / "empty-cache").is_dir() and len(list((tmp_path / "empty-cache").iterdir())) == 2  # fp32 + int8


def test_int8_descriptors_stay_near_fp32_and_a_query_lands_on_its_database_row(project):
    root, params = project
    rows = {}
    for precision in ("fp32", "int8"):
        method = build_method("m", {**params, "extract": {**params["extract"], "precision": precision}}, root)
        paths = [root / p for p in pd.read_csv(root / "data/curated/toy/manifest.csv")["path"]]
        rows[precision] = np.empty((len(paths), method.dim), dtype=np.float32)
        method.extract(paths, rows[precision], progress=False, num_workers=0)
    assert method.run_info()["precision"] == "int8"
    cosine = np.sum(rows["int8"] * rows["fp32"], axis=1)
    assert cosine.mean() >= 0.8 and not np.array_equal(rows["int8"], rows["fp32"]), cosine
    # each int8 descriptor is nearest to its own image's fp32 descriptor (5 calibration images, 96 px)
    np.testing.assert_array_equal(np.argmax(rows["int8"] @ rows["fp32"].T, axis=1), np.arange(len(paths)))
    query = method.embed([open_rgb(paths[4])])  # the query path: the same quantised model
    assert float(query[0] @ rows["int8"][4]) >= 0.99999 and int(np.argmax(rows["int8"] @ query[0])) == 4


def test_int8_needs_a_calibration_setting_and_a_manifest(project, tmp_path):
    root, params = project
    no_setting = {**params, "extract": {k: v for k, v in params["extract"].items() if k != "calibration"}}
    with pytest.raises(CbirError, match=r"params.yaml: extract.calibration is missing"):
        build_method("m", no_setting, root)
    (tmp_path / "models").symlink_to(root / "models")  # weights, but no curated manifest
    with pytest.raises(CbirError, match="manifest not found"):
        build_method("m", params, tmp_path)
    with pytest.raises(CbirError, match="int8 runs on the OpenVINO runtime, not torch"):
        build_method("m", {**params, "extract": {**params["extract"], "runtime": "torch"}}, root)
