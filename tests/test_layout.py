"""One map of paths: every ``outs``/``deps`` path of dvc.yaml, as DVC itself resolves it, is what
``cbir.layout`` says; and labels that look like missing values stay strings from curate to query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc.repo import Repo
from PIL import Image

from cbir.app.engine import QueryEngine
from cbir.data.manifest import read_manifest
from cbir.layout import PLOT_TABLES, Layout, weights_file
from cbir.stages import curate, download, evaluate, extract, retrieve


def _resolved_stages(repo_root: Path) -> dict[str, dict[str, set[str]]]:
    with Repo(str(repo_root)) as repo:
        return {stage.addressing: {"outs": {str(o.fs_path) for o in stage.outs},
                                   "deps": {str(d.fs_path) for d in stage.deps}}
                for stage in repo.index.stages}


def test_dvc_yaml_paths_are_the_layout(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    paths = Layout(repo_root, params)
    stages = _resolved_stages(repo_root)
    absolute = {str(p) for p in (paths.raw_dir,)}
    assert stages["download"]["outs"] == absolute
    assert stages["curate"]["outs"] == {str(paths.curated_dir)}
    for backbone in params["backbones"]:
        out = weights_file(repo_root, backbone)
        assert stages[f"weights@{backbone}"]["outs"] == {str(out), str(out.with_suffix(".json"))}
    for method, cfg in params["methods"].items():
        extract_stage = stages[f"extract@{method}"]
        assert extract_stage["outs"] == {str(paths.features(method)), str(paths.features_info(method))}
        assert str(paths.curated_dir) in extract_stage["deps"]
        assert {str(repo_root / cfg["requires"]["code"]), str(repo_root / cfg["requires"]["data"])} <= \
            extract_stage["deps"]
        retrieve_stage = stages[f"retrieve@{method}"]
        assert retrieve_stage["outs"] == {str(paths.retrieval(method)), str(paths.retrieval_info(method)),
                                          str(paths.index_dir(method))}
        assert {str(paths.manifest), str(paths.features(method))} <= retrieve_stage["deps"]
    assert stages["evaluate"]["outs"] == {str(paths.metrics), str(paths.compact_metrics), str(paths.pairs)} | \
        {str(paths.plot(n)) for n in PLOT_TABLES}
    assert stages["figures"]["outs"] == {str(paths.figures_dir)}
    assert str(paths.metrics) in stages["figures"]["deps"] and str(paths.metrics) in stages["report"]["deps"]
    assert stages["report"]["outs"] == {str(paths.report), str(paths.tables_dir)}
    assert stages["feedback"]["outs"] == {str(paths.feedback_dir), str(paths.feedback_rankings)}
    assert {str(paths.manifest), str(paths.features_dir)} <= stages["feedback"]["deps"]
    assert str(repo_root / "README.md") not in set().union(*(s["outs"] for s in stages.values()))


def test_every_code_dependency_exists(repo_root):
    for name, stage in _resolved_stages(repo_root).items():
        for dep in stage["deps"]:
            if "/src/" in dep:
                assert Path(dep).exists(), f"{name} depends on {dep}, which does not exist"


def test_layout_refuses_a_dataset_name_that_is_a_path(tmp_path):
    from cbir.errors import CbirError

    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(CbirError, match="dataset.name"):
            Layout(tmp_path, {"dataset": {"name": bad}})


def test_labels_named_like_missing_values_stay_strings(tmp_path):
    """Classes ``NA``, ``null`` and ``None`` go through curate, extract, retrieve, evaluate and query."""
    rng = np.random.default_rng(0)
    source = tmp_path / "images"
    colours = {"NA": (220, 40, 40), "null": (40, 220, 40), "None": (40, 40, 220)}
    for label, rgb in colours.items():
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype("uint8")
            (source / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(source / label / f"{i}.png")
    params = {"seed": 0, "device": "cpu",
              "dataset": {"name": "odd", "source": "folder", "folder": str(source)},
              "curate": {"min_side": 8, "min_per_class": 2, "dedupe": False},
              "split": {"protocol": "holdout", "queries_per_class": 1, "seed": 0},
              "retrieval": {"k": 3, "block_size": 8, "index": "exact"},
              "evaluation": {"ks": [1, 3], "n_bootstrap": 20, "n_permutations": 20, "seed": 0, "baseline": None},
              "methods": {"hsv": {"kind": "handcrafted", "descriptor": "hsv_histogram"}}}
    download.run(params, tmp_path)
    curate.run(params, tmp_path)
    extract.run(params, "hsv", tmp_path)
    retrieve.run(params, "hsv", tmp_path)
    evaluate.run(params, tmp_path)
    paths = Layout(tmp_path, params)
    manifest = read_manifest(paths.manifest)
    assert set(manifest["label"]) == set(colours)
    per_class = __import__("pandas").read_csv(paths.plot("per_class"), keep_default_na=False)
    assert set(per_class["label"]) == set(colours)
    engine = QueryEngine.from_params(params, "hsv", tmp_path)
    answer = engine.query_id(manifest.loc[manifest["label"] == "NA", "image_id"].iloc[0])
    assert answer["query"]["label"] == "NA" and answer["results"][0]["label"] == "NA"
    assert all(isinstance(r["label"], str) for r in answer["results"])
