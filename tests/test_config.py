"""params.yaml is exactly the Hydra composition of conf/, and every config group composes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cbir.config import compose_yaml, load_params, method_config, write_params
from cbir.errors import CbirError


def test_params_yaml_matches_conf(repo_root):
    committed = yaml.safe_load((repo_root / "params.yaml").read_text())
    composed = yaml.safe_load(compose_yaml(repo_root / "conf"))
    assert committed == composed, "params.yaml drifted from conf/: run `python -m cbir params`"


def _options(repo_root: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (repo_root / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "split", "retrieval", "evaluation", "figures", "curate", "experiment"])
def test_every_option_of_every_group_composes(repo_root, group):
    for option in _options(repo_root, group):
        cfg = yaml.safe_load(compose_yaml(repo_root / "conf", [f"{group}={option}"]))
        assert cfg["dataset"]["name"]
        assert cfg["methods"], f"{group}={option} leaves no method"
        for name, method in cfg["methods"].items():
            assert method["kind"] in {"deep", "handcrafted"}, name
            if method["kind"] == "deep":
                assert method["backbone"] in cfg["backbones"], f"{name} uses an undefined backbone"
                assert method["requires"] == f"models/{method['backbone']}.pt"


def test_paper_experiment_is_the_papers_setup(repo_root):
    cfg = yaml.safe_load(compose_yaml(repo_root / "conf", ["experiment=paper"]))
    assert cfg["dataset"]["name"] == "corel1k"
    assert cfg["backbones"]["resnet50"]["arch"] == "resnet50"
    assert cfg["methods"] == {"resnet50-gap": {"kind": "deep", "backbone": "resnet50", "pooling": "gap",
                                               "requires": "models/resnet50.pt"}}
    assert cfg["retrieval"]["k"] == 10
    assert cfg["split"]["protocol"] == "holdout"


def test_write_params_roundtrip(tmp_path, repo_root):
    import shutil

    shutil.copytree(repo_root / "conf", tmp_path / "conf")
    write_params(tmp_path, ["dataset=synthetic", "split=leave_one_out"])
    params = load_params(tmp_path)
    assert params["dataset"]["source"] == "synthetic"
    assert params["split"]["protocol"] == "leave_one_out"


def test_bad_override_is_one_clear_error(repo_root):
    with pytest.raises(CbirError, match="cannot compose"):
        compose_yaml(repo_root / "conf", ["dataset=no_such_dataset"])


def test_missing_params_file(tmp_path):
    with pytest.raises(CbirError, match="python -m cbir params"):
        load_params(tmp_path)


def test_unknown_method(repo_root):
    with pytest.raises(CbirError, match="not in params.yaml"):
        method_config(load_params(repo_root), "nope")
