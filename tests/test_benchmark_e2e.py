"""End to end: `dvc exp run -S experiment=roxford5k` of the real dvc.yaml on a tiny archive in revisitop's layout
(images tgz + gnd pickle), in a temporary git repo, with one cheap handcrafted method."""

from __future__ import annotations

import json
import sys

import pytest
from bench_helpers import revisitop_archives
from pipeline_repo import copy_repo, edit_yaml, init_repo, pipeline_env, run

pytestmark = pytest.mark.slow


def test_exp_run_roxford5k_on_a_tiny_archive(tmp_path, repo_root):
    work, env = tmp_path / "repo", pipeline_env()
    files = revisitop_archives(tmp_path)
    copy_repo(repo_root, work)
    (work / "conf" / "method_set" / "default.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /backbone@backbones.mobilenet_v2: mobilenet_v2\n"
        "  - /method@methods.color_moments: color_moments\n")  # the backbone is declared, never run
    edit_yaml(work / "conf" / "evaluation" / "default.yaml", baseline=None)
    edit_yaml(work / "conf" / "dataset" / "roxford5k.yaml", archive=[str(f) for f in files], urls=None)
    init_repo(work, repo_root, env)
    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "experiment=roxford5k", "evaluate@roxford5k"], work, env)
    metrics = json.loads((work / "reports" / "roxford5k" / "metrics.json").read_text())
    official = metrics["color_moments"]["benchmark"]
    assert official["kind"] == "revisitop" and {"easy", "medium", "hard"} <= set(official)
    compact = json.loads((work / "metrics" / "roxford5k.json").read_text())["color_moments"]
    assert compact["m_map"] == official["medium"]["map"] and compact["h_map"] == official["hard"]["map"]
    assert (work / "data" / "curated" / "roxford5k" / "judgements.json").is_file()
    table = (work / "reports" / "roxford5k" / "tables" / "benchmark.csv").read_text().splitlines()
    assert table[0] == "method,ROxf M,ROxf H,ROxf E" and table[1].startswith("color_moments,")
