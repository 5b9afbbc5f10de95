"""Figures and report: panel counts, retrieval order and scores, tables that match the metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.report import START, END, build_report, metrics_table, update_readme
from cbir.viz import build_trials, comparison_figure, pick_queries, sample_trials_figure, save_figure

METRICS = {
    "a": {"p@1": 1.0, "p@5": 0.8, "p@10": 0.7, "p@20": 0.5, "r@10": 0.35, "map": 0.61, "map@10": 0.66,
          "n_queries": 4, "n_database": 20, "ci95": {"p@10": [0.6, 0.8], "map": [0.5, 0.7]}},
    "b": {"p@1": 0.5, "p@5": 0.4, "p@10": 0.3, "p@20": 0.3, "r@10": 0.15, "map": 0.25, "map@10": 0.2,
          "n_queries": 4, "n_database": 20, "ci95": {"p@10": [0.2, 0.4], "map": [0.2, 0.3]}},
}


def test_pick_queries_is_seeded_and_order_free():
    ids = [f"q{i}" for i in range(20)]
    assert pick_queries(ids, 3, 0) == pick_queries(ids[::-1], 3, 0)
    assert len(set(pick_queries(ids, 3, 0))) == 3
    assert pick_queries(ids[:2], 5, 0) == ["q0", "q1"]


@pytest.fixture
def toy_run(tmp_path):
    rows = []
    for i in range(6):
        colour = (220, 30, 30) if i < 3 else (30, 30, 220)
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        rows.append({"image_id": f"{i}", "path": path.name, "label": "red" if i < 3 else "blue"})
    manifest = pd.DataFrame(rows)
    ranking = pd.DataFrame({"query_id": ["0"] * 5, "rank": [1, 2, 3, 4, 5],
                            "image_id": ["1", "2", "3", "4", "5"], "score": [0.99, 0.9, 0.5, 0.4, 0.1]})
    return manifest, ranking.sample(frac=1, random_state=1)  # shuffled: build_trials must sort by rank


def test_trials_follow_retrieval_order_and_scores(tmp_path, toy_run):
    manifest, ranking = toy_run
    trials = build_trials(ranking, manifest, ["0"], tmp_path, k=4, thumb_size=32)
    results = trials[0]["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert [r["image_id"] for r in results] == ["1", "2", "3", "4"]
    assert [r["score"] for r in results] == [0.99, 0.9, 0.5, 0.4]
    assert [r["relevant"] for r in results] == [True, True, False, False]
    fig = sample_trials_figure(trials)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 1 + 4
    titles = [ax.get_title() for ax in images[1:]]
    assert titles[0].startswith("#1  0.990") and titles[3].startswith("#4  0.400")
    written = save_figure(fig, tmp_path / "out" / "trials")
    assert [p.suffix for p in written] == [".png", ".pdf"]
    pixels = np.asarray(Image.open(written[0]).convert("L"))
    assert pixels.std() > 10, "figure is blank"


def test_comparison_figure_has_two_panels(tmp_path):
    fig = comparison_figure(METRICS)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) == 2


def test_metrics_table_matches_metrics_exactly():
    table = metrics_table(METRICS)
    lines = table.splitlines()
    assert len(lines) == 2 + len(METRICS)
    assert lines[2].startswith("| a | 1.000 |")
    assert "0.700 [0.600, 0.800]" in lines[2] and "0.610 [0.500, 0.700]" in lines[2]
    assert lines[3].split(" | ")[-2:] == ["4", "20 |"]


def test_report_and_readme_block(tmp_path):
    params = {"dataset": {"name": "toy", "source": "synthetic"}, "split": {"protocol": "holdout"},
              "retrieval": {"k": 10}, "methods": {"a": {"kind": "deep"}, "b": {"kind": "handcrafted"}},
              "evaluation": {"baseline": "a"}}
    sig = pd.DataFrame({"method": ["b"], "baseline": ["a"], "mean_ap_diff": [-0.36], "p_permutation": [0.01]})
    text = build_report(params, METRICS, sig, {"n_images": 24}, ["figures/comparison.png"])
    assert metrics_table(METRICS) in text and "![comparison](figures/comparison.png)" in text
    assert "| b | a | -0.36 | 0.01 |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nafter\n")
    assert update_readme(readme, "NEW TABLE")
    assert readme.read_text() == f"intro\n{START}\nNEW TABLE\n{END}\nafter\n"
    assert not update_readme(readme, "NEW TABLE")
