"""A throw-away copy of this repository for end-to-end tests: the real dvc.yaml, conf/ and src/ in a
temporary git + DVC repo, with the experiment trimmed to run in seconds on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

TINY_EVALUATION = {"n_bootstrap": 200, "n_permutations": 500}
#: small thumbnails at screen resolution: every figure is still drawn and written, in a fraction of the time
TINY_FIGURES = {"thumb_size": 48, "dpi": 72}


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run ``cmd``; a failure shows the end of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def pipeline_env() -> dict:
    """The environment the pipeline runs under: this Python first on PATH, DVC analytics off, a git identity."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}


def copy_repo(repo_root: Path, work: Path, committed_results: bool = False) -> None:
    """dvc.yaml, conf/, src/, examples/ and the report templates of ``repo_root`` into ``work``.

    ``committed_results`` also copies ``metrics/`` and ``reports/<dataset>/`` as committed (the default
    experiment's results), so a test can check that another experiment leaves them untouched.
    """
    work.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(repo_root / name, work / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pdf")
    for folder in ("conf", "src", "examples"):
        shutil.copytree(repo_root / folder, work / folder, ignore=ignore)
    (work / "reports").mkdir()
    shutil.copy(repo_root / "reports" / "dvc_plots_template.html", work / "reports")
    shutil.copytree(repo_root / "reports" / "vega", work / "reports" / "vega")
    if committed_results:
        shutil.copytree(repo_root / "metrics", work / "metrics")
        for path in (repo_root / "reports").iterdir():
            if path.is_dir() and path.name != "vega":
                shutil.copytree(path, work / "reports" / path.name, ignore=ignore)
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / ".gitkeep").touch()


def edit_yaml(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def use_random_mobilenet(work: Path, weights: Path, sha256: str, image_size: int = 64) -> None:
    """The MobileNetV2 backbone read from a local (random) weight file with its sha256 pinned."""
    edit_yaml(work / "conf" / "backbone" / "mobilenet_v2.yaml", source="file", file=str(weights), sha256=sha256,
              image_size=image_size, batch_size=16)


def init_repo(work: Path, repo_root: Path, env: dict, overrides: list[str] | None = None) -> None:
    """git + DVC init, params.yaml composed (with Hydra ``overrides``), everything committed."""
    for evaluation in (work / "conf" / "evaluation").glob("*.yaml"):
        edit_yaml(evaluation, **TINY_EVALUATION)
    edit_yaml(work / "conf" / "curate" / "default.yaml", min_per_class=3)
    edit_yaml(work / "conf" / "figures" / "default.yaml", **TINY_FIGURES)
    run(["git", "init", "-q"], work, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], work, env)
    shutil.copy(repo_root / ".dvc" / "config", work / ".dvc" / "config")
    run([sys.executable, "-m", "cbir", "params", *(overrides or [])], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "pipeline"], work, env)
