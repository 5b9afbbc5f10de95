"""The README is the front door: its results table is the pipeline's, and its commands exist."""

from __future__ import annotations

import json
import re

import yaml

from cbir.report.readme import END, START, results_block


def test_readme_results_table_matches_committed_metrics(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert len(params["datasets"]) >= 2
    for ds in params["datasets"]:
        metrics_file = repo_root / "metrics" / f"{ds}.json"
        assert metrics_file.exists(), f"metrics of {ds} are not committed: run `make repro`"
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
    summary = block.split("Best per dataset", 1)[1].splitlines()
    assert summary[2:] == [
        "| dataset | best deep method | P@10 [95% CI] | best traditional method | P@10 [95% CI] |",
        "|---|---|---|---|---|",
        "| `alpha` | `d2` | 0.700 [0.600, 0.800] | `h1` | 0.300 [0.200, 0.400] |",
        "| `beta` | `d1` | 0.500 [0.400, 0.600] | `d2` | 0.700 [0.600, 0.800] |"]
    assert block.count("| method |") == 1  # one table across datasets
    across = block.split("| method |", 1)[1].splitlines()
    assert across[0] == " alpha P@10 | alpha mAP | beta P@10 | beta mAP |"
    assert across[2] == "| `d1` | 0.500 [0.400, 0.600] | – | 0.500 [0.400, 0.600] | – |"
    assert "- `alpha`: held-out queries, ? queries against ? database images" in block


def test_across_table_states_each_protocol(tmp_path):
    from cbir.report.across import csv_text, latex, markdown

    found = {"tux": {"metrics": {"m": {"p@10": 0.5, "p@10_lo": 0.4, "p@10_hi": 0.6, "map": 0.3, "map_lo": 0.2,
                                       "map_hi": 0.4}},
                     "protocol": "holdout", "n_queries": 60, "n_database": 679},
             "corel": {"metrics": {"m": {"p@10": 0.9, "map": 0.8}, "n": {"p@10": 0.1}},
                       "protocol": "leave_one_out", "n_queries": 1000, "n_database": 1000}}
    text = markdown(found)
    assert "| `m` | 0.500 [0.400, 0.600] | 0.300 [0.200, 0.400] | 0.900 | 0.800 |" in text
    assert "| `n` | – | – | 0.100 | – |" in text
    assert "- `tux`: held-out queries, 60 queries against 679 database images" in text
    assert "- `corel`: leave-one-out (every image queries the others), 1000 queries against 1000" in text
    rows = csv_text(found).splitlines()
    assert rows[1] == "m,tux,holdout,60,679,0.5,0.4,0.6,0.3,0.2,0.4"
    assert r"\multicolumn{2}{c}{corel}" in latex(found) and "60 queries against 679" in latex(found)
