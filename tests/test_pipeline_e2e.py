"""End to end: `dvc repro` of the real dvc.yaml on a small generated dataset, in a temporary git repo."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_repo import copy_repo, init_repo, pipeline_env, use_random_mobilenet
from pipeline_repo import run as _run

from cbir.fileio import sha256_file

pytestmark = pytest.mark.slow


EXPERIMENT = ("# @package _global_\ndefaults:\n  - /dataset@datasets.synthetic: synthetic\n"
              "  - /backbone@backbones.mobilenet_v2: mobilenet_v2\n"
              "  - /method@methods.mobilenet_v2-gap: mobilenet_v2-gap\n  - /method@methods.hsv_hist: hsv_hist\n"
              "  - /method@methods.fusion: fusion\n")


def build_pipeline(work: Path, repo_root: Path, weights: Path, env: dict) -> subprocess.CompletedProcess:
    """A copy of the repo on the synthetic dataset with three methods, committed, then `dvc repro`."""
    copy_repo(repo_root, work)
    use_random_mobilenet(work, weights, sha256_file(weights))
    (work / "conf" / "experiment" / "default.yaml").write_text(EXPERIMENT)
    init_repo(work, repo_root, env)
    return _run([sys.executable, "-m", "dvc", "repro"], work, env)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("weights") / "mobilenet_v2_random.pt"
    torch.save(torchvision.models.mobilenet_v2().features.state_dict(), weights)
    return weights


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, repo_root, random_weights) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("e2e") / "repo"
    env = pipeline_env()
    first = build_pipeline(work, repo_root, random_weights, env)
    return work, {"env": env, "first": first, "outs": dvc_outs(work)}


def dvc_outs(work: Path) -> dict[str, str]:
    """``{stage: {out path: md5}}`` from dvc.lock, directories included (their md5 covers every file)."""
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    return {f"{stage}:{out['path']}": out["md5"] for stage, entry in lock["stages"].items()
            for out in entry.get("outs", [])}


def test_repro_writes_every_output(pipeline_repo):
    work, state = pipeline_repo
    params = yaml.safe_load((work / "params.yaml").read_text())
    methods = list(params["methods"])
    assert len(methods) >= 2
    manifest = (work / "data" / "curated" / "synthetic" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "image_id,path,label,split,width,height,sha256,protocol"
    assert len(manifest) - 1 == 80
    for method in methods:
        assert (work / "data" / "features" / "synthetic" / f"{method}.npy").exists()
        ranking = (work / "data" / "retrieval" / "synthetic" / f"{method}.csv").read_text().splitlines()
        assert ranking[0] == "query_id,rank,image_id,score"
        assert len(ranking) - 1 == 20 * 10  # 4 classes x 5 queries, top-10 each
        assert (work / "reports" / "synthetic" / "figures" / f"trials_{method}.png").stat().st_size > 10_000
    metrics = json.loads((work / "reports" / "synthetic" / "metrics.json").read_text())
    assert set(metrics) == set(methods)
    for entry in metrics.values():
        for key in ("p@1", "p@5", "p@10", "p@20", "r@10", "map", "map@10", "n_queries", "n_database"):
            assert key in entry
        assert entry["n_queries"] == 20 and entry["n_database"] == 60
        lo, hi = entry["ci95"]["map"]
        assert lo <= entry["map"] <= hi
    # the colour histogram must find same-class images on this data far above chance (0.25)
    assert metrics["hsv_hist"]["p@10"] > 0.45
    report = (work / "reports" / "synthetic" / "report.md").read_text()
    for method in methods:
        assert f"| {method} |" in report


def test_second_repro_reruns_nothing(pipeline_repo):
    work, state = pipeline_repo
    again = _run([sys.executable, "-m", "dvc", "repro"], work, state["env"])
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout


def test_a_rerun_in_another_directory_gives_the_same_bytes(pipeline_repo, tmp_path, repo_root, random_weights):
    """Every DVC output (dvc.lock's md5s, folders included) is the same when the same code runs elsewhere."""
    _, state = pipeline_repo
    second = tmp_path / "repo"
    build_pipeline(second, repo_root, random_weights, state["env"])
    first, again = state["outs"], dvc_outs(second)
    assert len(first) >= 12 and first.keys() == again.keys()
    differ = sorted(k for k in first if first[k] != again[k])
    assert not differ, f"outputs differ between two runs of the same code: {differ}"
    for work in (pipeline_repo[0], second):
        assert_no_volatile_values(work)


def assert_no_volatile_values(work: Path) -> None:
    """No output holds a timing, a date, the host name or the run's own temporary path."""
    texts = [p for p in (*(work / "data").rglob("*.json"), *(work / "models").glob("*.json"),
                         *(work / "metrics").glob("*.json"), *(work / "reports").rglob("*.md"),
                         *(work / "reports").rglob("*.csv"))]
    assert texts
    for path in texts:
        text = path.read_text(errors="replace")
        assert str(work) not in text and str(work.parent.parent) not in text, f"{path} holds a temporary path"
        assert socket.gethostname() not in text or len(socket.gethostname()) < 4, f"{path} holds the host name"
        for key in ('"seconds"', '"images_per_second"', "_s\":", '"timestamp"', '"date"'):
            assert key not in text, f"{path} holds a timing or date ({key})"


def test_exp_run_swaps_a_config_group(pipeline_repo):
    work, state = pipeline_repo
    env = state["env"]
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "results"], work, env)
    _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "split=leave_one_out"], work, env)
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["split"]["protocol"] == "leave_one_out"
    metrics = json.loads((work / "reports" / "synthetic" / "metrics.json").read_text())
    assert all(m["n_queries"] == 80 and m["n_database"] == 79 for m in metrics.values())
    diff = _run([sys.executable, "-m", "dvc", "metrics", "diff"], work, env)
    assert "p@10" in diff.stdout
    plots = _run([sys.executable, "-m", "dvc", "plots", "diff", "--json"], work, env)
    assert "reports/synthetic/plots/pk.csv" in plots.stdout
    # back to the committed experiment (cached outputs from DVC's cache), so later tests start from it: only
    # stages with an uncached output (a retrieval .json, the figures) are left to rerun, never an extract
    _run(["git", "checkout", "--", "."], work, env)
    _run([sys.executable, "-m", "dvc", "checkout", "-q"], work, env)
    assert yaml.safe_load((work / "params.yaml").read_text())["split"]["protocol"] == "holdout"
    stale = _stale_stages(work, env)
    assert not {s for s in stale if s.startswith(("extract@", "curate"))}, stale


