"""The pipeline's graph is the code: every dvc.yaml stage is one module, ``cbir.stages.<stage>``; its code deps
are exactly the modules its command runs (function-level imports and the ``cli`` entry included; a folder only
where the stage runs the whole package); stages never import each other; and an edit to any module a stage runs
makes that stage, and only the stages that run it, stale in ``dvc status``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from cbir.codegraph import SRC, direct_imports, files, module_file, stage_closure
from cbir.stages import STAGES
from pipeline_repo import copy_repo, init_repo, pipeline_env, run


def _dvc_stages(repo_root: Path) -> dict[str, dict]:
    """``dvc.yaml``'s stage definitions (a ``foreach`` stage's ``do`` body)."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def _code_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if str(d).startswith("src/")]


def _py_files(folder: Path) -> set[str]:
    root = SRC.parent
    return {p.relative_to(root).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def test_every_stage_is_one_module_and_its_command(repo_root):
    stages = _dvc_stages(repo_root)
    assert set(stages) == set(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"].split()[:4] == ["python", "-m", "cbir", name], stage["cmd"]
        assert module_file(f"cbir.stages.{name}") is not None
        from cbir.cli import handler
        assert handler(name).__module__ == f"cbir.stages.{name}" and handler(name).__name__ == "run"


@pytest.mark.parametrize("name", STAGES)
def test_code_deps_are_exactly_what_the_stage_runs(repo_root, name):
    """Every module the stage runs is covered by a dep; every file dep is run; a folder dep is run whole."""
    deps = _code_deps(_dvc_stages(repo_root)[name])
    runs = {p.as_posix() for p in files(stage_closure(name))}
    covered: set[str] = set()
    unused, partly = [], []
    for dep in deps:
        path = repo_root / dep
        if path.is_dir():
            inside = _py_files(path)
            covered |= inside
            if inside - runs:
                partly.append(f"{dep} (never runs {sorted(inside - runs)})")
        else:
            covered.add(dep)
            if dep not in runs:
                unused.append(dep)
    assert not sorted(runs - covered), f"{name} runs modules no dep covers: {sorted(runs - covered)}"
    assert not unused, f"{name} lists code deps it never runs: {unused}"
    assert not partly, f"{name} has folder deps it runs only in part: {partly}"


def test_the_closure_follows_function_level_imports_and_named_callables():
    """An optional engine imported inside a function, and a built-in named as ``module:function`` in a table,
    are code the extract stage runs; the command line's other commands are not."""
    extract = stage_closure("extract")
    assert {"cbir.features.ray_engine", "cbir.features.handcrafted.hog", "cbir.settings"} <= extract
    assert "cbir.app.server" not in extract and "cbir.report.readme" not in extract
    assert "cbir.features.ray_engine" not in direct_imports("cbir.stages.extract", top_level_only=True)
    assert "cbir.features.ray_engine" in direct_imports("cbir.stages.extract")  # imported inside run
    assert "cbir.features.handcrafted.hog" in direct_imports("cbir.features.handcrafted")  # a DESCRIPTORS entry


def test_stages_never_import_each_other():
    for name in STAGES:
        others = {f"cbir.stages.{o}" for o in STAGES if o != name}
        assert not stage_closure(name) & others, f"stage {name} imports {sorted(stage_closure(name) & others)}"


def _stale(work: Path, env: dict) -> set[str]:
    proc = run([sys.executable, "-m", "dvc", "status", "--json"], work, env)
    return {name for name, changes in json.loads(proc.stdout or "{}").items() if changes != ["always changed"]}


@pytest.mark.slow
def test_an_edit_to_a_module_makes_exactly_the_stages_that_run_it_stale(tmp_path, repo_root):
    """A small generated dataset's pipeline, recorded by DVC (outputs stood in by placeholders: only the graph is
    under test), then one module edited at a time: ``dvc status`` lists exactly the stages whose closure holds it."""
    work = tmp_path / "repo"
    copy_repo(repo_root, work)
    env = pipeline_env()
    init_repo(work, repo_root, env)
    with Repo(str(work)) as repo:
        for stage in repo.index.stages:
            for item in [*stage.outs, *stage.deps]:
                path = Path(item.fs_path)
                if getattr(item, "params", None) is not None or path.exists():
                    continue
                if path.suffix:  # a file (inside a folder output: that folder then holds it)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n" if path.suffix == ".json" else "placeholder\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text("placeholder\n")
    run([sys.executable, "-m", "dvc", "commit", "-f", "-q"], work, env)
    assert _stale(work, env) == set()
    stages = run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], work, env).stdout.split()
    for module in ("cbir.settings", "cbir.search.exact", "cbir.features.handcrafted.hog", "cbir.data.curate",
                   "cbir.report.across", "cbir.codegraph", "cbir.figures.style"):
        source = work / module_file(module).relative_to(SRC.parent)
        original = source.read_bytes()
        source.write_bytes(original + b"\n# edited\n")
        expected = {s for s in stages if module in stage_closure(s.split("@")[0])}
        assert _stale(work, env) == expected, module
        source.write_bytes(original)
    assert _stale(work, env) == set()
