"""The per-dataset extract and evaluate stages redo a method's work only when that method's inputs changed (its
settings, its inputs' bytes, the code it runs), and what they reuse is exactly what a run from nothing writes."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cbir.stages import curate, download, evaluate, extract
from test_figures_report_stages import SMALL_PARAMS

REPO = Path(__file__).resolve().parents[1]
DS = "syn"


def _params() -> dict:
    params = copy.deepcopy(SMALL_PARAMS)
    composed = yaml.safe_load((REPO / "params.yaml").read_text())
    params["feedback"] = {**composed["feedback"], "rounds": 1}
    params["backbones"] = {}
    params["split"] = {**params["split"]}
    params["retrieval"] = {**composed["retrieval"], **params["retrieval"], "per_method": {}}
    params["figures"] = {**composed["figures"], **params["figures"]}
    params["evaluation"] = {**composed["evaluation"], **params["evaluation"]}
    return params


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not {".cbir-tmp", ".cbir-runs"} & set(p.parts)}


@pytest.fixture
def counted(monkeypatch):
    """The methods each stage computed (its per-method work function, spied on)."""
    calls: dict[str, list[str]] = {"extract": [], "evaluate": []}
    real_extract, real_evaluate = extract.extract_method, evaluate.evaluate_method

    def spy_extract(params, name, root, key):
        calls["extract"].append(name)
        return real_extract(params, name, root, key)

    def spy_evaluate(params, name, root, key):
        calls["evaluate"].append(name)
        return real_evaluate(params, name, root, key)

    monkeypatch.setattr(extract, "extract_method", spy_extract)
    monkeypatch.setattr(evaluate, "evaluate_method", spy_evaluate)
    return calls


def _pipeline(root: Path, params: dict) -> None:
    download.run(params, root)
    curate.run(params, root)
    extract.run(params, root)
    evaluate.run(params, root)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The small pipeline run once from nothing."""
    root = tmp_path_factory.mktemp("base") / "run"
    _pipeline(root, _params())
    return root


def _copy(base: Path, tmp_path: Path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(base, root)
    return root


def test_one_methods_change_redoes_that_method_alone_with_the_bytes_of_a_fresh_run(base, tmp_path, counted):
    root = _copy(base, tmp_path)
    params = _params()
    first = _digests(root)
    _pipeline(root, params)  # nothing changed: every method reused, the same bytes
    assert counted == {"extract": [], "evaluate": []}
    assert _digests(root) == first

    # one method's search setting: only its evaluation is redone, nothing extracted
    changed = copy.deepcopy(params)
    changed["retrieval"]["per_method"]["hsv_hist"] = {"rerank": {"kind": "aqe", "n": 2, "alpha": 3.0}}
    _pipeline(root, changed)
    assert counted == {"extract": [], "evaluate": ["hsv_hist"]}
    fresh = tmp_path / "fresh"
    _pipeline(fresh, changed)
    assert _digests(root) == _digests(fresh)  # reuse writes what a run from nothing writes

    # one method's own config: that method extracted and evaluated again, the other untouched
    counted["extract"].clear(), counted["evaluate"].clear()
    changed["methods"]["color_moments"] = {**changed["methods"]["color_moments"]}
    changed["methods"]["color_moments"]["descriptor"] = {**changed["methods"]["color_moments"]["descriptor"],
                                                         "max_side": 64}
    _pipeline(root, changed)
    assert counted == {"extract": ["color_moments"], "evaluate": ["color_moments"]}


def test_precision_or_device_never_redo_a_traditional_method(base, tmp_path, counted):
    root = _copy(base, tmp_path)
    params = _params()
    changed = copy.deepcopy(params)
    changed["extract"] = {**changed["extract"], "precision": "int8"}
    changed["device"] = "cuda"
    extract.run(changed, root)
    assert counted["extract"] == []


def test_a_damaged_or_dropped_result_is_redone_and_a_removed_method_leaves_no_file(base, tmp_path, counted):
    root = _copy(base, tmp_path)
    params = _params()
    reference = _digests(root)
    features = root / "data" / "features" / DS / "hsv_hist.npy"
    data = np.load(features)
    data[0, 0] += 1.0
    np.save(features, data)
    (root / "data" / "retrieval" / DS / "color_moments.csv").unlink()
    _pipeline(root, params)
    assert counted == {"extract": ["hsv_hist"], "evaluate": ["color_moments"]}
    assert _digests(root) == reference

    smaller = copy.deepcopy(params)
    del smaller["methods"]["color_moments"]
    smaller["evaluation"]["baseline"] = None
    _pipeline(root, smaller)
    left = [p for p in _digests(root) if "color_moments" in p and not p.startswith("data/raw")]
    assert left == []


def test_an_edit_to_one_descriptor_changes_only_its_methods_code_key(tmp_path):
    from cbir.codegraph import SRC
    from cbir.settings import MethodRun

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    keys = {m: extract.method_code(MethodRun.from_params(params, m)) for m in params["methods"]}
    src = tmp_path / "src"
    shutil.copytree(SRC / "cbir", src / "cbir", ignore=shutil.ignore_patterns("__pycache__"))
    assert {m: extract.method_code(MethodRun.from_params(params, m), src) for m in params["methods"]} == keys
    module = src / "cbir" / "features" / "handcrafted" / "colour_histogram.py"
    module.write_bytes(module.read_bytes() + b"\n# an edit\n")
    after = {m: extract.method_code(MethodRun.from_params(params, m), src) for m in params["methods"]}
    assert {m for m in keys if keys[m] != after[m]} == {"hsv_hist", "fusion"}
    module = src / "cbir" / "features" / "cnn" / "pooling.py"
    module.write_bytes(module.read_bytes() + b"\n# an edit\n")
    deep = {m: extract.method_code(MethodRun.from_params(params, m), src) for m in params["methods"]}
    assert {m for m in keys if after[m] != deep[m]} == {m for m, c in params["methods"].items() if c["kind"] == "deep"}
