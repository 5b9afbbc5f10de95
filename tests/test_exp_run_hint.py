"""A stage failing inside `dvc exp run` says, on its one error line, exactly what restores the workspace."""

from __future__ import annotations

import re
import subprocess

from cbir.cli import exp_run_hint, main


def test_failed_stage_in_exp_run_says_how_to_restore(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert main(["--root", str(tmp_path), "curate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith("this `dvc exp run` failed: restore the workspace with "
                           "`git checkout HEAD -- params.yaml dvc.lock metrics reports && dvc checkout`")


def test_no_hint_outside_exp_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert main(["--root", str(tmp_path), "curate"]) == 2
    assert "dvc exp run" not in capsys.readouterr().err


def git(root, *args) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def test_the_restore_hint_undoes_params_that_a_killed_exp_run_left_staged(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    git(tmp_path, "init", "-q")
    for name, text in (("params.yaml", "seed: 0\n"), ("dvc.lock", "schema: '2.0'\n"), ("metrics/m.json", "{}\n"),
                       ("reports/r.md", "# r\n")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    (tmp_path / "params.yaml").write_text("seed: 7\n")  # what DVC leaves after a killed `dvc exp run`: staged
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "checkout", "--", "params.yaml")  # the old hint: restores from the index, keeps seed 7
    assert (tmp_path / "params.yaml").read_text() == "seed: 7\n"
    command = re.search(r"`(git checkout [^`&]*?)\s*&&", exp_run_hint()).group(1)
    git(tmp_path, *command.split()[1:])
    assert (tmp_path / "params.yaml").read_text() == "seed: 0\n"
    assert git(tmp_path, "status", "--porcelain") == ""
