"""The command line: one clear line and exit status 2 for every problem the user can fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cbir.cli import build_parser, main


def test_every_stage_has_a_command():
    parser = build_parser()
    for argv in (["params"], ["download"], ["weights", "x"], ["curate"], ["extract", "m"], ["retrieve", "m"],
                 ["evaluate"], ["figures"], ["report"]):
        assert callable(parser.parse_args(argv).func)


def test_missing_params_is_one_line(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "curate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "python -m cbir params" in err[0]


def test_unknown_method_is_one_line(repo_root, capsys):
    assert main(["--root", str(repo_root), "extract", "no-such-method"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "no-such-method" in err[0]


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cbir", "--root", str(tmp_path), "report"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help_lists_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for stage in ("download", "weights", "curate", "extract", "retrieve", "evaluate", "figures", "report"):
        assert stage in out
