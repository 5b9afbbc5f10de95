"""notebooks/explore.ipynb runs top to bottom on the default: the real params.yaml and the committed results
in a copy of the repository's tracked files (as a clean clone has them, without data/), and with data/ where
a run wrote it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nbclient
import nbformat
import pytest
import yaml
from test_figures_report_stages import small_run

from cbir.config import dataset_names

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def execute(root: Path, **env) -> list:
    """Execute the notebook with ``CBIR_ROOT=root`` (and ``env``) from ``root/notebooks``; its code outputs."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CBIR_ROOT", str(root))
        for key, value in env.items():
            patch.setenv(key, value)
        (root / "notebooks").mkdir(exist_ok=True)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(root / "notebooks")}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [f"{out.ename}: {out.evalue}" for out in outputs if out.output_type == "error"]
    assert not errors, errors
    return outputs


def streams(outputs: list) -> str:
    return "\n".join(out.get("text", "") for out in outputs if out.output_type == "stream")


def tables(outputs: list) -> list[str]:
    return [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]


def images(outputs: list) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs)


def test_notebook_is_stored_with_the_outputs_of_one_clean_run():
    """Committed executed top to bottom (counts 1..n) on the default's committed results, without errors or
    machine paths, through public functions only (no ``_private`` name, no removed ``cbir.viz``)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [out for cell in code for out in cell.outputs]
    assert outputs and not [out for out in outputs if out.output_type == "error"]
    assert images(outputs) == 2
    stored = json.dumps([out for out in outputs if out.output_type == "stream"])
    assert "/tmp" not in stored and "/work" not in stored and "/home" not in stored
    assert "showing 'tuxpaint'" in stored and "data/ absent" in stored
    source = "\n".join(cell.source for cell in code)
    assert "cbir.viz" not in source and not re.search(r"import[^\n]*\b_[a-z]", source)
    assert not re.search(r"\.\s*_[a-z]\w*\(", source)


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory, repo_root) -> Path:
    """The repository's tracked files as a clean clone has them (no data/, no models/), in a temporary folder."""
    copy = tmp_path_factory.mktemp("clean") / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo_root, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = repo_root / name
        if source.is_file() and not name.endswith(".pdf"):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, copy / name)
    assert not (copy / "data" / "curated").exists()
    return copy


def test_notebook_runs_on_the_default_from_a_clean_checkout(clean_copy):
    params = yaml.safe_load((clean_copy / "params.yaml").read_text())
    datasets = dataset_names(params)
    metrics = json.loads((clean_copy / "reports" / datasets[0] / "metrics.json").read_text())
    outputs = execute(clean_copy)
    text = streams(outputs)
    assert f"experiment datasets {datasets}; showing {datasets[0]!r}: {len(metrics)} methods, top-" in text
    assert "data/ absent (a clean checkout)" in text and text.count("skipped: no data/") == 2
    assert f"the pipeline's reports/{datasets[0]}/figures/trials_{list(params['methods'])[0]}.png" in text
    html = tables(outputs)
    assert all(f">{ds}<" in html[0] for ds in datasets)  # mAP across every dataset of the experiment
    assert any("map 95% CI" in t and all(f">{m}<" in t for m in metrics) for t in html)
    assert images(outputs) == 2  # the P@k curves, and the saved sample trials
    second = execute(clean_copy, CBIR_DATASET=datasets[-1])
    assert f"showing {datasets[-1]!r}" in streams(second)


def test_notebook_uses_data_where_a_run_wrote_it(tmp_path):
    """A run with data/ (a small generated dataset; params.yaml of today's shape: ``datasets:`` keyed by name)."""
    params = small_run(tmp_path, figures=False)
    dataset = {key: value for key, value in params.pop("dataset").items() if key != "name"}
    params = {"datasets": {"syn": dataset}, **params}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outputs = execute(tmp_path)
    text = streams(outputs)
    assert "experiment datasets ['syn']; showing 'syn': 2 methods" in text and "data/ present" in text
    assert "hsv_hist: 32 x 128 float32" in text.replace("  ", "")
    assert "P@k from the ranking files equals the metrics: True" in text
    assert "same top-5 as the ranking file: True" in text  # the query engine ranks as the pipeline
    assert images(outputs) == 2  # the P@k curves, and the sample trials drawn here
    assert any("from rankings" in t for t in tables(outputs))
    assert "reports/datasets.csv not written yet: run `dvc repro across`" in text
