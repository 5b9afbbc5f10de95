"""Exact restore and datasets side by side, end to end in a temporary git + DVC repo (the real dvc.yaml):

* every file under data/, models/, metrics/ and reports/ comes back byte for byte after another experiment,
  both with `git checkout` + `dvc checkout` and with `dvc exp apply`;
* adding a dataset, or switching to another one, never deletes or changes the first dataset's outputs.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_repo import pipeline_env
from pipeline_repo import run as _run
from test_pipeline_e2e import build_pipeline, random_weights  # noqa: F401  (the module fixture)

pytestmark = pytest.mark.slow
TREES = ("data", "models", "metrics", "reports")
DVC = [sys.executable, "-m", "dvc"]


def md5s(work: Path, prefix: str = "") -> dict[str, str]:
    """``{relative path: md5}`` of every file under data/, models/, metrics/, reports/ (``prefix``: only those)."""
    found = {}
    for tree in TREES:
        for path in sorted((work / tree).rglob("*")):
            rel = path.relative_to(work).as_posix()
            if path.is_file() and rel.startswith(prefix) and not rel.endswith(".gitkeep"):
                found[rel] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def of_dataset(files: dict[str, str], ds: str) -> dict[str, str]:
    return {p: h for p, h in files.items() if f"/{ds}/" in f"/{p}" or p.startswith(f"metrics/{ds}.")}


@pytest.fixture(scope="module")
def built(tmp_path_factory, repo_root, random_weights):  # noqa: F811
    work = tmp_path_factory.mktemp("restore") / "repo"
    env = pipeline_env()
    build_pipeline(work, repo_root, random_weights, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "results"], work, env)
    return work, env


def test_every_written_file_is_tracked(built):
    """No stage leaves a file that neither git nor the DVC cache restores (PDFs, sidecar .json, indexes)."""
    work, env = built
    in_git = set(_run(["git", "ls-files"], work, env).stdout.split())
    listed = _run(DVC + ["ls", "-R", "--dvc-only", "."], work, env).stdout.split()
    in_dvc = set(listed)
    loose = sorted(p for p in md5s(work) if p not in in_git and p not in in_dvc and not p.startswith("data/downloads/"))
    assert not loose, f"written but neither in git nor DVC-tracked: {loose}"
    status = _run(DVC + ["status", "--json"], work, env).stdout.strip()
    assert status in ("{}", ""), status


def test_restore_after_another_experiment(built):
    work, env = built
    before = md5s(work)
    assert any(p.endswith(".pdf") for p in before) and any(p.startswith("data/index/") for p in before)
    _run(DVC + ["exp", "run", "-n", "base"], work, env)  # the committed experiment, as an experiment
    _run(DVC + ["exp", "run", "-n", "loo", "-S", "split=leave_one_out",
                "-S", "+retrieval/search@retrieval.per_method.hsv_hist=aqe"], work, env)
    assert md5s(work) != before
    _run(["git", "checkout", "--", "."], work, env)
    _run(DVC + ["checkout", "-q"], work, env)
    after = md5s(work)
    differ = sorted(p for p in before if after.get(p) != before[p])
    assert not differ, f"not restored by git checkout + dvc checkout: {differ}"
    _run(DVC + ["exp", "apply", "loo"], work, env)
    assert md5s(work) != before
    _run(DVC + ["exp", "apply", "base"], work, env)
    after = md5s(work)
    differ = sorted(p for p in before if after.get(p) != before[p])
    assert not differ, f"not restored by dvc exp apply: {differ}"
    _run(["git", "checkout", "--", "."], work, env)
    _run(DVC + ["checkout", "-q"], work, env)


def test_adding_or_switching_datasets_deletes_nothing(built):
    work, env = built
    first = of_dataset(md5s(work), "synthetic")
    assert len(first) > 20
    _run(DVC + ["exp", "run", "-n", "two", "-S", "+dataset@datasets.other=synthetic",
                "-S", "datasets.other.seed=7", "-S", "datasets.other.n_classes=3"], work, env)
    now = md5s(work)
    assert of_dataset(now, "synthetic") == first  # side by side, untouched
    assert "metrics/other.json" in now and "reports/other/report.md" in now
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert "evaluate@synthetic" in lock and "evaluate@other" in lock
    _run(DVC + ["exp", "run", "-n", "only-other", "-S", "~datasets.synthetic", "-S", "+dataset@datasets.other=synthetic",
                "-S", "datasets.other.seed=7", "-S", "datasets.other.n_classes=3"], work, env)
    now = md5s(work)
    # an experiment without `synthetic`: its committed results (git) stay; DVC's exp run takes the dropped
    # dataset's cached data out of the workspace, never out of the cache: checkout brings back every byte
    committed = {p for p in first if p.startswith(("metrics/", "reports/"))}
    assert {p: now.get(p) for p in committed} == {p: first[p] for p in committed}
    _run(["git", "checkout", "--", "."], work, env)
    _run(DVC + ["checkout", "-q"], work, env)
    assert of_dataset(md5s(work), "synthetic") == first


def _printed_commands(repo_root: Path) -> list[str]:
    """The bash block of docs/experiments.md's "Comparing experiments" section, as printed."""
    import re

    text = (repo_root / "docs" / "experiments.md").read_text()
    section = text.split("## Comparing experiments", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_comparing_experiments_commands_run_as_printed(tmp_path, repo_root, random_weights):  # noqa: F811
    import os
    import shutil

    from pipeline_repo import copy_repo, init_repo, use_random_mobilenet
    from test_pipeline_e2e import EXPERIMENT

    from cbir.fileio import sha256_file

    commands = _printed_commands(repo_root)
    assert any(c.startswith("dvc exp run") for c in commands) and "make compare" in commands
    work, env = tmp_path / "repo", pipeline_env()
    copy_repo(repo_root, work)
    shutil.copy(repo_root / "Makefile", work / "Makefile")
    use_random_mobilenet(work, random_weights, sha256_file(random_weights))
    (work / "conf" / "experiment" / "default.yaml").write_text(EXPERIMENT + "  - /method@methods.hog: hog\n")
    init_repo(work, repo_root, env)
    os.symlink(Path(sys.executable).parent.parent, work / ".venv")  # the printed `.venv/bin/python`
    _run(DVC + ["repro"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "results"], work, env)
    outputs = []
    for command in commands:
        outputs.append(_run(["bash", "-c", command], work, env).stdout)
    shown = "\n".join(outputs)
    assert "hog-aqe" in shown and "k20" in shown and "synthetic" in shown
    assert max(len(line) for line in outputs[2].splitlines()) <= 120
    assert outputs[-1].startswith("experiment,dataset,")


def _way_back_commands(repo_root: Path) -> list[str]:
    """The bash block of docs/experiments.md's "The way back from an experiment" section, as printed."""
    import re

    text = (repo_root / "docs" / "experiments.md").read_text()
    section = text.split("## The way back from an experiment", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_documented_way_back_from_an_experiment_that_adds_a_method_and_a_dataset(built, repo_root):
    """Run the documented lines as printed: after each return, `dvc status` is clean and every file under data/,
    models/, metrics/ and reports/ is main's, with no file more."""
    import os
    import subprocess

    work, env = built
    commands = _way_back_commands(repo_root)
    assert commands[0].startswith("dvc exp run") and commands[2].startswith("dvc exp apply")
    link = work / ".venv"
    if not link.exists():
        os.symlink(Path(sys.executable).parent.parent, link)  # the printed `.venv/bin/python`
    # main's committed state (an earlier test of this module went back without the clean step)
    subprocess.run(["bash", "-c", commands[1]], cwd=work, env=env, capture_output=True, text=True, check=True)
    before = md5s(work)
    for i, command in enumerate(commands):
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        # DVC's own checkout before an experiment warns only about outputs of stages it has never run (the added
        # dataset's), never about main's
        warned = [line for line in (proc.stdout + proc.stderr).splitlines() if "No file hash info found" in line]
        assert all("/more" in line for line in warned), warned
        now = md5s(work)
        if i % 2 == 0:  # the experiment: a second dataset and a method beside main's
            assert any(p.startswith("reports/more/") for p in now) and any("hog-28" in p for p in now)
        else:
            assert now == before, f"after `{command}`: differ {sorted(set(now) ^ set(before))[:10]} " \
                f"{sorted(p for p in before if now.get(p) != before[p])[:10]}"
            status = _run(DVC + ["status", "--json"], work, env).stdout.strip()
            assert status in ("{}", ""), status
    link.unlink()
