"""The command line: one clear line and exit status 2 for every problem the user can fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cbir.cli import build_parser, main


def test_every_stage_has_a_command():
    parser = build_parser()
    for argv in (["params"], ["download"], ["weights", "x"], ["curate"], ["extract"], ["extract", "--method", "m"],
                 ["evaluate"], ["evaluate", "--method", "m"], ["across"]):
        assert callable(parser.parse_args(argv).func)


def test_missing_params_is_one_line(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "curate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "python -m cbir params" in err[0]


def test_unknown_method_is_one_line(repo_root, capsys):
    assert main(["--root", str(repo_root), "extract", "--dataset", "tuxpaint", "--method",
                 "no-such-method"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "no-such-method" in err[0]


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cbir", "--root", str(tmp_path), "evaluate"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help_lists_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for stage in ("download", "weights", "curate", "extract", "evaluate", "across"):
        assert stage in out


def test_help_lists_methods_datasets_and_splits(repo_root, capsys):
    """`cbir query --help` (and the stage commands taking a method) name the valid choices."""
    import yaml as _yaml

    with pytest.raises(SystemExit):
        build_parser(repo_root).parse_args(["--root", str(repo_root), "query", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    methods = list(_yaml.safe_load((repo_root / "params.yaml").read_text())["methods"])
    assert "methods in params.yaml: " + ", ".join(methods) in text
    datasets = sorted(p.stem for p in (repo_root / "conf" / "dataset").glob("*.yaml"))
    assert {"corel1k", "fashion_mnist", "folder", "synthetic", "tuxpaint", "neardup", "roxford5k"} <= set(datasets)
    assert "datasets (dvc exp run -S '+dataset@datasets.NAME=NAME'): " + ", ".join(datasets) in text
    assert "splits (dvc exp run -S split=NAME): holdout, leave_one_out, predefined" in text
    assert "mobilenet_v2-gap-aqe" in text  # a method config not in the default experiment
    with pytest.raises(SystemExit):
        build_parser(repo_root).parse_args(["evaluate", "--help"])
    assert "methods in params.yaml" in capsys.readouterr().out


def test_split_predefined_composes_as_the_readme_says(repo_root):
    """`dvc exp run -S split=predefined` composes (it used to fail: no conf/split/predefined.yaml)."""
    import yaml as _yaml

    from cbir.config import compose_yaml

    params = _yaml.safe_load(compose_yaml(repo_root / "conf", ["split=predefined"]))
    assert params["split"] == {"protocol": "predefined", "queries_per_class": None, "query_fraction": None,
                               "seed": 0}
