"""A stage failing inside `dvc exp run` says, on its one error line, exactly what restores the workspace."""

from __future__ import annotations

from cbir.cli import main


def test_failed_stage_in_exp_run_says_how_to_restore(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert main(["--root", str(tmp_path), "curate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith("this `dvc exp run` failed: restore the workspace with "
                           "`git checkout -- params.yaml dvc.lock metrics reports && dvc checkout`")


def test_no_hint_outside_exp_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert main(["--root", str(tmp_path), "curate"]) == 2
    assert "dvc exp run" not in capsys.readouterr().err
