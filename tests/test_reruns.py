"""Reruns are identical: the same small pipeline run in two directories gives the same bytes in every DVC
output (dvc.lock's md5s), and no output holds a timing, a host name or the run's own temporary path."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from pipeline_repo import copy_repo, init_repo, run, pipeline_env, use_random_mobilenet

from cbir.fileio import sha256_file

pytestmark = pytest.mark.slow

EXPERIMENT = ("# @package _global_\ndefaults:\n  - /backbone@backbones.mobilenet_v2: mobilenet_v2\n"
              "  - /method@methods.mobilenet_v2-gap: mobilenet_v2-gap\n  - /method@methods.hsv_hist: hsv_hist\n"
              "  - /method@methods.lbp: lbp\n")


def _outs(work: Path) -> dict[str, str]:
    """``{stage: {out path: md5}}`` from dvc.lock, directories included (their md5 covers every file)."""
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    return {f"{stage}:{out['path']}": out["md5"] for stage, entry in lock["stages"].items()
            for out in entry.get("outs", [])}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, repo_root):
    shared = tmp_path_factory.mktemp("shared_inputs")
    torch.manual_seed(0)
    weights = shared / "mobilenet_v2_random.pt"
    torch.save(torchvision.models.mobilenet_v2().features.state_dict(), weights)
    env = pipeline_env()
    works = []
    for name in ("first", "second"):
        work = tmp_path_factory.mktemp(name) / "repo"
        copy_repo(repo_root, work)
        use_random_mobilenet(work, weights, sha256_file(weights))
        (work / "conf" / "experiment" / "default.yaml").write_text(EXPERIMENT)
        init_repo(work, repo_root, env, overrides=["dataset=synthetic"])
        run([sys.executable, "-m", "dvc", "repro"], work, env)
        works.append(work)
    return works


def test_every_dvc_output_has_the_same_md5_in_two_directories(two_runs):
    first, second = (_outs(w) for w in two_runs)
    assert len(first) >= 12 and first.keys() == second.keys()
    differ = sorted(k for k in first if first[k] != second[k])
    assert not differ, f"outputs differ between two runs of the same code: {differ}"


def test_no_output_holds_a_volatile_value(two_runs):
    for work in two_runs:
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
