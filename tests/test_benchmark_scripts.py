"""Every script under ``benchmarks/`` runs on today's params at tiny sizes: a few images, one round.

The scripts that read a project (``query.py``, ``precision.py``) run on a small project built here: today's
``params.yaml`` with two datasets (so ``--dataset`` is needed), fourteen generated images, the random
MobileNetV2 as the weights stage writes it, and the ``hog`` features from the extract stage.  The others
generate their own data.  ``rerun.py`` and ``pipeline.py`` (full runs of the default experiment) are left out.  Each script writes
its JSON into the test's folder, never into ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray_helpers import make_workspace

from cbir.config import load_params, select_dataset
from cbir.stages.extract import run as run_extract

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
#: scripts the smoke test does not run, and why
EXCLUDED = {"rerun.py": "the lead's: a full `dvc exp run` of the default experiment",
            "pipeline.py": "a fresh `dvc repro` of the default experiment in a clone (minutes; never in tests)"}
#: the other dataset of the project (its entry as today's params.yaml has it)
OTHER = "neardup"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, random_mobilenet_file):
    """A project with today's params (datasets ``toy`` and ``neardup``), its images, weights and hog features."""
    root, workspace_params, _ = make_workspace(tmp_path_factory.mktemp("bench-project"), random_mobilenet_file,
                                                  n_images=14)  # 12 database images: P@10 is defined
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["datasets"] = {"toy": {**params["datasets"]["tuxpaint"], "name": "toy"}, OTHER: params["datasets"][OTHER]}
    params["backbones"]["mobilenet_v2"] = {**params["backbones"]["mobilenet_v2"],
                                           **workspace_params["backbones"]["mobilenet_v2"]}
    params["extract"]["calibration"]["size"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    run_extract(select_dataset(load_params(root), "toy"), root, "hog")
    return root


def script(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    command = ["bash"] if name.endswith(".sh") else [sys.executable]
    return subprocess.run(command + [str(BENCHMARKS / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def passed(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_every_script_has_a_smoke_run():
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh")}
    smoked = {name.removeprefix("test_").replace("_script", "") for name in globals()
              if name.startswith("test_") and name.endswith("_script")}
    expected = {name.removesuffix(".py").removesuffix(".sh") for name in scripts - set(EXCLUDED)}
    assert expected <= smoked, f"benchmarks without a smoke run: {sorted(expected - smoked)}"


def test_query_script(project, tmp_path):
    refused = script("query.py", "--root", project, "--method", "hog", "--n", 2, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stdout.strip() == (f"query benchmark not run: this experiment has 2 datasets (toy, {OTHER}): "
                                      "choose one with --dataset NAME")
    out = tmp_path / "query.json"
    passed(script("query.py", "--root", project, "--dataset", "toy", "--method", "hog", "--n", 3, "--warmup", 1,
                  "--out", out, cwd=tmp_path))
    result = json.loads(out.read_text())
    features = np.load(project / "data" / "features" / "toy" / "hog.npy")
    assert (result["dataset"], result["n_queries"], result["n_database"], result["dim"]) == ("toy", 3, 12,
                                                                                             features.shape[1])
    assert set(result["latency_ms"]) == {"decode", "embed", "search", "total"}


def test_precision_script(project, tmp_path):
    out = tmp_path / "precision.json"
    passed(script("precision.py", "--root", project, "--dataset", "toy", "--methods", "mobilenet_v2-gap",
                  "--n-bootstrap", 10, "--out", out, cwd=tmp_path))
    result = json.loads(out.read_text())
    assert result["machine"]["dataset"] == "toy" and result["machine"]["n_images"] == 14
    assert [r["requested"] for r in result["rows"]] == ["fp32", "bf16", "int8"]
    fp32 = result["rows"][0]
    assert fp32["cosine_min"] == 1.0 and fp32["map_diff"] == 0.0  # fp32 against itself
    assert result["rows"][2]["calibration"]["size"] == 4


def test_extract_script(tmp_path):
    out = tmp_path / "extract.json"
    passed(script("extract.py", "--models", "mobilenet_v2", "--n-speed", 4, "--n-calibration", 2, "--n-handcrafted", 4,
                  "--image-size", 32, "--rounds", 1, "--batch-size", 2, "--rss-sizes", 8, "--rss-image-size", 32,
                  "--out", out, cwd=tmp_path))
    result = json.loads(out.read_text())
    assert [model["model"] for model in result["deep"]] == ["mobilenet_v2"]
    variants = {row["variant"] for row in result["deep"][0]["rows"]}
    assert {"naive", "torch-fp32", "openvino-fp32"} <= variants


def test_integrity_script(tmp_path):
    out = tmp_path / "integrity.json"
    passed(script("integrity.py", "--rows", 300, "--dim", 8, "--rounds", 1, "--out", out, cwd=tmp_path))
    result = json.loads(out.read_text())
    assert result["shape"] == [300, 8] and result["features_bytes"] == 128 + 300 * 8 * 4


def test_search_script(tmp_path):
    out = tmp_path / "search.json"
    passed(script("search.py", "--sizes", 300, "--dims", 8, "--queries", 10, "--repeat", 1, "--nlist", 4,
                  "--nprobe", 2, "--clusters", 5, "--out", out, cwd=tmp_path))
    rows = json.loads(out.read_text())["results"]
    assert {r["method"] for r in rows} == {"matmul", "exact", "flat", "ivf", "hnsw"}
    assert all(r["recall_at_k"] == 1.0 for r in rows if r["method"] in ("matmul", "exact", "flat"))


def test_serve_million_script(tmp_path):
    out = tmp_path / "serve.json"
    passed(script("serve_million.py", "--small", "--n", 2000, "--queries", 40, "--recall-queries", 20, "--nlist", 16,
                  "--clients", 2, "--rounds", 1, "--out", out, cwd=tmp_path))
    result = json.loads(out.read_text())
    assert result["sizes"]["n"] == 2000 and result["latency_ms"]["n"] == 40
    assert result["features_bytes"] == 128 + 2040 * 32 * 4
    assert 0.5 <= result["recall_at_10"] <= 1.0
    assert result["memory_after_load_mib"]["VmHWM"] >= result["memory_after_start_mib"]["VmRSS"] > 0


def test_thin_image_script(tmp_path):
    out = tmp_path / "thin_image.json"
    passed(script("thin_image.py", "--small", "--out", out, cwd=tmp_path))
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == {"normal", "thinnest"}
    for case in cases.values():
        assert all(case[method]["peak_bytes"] > 0 for method in ("mobilenet_v2-gap", "hog"))  # no case failed


def test_gpu_script(tmp_path):
    """The CPU fallback of the GPU benchmark, tiny sizes."""
    out = tmp_path / "gpu.json"
    passed(script("gpu.sh", "--device", "cpu", "--images", 8, "--unique", 4, "--batch-size", 4, "--workers", 0,
                  "--db", 2000, "--dim", 32, "--queries", 20, "--pq-m", 8, "--nlist", 16, "--nprobe", 4,
                  "--no-install", "--out", out, cwd=tmp_path))
    result = json.loads(out.read_text())
    assert result["config"]["device"] == "cpu" and result["config"]["images"] == 8


def test_evaluation_script(tmp_path):
    """The evaluation benchmark at its own smoke size."""
    out = tmp_path / "evaluation.json"
    passed(script("evaluation.py", "--small", "--out", out, cwd=tmp_path))
    runs = json.loads(out.read_text())["runs"]
    assert "evaluate" in {run["kind"] for run in runs}
    assert all(run["identical"] for run in runs if "identical" in run)  # the new code's numbers are the old ones
