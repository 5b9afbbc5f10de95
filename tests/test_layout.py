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
from cbir.config import dataset_names, select_dataset
from cbir.errors import CbirError
from cbir.data.manifest import read_manifest
from cbir.layout import PLOT_TABLES, Layout, across_files, weights_file
from cbir.scoring import metric_files
from cbir.search import rankings
from cbir.stages import curate, download, extract
from methods_helpers import from_conf, with_defaults

from cbir.data.images import MAX_PIXELS
from cbir.features.handcrafted import descriptor_node


def _resolved_stages(repo_root: Path) -> dict[str, dict[str, set[str]]]:
    with Repo(str(repo_root)) as repo:
        return {stage.addressing: {"outs": {str(o.fs_path) for o in stage.outs},
                                   "deps": {str(d.fs_path) for d in stage.deps}}
                for stage in repo.index.stages}


def test_dvc_yaml_paths_are_the_layout(repo_root):
    """Every stage of every dataset, as DVC resolves dvc.yaml, reads and writes where cbir.layout says."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    stages = _resolved_stages(repo_root)
    assert len(dataset_names(params)) >= 2, "the default experiment runs at least two datasets"
    for backbone in params["backbones"]:
        out = weights_file(repo_root, backbone)
        assert stages[f"weights@{backbone}"]["outs"] == {str(out), str(out.with_suffix(".json"))}
    for ds in dataset_names(params):
        paths = Layout(repo_root, select_dataset(params, ds))
        assert paths.dataset == ds
        assert stages[f"download@{ds}"]["outs"] == {str(paths.raw_dir)}
        assert stages[f"curate@{ds}"]["outs"] == {str(paths.curated_dir)}
        assert stages[f"extract@{ds}"]["outs"] == {str(paths.features_dir)}
        assert {str(paths.manifest), str(repo_root / "models")} <= stages[f"extract@{ds}"]["deps"]
        method = next(iter(params["methods"]))
        evaluate = stages[f"evaluate@{ds}"]
        assert evaluate["outs"] == {
            str(paths.retrieval(method).parent), str(paths.index_dir(method).parent),
            str(paths.evaluation_dir(method).parent), str(paths.feedback_methods_dir.parent),
            str(paths.figure_index_dir), str(paths.embeddings_dir), str(paths.figures_dir), str(paths.feedback_dir),
            str(paths.tables_dir), str(paths.metrics), str(paths.pairs), str(paths.report),
            str(paths.compact_metrics)} | {str(paths.plot(n)) for n in PLOT_TABLES}
        assert paths.feedback_rankings.parent == paths.feedback_methods_dir.parent
        assert {str(paths.curated_dir), str(paths.features_dir)} <= evaluate["deps"]
    assert stages["across"]["outs"] == {str(p) for p in across_files(repo_root).values()}
    every_out = [o for s in stages.values() for o in s["outs"]]
    assert len(every_out) == len(set(every_out)), "two stages share an output"
    assert str(repo_root / "README.md") not in set(every_out)


def test_a_stage_sees_its_own_dataset():
    params = {"split": {"protocol": "holdout", "queries_per_class": 5},
              "datasets": {"a": {"name": "ignored", "source": "folder", "folder": "/x"},
                           "b": {"source": "fashion_mnist", "split": {"protocol": "predefined"}}}}
    with pytest.raises(CbirError, match="2 datasets .a, b.: choose one with --dataset"):
        select_dataset(params)
    with pytest.raises(CbirError, match=r"dataset 'c' is not in params.yaml \(datasets: a, b\)"):
        select_dataset(params, "c")
    a = select_dataset(params, "a")
    assert a["dataset"]["name"] == "a" and a["split"] == params["split"]
    b = select_dataset(params, "b")
    assert b["dataset"] == {"name": "b", "source": "fashion_mnist"}
    assert b["split"] == {"protocol": "predefined", "queries_per_class": 5}
    assert select_dataset({"datasets": {"only": {"source": "tuxpaint"}}})["dataset"]["name"] == "only"


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
    params = {"seed": 0, "device": "cpu", "extract": with_defaults({})["extract"],
              "dataset": {"name": "odd", "source": "folder", "folder": str(source), "drop_variants": False},
              "download": from_conf("download/default"),
              "curate": {"min_side": 8, "min_per_class": 2, "dedupe": False, "max_pixels": MAX_PIXELS},
              "split": from_conf("split/holdout", queries_per_class=1),
              "retrieval": {"k": 3, "block_size": 8, "index": "exact"},
              "evaluation": {"ks": [1, 3], "n_bootstrap": 20, "n_permutations": 20, "seed": 0, "baseline": None},
              "methods": {"hsv": {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram")}}}
    download.run(params, tmp_path)
    curate.run(params, tmp_path)
    extract.run(params, tmp_path)
    rankings.run(params, "hsv", tmp_path)
    metric_files.run(params, tmp_path)
    paths = Layout(tmp_path, params)
    manifest = read_manifest(paths.manifest)
    assert set(manifest["label"]) == set(colours)
    per_class = __import__("pandas").read_csv(paths.plot("per_class"), keep_default_na=False)
    assert set(per_class["label"]) == set(colours)
    engine = QueryEngine.from_params(params, "hsv", tmp_path)
    answer = engine.query_id(manifest.loc[manifest["label"] == "NA", "image_id"].iloc[0])
    assert answer["query"]["label"] == "NA" and answer["results"][0]["label"] == "NA"
    assert all(isinstance(r["label"], str) for r in answer["results"])


def test_one_methods_search_setting_reruns_only_the_evaluate_stages(repo_root):
    """A change of ``retrieval.per_method.hog`` reaches, as DVC resolves dvc.yaml's params and graph, every
    dataset's evaluate stage and the across table, no extract stage (inside evaluate only hog's own work is
    redone: tests/test_incremental.py)."""
    import networkx as nx

    key = "retrieval.per_method.hog"
    with Repo(str(repo_root)) as repo:
        graph = repo.index.graph
        direct = {stage for stage in graph for dep in stage.deps if getattr(dep, "params", None) is not None
                  and any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in dep.params)}
        reached = set().union(*({s, *nx.ancestors(graph, s)} for s in direct))  # edges point to dependencies
        names = {stage.addressing for stage in reached}
        datasets = dataset_names(yaml.safe_load((repo_root / "params.yaml").read_text()))
    assert names == {f"evaluate@{ds}" for ds in datasets} | {"across"}
