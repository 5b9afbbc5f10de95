"""The README is the front door: its results table is the pipeline's, and its commands exist."""

from __future__ import annotations

import json
import re

import yaml

from cbir.report.readme import END, START, results_block


def test_readme_results_table_matches_committed_metrics(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    metrics_file = repo_root / "metrics" / f"{params['dataset']['name']}.json"
    assert metrics_file.exists(), "metrics of the default experiment are not committed: run `make repro`"
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) == set(params["methods"]), "metrics/ is stale: run `make repro`"
    readme = (repo_root / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == results_block(repo_root).strip(), "README is stale: run `python -m cbir readme`"


def test_readme_shows_the_two_commands_first(repo_root):
    readme = (repo_root / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert "make repro" in first_block and "make test" in first_block
    makefile = (repo_root / "Makefile").read_text()
    for target in ("repro:", "test:", "paper:"):
        assert f"\n{target}" in makefile


def test_ci_runs_the_readme_test_command(repo_root):
    assert "make test" in (repo_root / ".ci" / "run").read_text()


def test_results_block_has_a_cross_dataset_summary_from_a_fresh_clone(tmp_path):
    """Only metrics/ and reports/ exist (a fresh clone): the full metrics and each method's kind come from
    reports/<ds>/metrics.json; features JSON and params.yaml, when present, name the kind first."""
    full = {"d1": {"p@10": 0.5, "ci95": {"p@10": [0.4, 0.6]}, "kind": "deep"},
            "d2": {"p@10": 0.7, "ci95": {"p@10": [0.6, 0.8]}, "kind": "deep"},
            "h1": {"p@10": 0.3, "ci95": {"p@10": [0.2, 0.4]}, "kind": "handcrafted"},
            "x": {"p@10": 0.9, "ci95": {"p@10": [0.8, 1.0]}}}
    for ds in ("alpha", "beta"):
        (tmp_path / "reports" / ds).mkdir(parents=True)
        (tmp_path / "reports" / ds / "metrics.json").write_text(json.dumps(full))
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{ds}.json").write_text(json.dumps({m: {"p@10": e["p@10"]} for m, e in full.items()}))
    # beta: the features JSON says d2 is handcrafted; params.yaml names x's kind
    (tmp_path / "data/features/beta").mkdir(parents=True)
    (tmp_path / "data/features/beta/d2.json").write_text(json.dumps({"config": {"kind": "handcrafted"}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"methods": {"x": {"kind": "precomputed"}}}))
    block = results_block(tmp_path)
    summary = block.split("Across datasets", 1)[1].splitlines()
    assert summary[2:] == [
        "| dataset | best deep method | P@10 [95% CI] | best traditional method | P@10 [95% CI] |",
        "|---|---|---|---|---|",
        "| `alpha` | `d2` | 0.700 [0.600, 0.800] | `h1` | 0.300 [0.200, 0.400] |",
        "| `beta` | `d1` | 0.500 [0.400, 0.600] | `d2` | 0.700 [0.600, 0.800] |"]
    assert block.count("| method |") == 2  # one full table per dataset
