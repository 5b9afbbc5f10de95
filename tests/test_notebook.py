"""notebooks/explore.ipynb runs top to bottom against a small generated run (CBIR_ROOT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_figures_report_stages import small_run

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def test_notebook_is_stored_with_the_outputs_of_one_clean_run():
    """Committed executed top to bottom (counts 1..n), without errors or machine paths, through public
    functions only (no ``_private`` name, no removed ``cbir.viz``)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [out for cell in code for out in cell.outputs]
    assert outputs and not [out for out in outputs if out.output_type == "error"]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 2
    stored = json.dumps([out for out in outputs if out.output_type == "stream"])
    assert "/tmp" not in stored and "/work" not in stored and "/home" not in stored
    source = "\n".join(cell.source for cell in code)
    assert "cbir.viz" not in source and not re.search(r"import[^\n]*\b_[a-z]", source)
    assert not re.search(r"\.\s*_[a-z]\w*\(", source)


def test_notebook_executes_against_a_small_run(tmp_path, monkeypatch):
    params = small_run(tmp_path, figures=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("CBIR_ROOT", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "\n".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "run of dataset 'syn'" in text
    assert "same top-5 as the ranking file: True" in text  # the query engine ranks as the pipeline
    assert "hsv_hist: 32 x 128 float32" in text.replace("  ", "")
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2  # the sample trials and the P@k curves
    tables = [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any("from rankings" in t for t in tables) and any("map 95% CI" in t for t in tables)