def _stale_stages(work: Path, env: dict) -> set[str]:
    status = _run([sys.executable, "-m", "dvc", "status", "--json"], work, env)
    return set(json.loads(status.stdout or "{}"))


def test_editing_one_descriptor_reruns_only_its_own_stages(pipeline_repo):
    work, state = pipeline_repo
    env = state["env"]
    before = _stale_stages(work, env)
    module = work / "src" / "cbir" / "features" / "handcrafted" / "colour_histogram.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        stale = _stale_stages(work, env) - before
    finally:
        module.write_text(original)
    # the dataset's extract stage (it runs every descriptor module), never download or curate; inside it, only
    # the methods that use the edited descriptor are computed again (tests/test_incremental.py)
    assert "extract@synthetic" in stale
    assert not {s for s in stale if s.startswith(("download@", "curate@", "weights@"))}
    assert _stale_stages(work, env) == before


def test_your_own_descriptor_from_outside_src_runs_against_every_baseline(pipeline_repo):
    """examples/my_descriptor: a Python file and a method config, found through hydra.searchpath."""
    work, state = pipeline_repo
    env = state["env"]
    _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "hydra.searchpath=[file://examples/my_descriptor/conf]",
          "-S", "+method@methods.colour_layout=colour_layout"], work, env)
    metrics = json.loads((work / "reports" / "synthetic" / "metrics.json").read_text())
    assert {"colour_layout", "hsv_hist", "mobilenet_v2-gap", "fusion"} <= set(metrics)
    assert metrics["colour_layout"]["p@10"] > 0.4  # mean colours separate these colour classes well above 0.25
    features = json.loads((work / "data" / "features" / "synthetic" / "colour_layout.json").read_text())
    assert features["dim"] == 48
    significance = (work / "reports" / "synthetic" / "plots" / "significance.csv").read_text()
    assert "colour_layout," in significance
    _run(["git", "checkout", "params.yaml"], work, env)


def _tiny_jpeg(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (48, 64, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.mark.parametrize("source", ["corel1k", "folder"])
def test_local_sources_curate_through_dvc(tmp_path, pipeline_repo, source):
    """Corel-1K from a local archive and a folder of your own, added beside the synthetic dataset."""
    import tarfile

    work, state = pipeline_repo
    env = state["env"]
    if source == "corel1k":
        images = tmp_path / "image.orig"
        for i in [*range(0, 12), *range(100, 112), *range(900, 912)]:
            _tiny_jpeg(images / f"{i}.jpg", (200, 40, 40) if i < 100 else (40, 40, 200) if i < 900 else (40, 200, 40), i)
        archive = tmp_path / "test1.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(images, arcname="image.orig")
        overrides = ["+dataset@datasets.corel1k=corel1k", f"datasets.corel1k.archive={archive}"]
        expected = {"africa", "beach", "food"}
    else:
        for label, colour in (("cats", (200, 120, 40)), ("sea", (30, 90, 200))):
            for i in range(11):
                _tiny_jpeg(tmp_path / "mine" / label / f"{i}.jpg", colour, i)
        overrides = ["+dataset@datasets.mine=folder", f"datasets.mine.folder={tmp_path / 'mine'}"]
        expected = {"cats", "sea"}
    _run([sys.executable, "-m", "cbir", "params", *overrides], work, env)
    name = "corel1k" if source == "corel1k" else "mine"  # a folder dataset is named by its key
    _run([sys.executable, "-m", "dvc", "repro", f"curate@{name}"], work, env)
    import pandas as pd

    manifest = pd.read_csv(work / "data" / "curated" / name / "manifest.csv", keep_default_na=False)
    assert set(manifest["label"]) == expected
    assert (manifest["split"] == "query").sum() == 5 * len(expected)
    _run(["git", "checkout", "params.yaml"], work, env)
