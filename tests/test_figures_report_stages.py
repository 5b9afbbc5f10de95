"""The figures and report stages on a small generated run built with the real stage functions.

``small_run(root)`` (also used by the notebook and plots-page tests) generates 4 classes of
seeded synthetic images, curates them, extracts two handcrafted descriptors, retrieves and
evaluates, so every input of ``figures`` and ``report`` is what the pipeline really writes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.data.images import MAX_PIXELS
from cbir.errors import CbirError
from cbir.fileio import read_json
from cbir.features.handcrafted import descriptor_node
from methods_helpers import from_conf, with_defaults

SMALL_PARAMS = with_defaults({
    "seed": 0,
    "dataset": from_conf("dataset/synthetic", name="syn", n_classes=4, per_class=8, size=32, seed=0),
    "curate": {"min_side": 8, "max_pixels": MAX_PIXELS, "min_per_class": 3, "dedupe": True},
    "split": {"protocol": "holdout", "queries_per_class": 2, "query_fraction": None, "seed": 0},
    "methods": {"hsv_hist": {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram", {"bins": [8, 4, 4]})},
                "color_moments": {"kind": "handcrafted", "descriptor": descriptor_node("color_moments", {})}},
    "retrieval": {"k": 5, "block_size": 1024, "index": "exact"},
    "evaluation": {"ks": [1, 5, 10], "n_bootstrap": 100, "seed": 0, "n_permutations": 200, "baseline": "hsv_hist"},
    "figures": {"n_queries": 2, "seed": 0, "thumb_size": 24, "dpi": 40, "n_pairs": 3, "n_examples": 2,
                "tsne_max_points": 32},
})


def small_run(root: Path, params: dict | None = None, figures: bool = True) -> dict:
    """Write a complete small pipeline run under ``root``; returns its params."""
    from cbir.stages.curate import run as run_curate
    from cbir.stages.download import run as run_download
    from cbir.scoring.metric_files import run as run_evaluate
    from cbir.stages.extract import run as run_extract
    from cbir.figures.figure_files import run as run_figures
    from cbir.report.report_files import run as run_report
    from cbir.search.rankings import run as run_retrieve

    params = params or {k: (dict(v) if isinstance(v, dict) else v) for k, v in SMALL_PARAMS.items()}
    run_download(params, root)
    run_curate(params, root)
    for method in params["methods"]:
        run_extract(params, root, method=method)
        run_retrieve(params, method, root)
    run_evaluate(params, root)
    if figures:
        run_figures(params, root)
        run_report(params, root)
    return params


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("small_run")
    (root / "README.md").write_text("# x\n\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    stale = root / "reports" / "syn" / "figures" / "old_figure.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")  # the figures stage replaces the folder as a whole
    return root, small_run(root)


def test_every_figure_exists_as_png_and_pdf_and_is_not_blank(run):
    root, params = run
    fig_dir = root / "reports" / "syn" / "figures"
    index = read_json(fig_dir / "figures.json")
    names = [f["name"] for f in index]
    methods = list(params["methods"])
    assert names == ["comparison", "pk_curves", "pr_curves", "per_class_p10",
                     *[f"trials_{m}" for m in methods], "trials_baseline_vs_best", "embedding_tsne",
                     *[f"confusions_{m}" for m in methods]]
    for entry in index:
        pixels = np.asarray(Image.open(fig_dir / entry["png"]).convert("L"), dtype=float)
        assert pixels.std() > 5, f"{entry['png']} is blank"
        assert (fig_dir / entry["pdf"]).read_bytes()[:5] == b"%PDF-"
        assert entry["caption"] and entry["title"]
    # nothing else is in the folder: no temporary files, no stale figure, and all that dvc.yaml plots
    from cbir.figures.style import ALWAYS_PRESENT
    assert set(ALWAYS_PRESENT) <= set(names)
    expected = {FIG for e in index for FIG in (e["png"], e["pdf"])} | {"figures.json"}
    assert {p.name for p in fig_dir.iterdir()} == expected


def test_panel_counts(run):
    from cbir.figures.select import pick_queries, trial_rows

    root, params = run
    index = {f["name"]: f["panels"] for f in read_json(root / "reports/syn/figures/figures.json")}
    k = params["retrieval"]["k"]
    per_query = pd.read_csv(root / "reports/syn/plots/per_query.csv", dtype={"query_id": str})
    queries = sorted(per_query["query_id"].unique())
    assert index["comparison"] == 2
    assert index["pk_curves"] == index["pr_curves"] == index["per_class_p10"] == 1
    assert index["embedding_tsne"] == 2  # baseline and best method
    n = params["figures"]["n_queries"]
    assert index["trials_baseline_vs_best"] == 2 * n * (1 + k)
    for method in params["methods"]:
        part = per_query[per_query["method"] == method]
        rows, _ = trial_rows(queries, pick_queries(queries, n, 0), dict(zip(part["query_id"], part["ap"])))
        assert n <= len(rows) <= n + 2
        assert index[f"trials_{method}"] == len(rows) * (1 + k)
        assert 1 <= index[f"confusions_{method}"] <= params["figures"]["n_pairs"] * params["figures"]["n_examples"]


def test_trials_show_retrieval_order_and_scores_from_the_csv(run):
    from cbir.data.manifest import read_manifest
    from cbir.figures.trials import build_trials, sample_trials_figure

    root, params = run
    manifest = read_manifest(root / "data/curated/syn/manifest.csv")
    k = params["retrieval"]["k"]
    for method in params["methods"]:
        csv = pd.read_csv(root / f"data/retrieval/syn/{method}.csv", dtype={"query_id": str, "image_id": str})
        qid = sorted(csv["query_id"].unique())[1]
        expected = csv[csv["query_id"] == qid].sort_values("rank")
        shuffled = csv.sample(frac=1.0, random_state=3)  # the figure must sort by rank itself
        fig = sample_trials_figure(build_trials(shuffled, manifest, [qid], root, k, 16))
        titles = [t.get_text() for t in fig.axes[0].texts][1:]  # the query's caption, then each result's
        assert [t.split("\n")[0] for t in titles] == [f"#{r}  {s:.3f}"
                                                     for r, s in zip(expected["rank"], expected["score"])]
        labels = dict(zip(manifest["image_id"], manifest["label"]))
        assert [t.split("\n")[1] for t in titles] == [labels[i][:15] + "…" if len(labels[i]) > 16 else labels[i]
                                                     for i in expected["image_id"]]


def test_pr_band_from_the_evaluate_stage_brackets_the_mean(run):
    root, params = run
    pr = pd.read_csv(root / "reports/syn/plots/pr.csv")
    assert len(pr) == 11 * len(params["methods"]) and {"lo", "hi"} <= set(pr.columns)
    assert (pr["lo"] <= pr["precision"] + 1e-12).all() and (pr["precision"] <= pr["hi"] + 1e-12).all()


def _table_rows(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_report_table_matches_metrics_exactly(run):
    root, params = run
    metrics = read_json(root / "reports/syn/metrics.json")
    text = (root / "reports/syn/report.md").read_text()
    header, rows = _table_rows(text, "| method | P@1")
    assert header == ["method", "P@1", "P@5", "P@10", "R@10", "mAP", "mAP@10", "queries", "database"]
    keys = ["p@1", "p@5", "p@10", "r@10", "map", "map@10"]
    assert [r[0] for r in rows] == list(params["methods"])
    for row in rows:
        entry = metrics[row[0]]
        for key, cell in zip(keys, row[1:7]):
            lo, hi = entry["ci95"][key]
            assert cell == f"{entry[key]:.3f} [{lo:.3f}, {hi:.3f}]"
            match = re.fullmatch(r"(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", cell)
            shown = np.array([float(g) for g in match.groups()])
            assert np.all(np.abs(shown - [entry[key], lo, hi]) <= 5e-4 + 1e-9)  # half a unit in the last place
        assert row[7:] == [str(entry["n_queries"]), str(entry["n_database"])]
    # no stage writes README.md; `cbir readme` puts the same P@10 and mAP in its table across datasets
    from cbir.report.readme import write_readme_results

    readme = root / "README.md"
    assert "\nold\n" in readme.read_text(), "a pipeline stage wrote README.md, an undeclared output"
    assert write_readme_results(root)
    text = readme.read_text()
    for method, entry in metrics.items():
        cells = [f"{entry[k]:.3f} [{entry['ci95'][k][0]:.3f}, {entry['ci95'][k][1]:.3f}]" for k in ("p@10", "map")]
        assert f"| `{method}` | {cells[0]} | {cells[1]} |" in text


def test_report_significance_curation_and_figures(run):
    root, params = run
    text = (root / "reports/syn/report.md").read_text()
    sig = pd.read_csv(root / "reports/syn/plots/significance.csv")
    header, rows = _table_rows(text, "| method | baseline")
    assert len(rows) == len(sig) == 1
    assert rows[0][:3] == [sig["method"][0], "hsv_hist", str(sig["n"][0])]
    assert float(rows[0][3]) == pytest.approx(sig["mean_diff_ap"][0], rel=1e-3)
    curation = read_json(root / "data/curated/syn/curation.json")
    assert f"- images kept: {curation['n_kept']}" in text
    for entry in read_json(root / "reports/syn/figures/figures.json"):
        assert f"![{entry['name']}](figures/{entry['png']})" in text
        assert (root / "reports" / "syn" / "figures" / entry["png"]).is_file()


def test_missing_inputs_are_one_clear_error_and_keep_the_last_figures(run, tmp_path):
    from cbir.figures.figure_files import run as run_figures

    root, params = run
    shutil.copytree(root, tmp_path / "copy")
    copy = tmp_path / "copy"
    (copy / "reports/syn/plots/per_query.csv").unlink()
    with pytest.raises(CbirError, match=r"per_query.csv not found: run `dvc repro evaluate@syn` first"):
        run_figures(params, copy)
    (copy / "data/retrieval/syn/hsv_hist.csv").unlink()
    (copy / "reports/syn/metrics.json").unlink()
    with pytest.raises(CbirError, match=r"metrics.json not found: run `dvc repro evaluate@<dataset>` first"):
        run_figures(params, copy)
    with pytest.raises(CbirError, match=r"figures.n_queries must be >= 1, got 0"):
        run_figures({**params, "figures": {"n_queries": 0}}, copy)
    assert sorted(p.name for p in (copy / "reports/syn/figures").iterdir()) == \
        sorted(p.name for p in (root / "reports/syn/figures").iterdir())


def test_one_method_and_too_few_images_still_give_every_always_present_figure(run, tmp_path):
    from cbir.figures.style import ALWAYS_PRESENT
    from cbir.figures.figure_files import run as run_figures

    root, params = run
    shutil.copytree(root, tmp_path / "copy")
    copy = tmp_path / "copy"
    stale = copy / "reports/syn/figures/old_figure.png"
    stale.write_bytes(b"x")
    params = {**params, "methods": {"hsv_hist": params["methods"]["hsv_hist"]},
              "figures": {**params["figures"], "tsne_max_points": 3}}
    run_figures(params, copy)
    assert not stale.exists()
    index = {f["name"]: f for f in read_json(copy / "reports/syn/figures/figures.json")}
    assert set(ALWAYS_PRESENT) <= set(index)
    assert index["embedding_tsne"]["panels"] == 0 and "too few" in index["embedding_tsne"]["caption"]
    assert index["trials_baseline_vs_best"]["caption"].endswith("nothing to compare with.")


def test_summarize_keeps_exactly_the_t_sne_maps_it_draws(run, tmp_path, caplog):
    """The summary charts' t-SNE maps persist in data/embeddings/<ds>/ under a key of the features and the
    t-SNE settings: a second run reuses them and writes the same bytes; other settings replace them."""
    import logging

    from cbir.figures.figure_files import combine

    root, params = run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    combine(params, copy)
    maps = copy / "data/embeddings/syn"
    first = {p.name: p.read_bytes() for p in maps.iterdir()}
    assert len(first) == 2 and all(name.endswith(".npy") for name in first)  # baseline and best method
    charts = {p.name: p.read_bytes() for p in (copy / "reports/syn/figures").iterdir()}
    assert charts == {p.name: p.read_bytes() for p in (root / "reports/syn/figures").iterdir()}
    with caplog.at_level(logging.INFO, logger="cbir"):
        combine(params, copy)
    assert "reused 2 of 2 t-SNE maps" in caplog.text
    assert {p.name: p.read_bytes() for p in maps.iterdir()} == first
    assert {p.name: p.read_bytes() for p in (copy / "reports/syn/figures").iterdir()} == charts
    combine({**params, "figures": {**params["figures"], "tsne_iterations": 300}}, copy)
    again = {p.name for p in maps.iterdir()}
    assert len(again) == 2 and not again & set(first)  # new keys; the old maps are gone
