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
