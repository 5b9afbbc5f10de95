"""Figures and report: panel counts, retrieval order and scores, tables that match the metrics."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.figures.charts import comparison_figure
from cbir.figures.select import pick_queries
from cbir.figures.style import IRRELEVANT, QUERY, RELEVANT, drawn_panels, save_figure
from cbir.figures.trials import build_trials, sample_trials_figure
from cbir.report.markdown import build_report, metrics_table
from cbir.report.readme import END, START, update_readme

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
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 1 + 4 and drawn_panels(fig) == 5
    captions = [t.get_text() for t in fig.axes[0].texts]
    assert captions[0].startswith("query") and captions[1].startswith("#1  0.990")
    assert captions[4].startswith("#4  0.400")
    frames = [p.get_edgecolor() for p in fig.axes[0].patches]
    assert [matplotlib.colors.to_hex(c) for c in frames] == [QUERY, RELEVANT, RELEVANT, IRRELEVANT, IRRELEVANT]
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


#: the report's retrieval and evaluation settings, every key conf/ sets
RETRIEVAL = {"k": 10, "index": "exact"}
EVALUATION = {"ks": [1, 5, 10, 20], "n_bootstrap": 1000, "n_permutations": 10000, "seed": 0}


def test_report_and_readme_block(tmp_path):
    params = {"dataset": {"name": "toy", "source": "synthetic"}, "split": {"protocol": "holdout"},
              "retrieval": RETRIEVAL, "methods": {"a": {"kind": "deep"}, "b": {"kind": "handcrafted"}},
              "evaluation": {**EVALUATION, "baseline": "a"}}
    sig = pd.DataFrame({"method": ["b"], "baseline": ["a"], "mean_ap_diff": [-0.36], "p_permutation": [0.01]})
    text = build_report(params, METRICS, sig, {"n_images": 24}, ["figures/comparison.png"])
    assert metrics_table(METRICS) in text and "![comparison](figures/comparison.png)" in text
    assert "| b | a | -0.36 | 0.0100 |" in text
    assert "## P@20 per class" in text and "## Every pair of methods" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nafter\n")
    assert update_readme(readme, "NEW TABLE")
    assert readme.read_text() == f"intro\n{START}\nNEW TABLE\n{END}\nafter\n"
    assert not update_readme(readme, "NEW TABLE")


def test_report_of_a_benchmark_states_its_protocol_and_scores():
    """A benchmark's report names its own protocol and relevance (not the params' split or labels) and has the
    benchmark's section between the metrics table and the tests; a class-level report has neither."""
    params = {"dataset": {"name": "nd", "source": "neardup"}, "split": {"protocol": "holdout", "queries_per_class": 5},
              "retrieval": RETRIEVAL, "methods": {"a": {"kind": "deep"}}, "evaluation": {**EVALUATION, "baseline": "a"}}
    bench = {"kind": "pairs", "micro_ap": 0.5, "micro_ap_ci95": [0.4, 0.6], "recall@p0.9": 0.25, "top_k": 10,
             "n_positives": 3, "families": {"crop": {"micro_ap": 1.0, "recall@p0.9": 1.0, "map": 1.0, "n_queries": 4}}}
    metrics = {"a": {**METRICS["a"], "benchmark": bench}}
    curation = {"split": {"protocol": "benchmark:neardup", "n_query": 4, "n_database": 20}}
    text = build_report(params, metrics, pd.DataFrame(), curation, [])
    assert "- protocol: benchmark:neardup (the benchmark's own queries and database)" in text
    assert "Relevant = the benchmark's judgements (`data/curated/nd/judgements.json`; see below)." in text
    assert text.index(metrics_table(metrics)) < text.index("## Benchmark scores (`nd`)") < text.index("## Significance")
    assert "| `a` | 50.0 [40.0, 60.0] | 25.0 | 61.0 [50.0, 70.0] |" in text
    plain = build_report(params, METRICS, pd.DataFrame(), {"split": {"protocol": "holdout"}}, [])
    assert "## Benchmark scores" not in plain and "Relevant = same\nlabel." in plain
    assert "- protocol: holdout (5 queries per class, seed None)" in plain


# --- pure helpers of viz.py ------------------------------------------------------------------

def test_confused_pairs_counts_wrong_results_by_class_pair():
    from cbir.figures.select import confused_pairs

    # two "a" queries and one "b" query, top-3 each (k = 3)
    q = ["a", "a", "a", "a", "a", "a", "b", "b", "b"]
    r = ["a", "b", "c", "b", "b", "a", "a", "b", "c"]
    pairs = confused_pairs(q, r, {"a": 2, "b": 1}, k=3)
    assert pairs[["query_label", "result_label", "count"]].values.tolist() == [
        ["a", "b", 3], ["a", "c", 1], ["b", "a", 1], ["b", "c", 1]]
    np.testing.assert_allclose(pairs["rate"], [3 / 6, 1 / 6, 1 / 3, 1 / 3])
    assert confused_pairs(["a"], ["a"], {"a": 1}, 1).empty


def test_confusion_examples_take_the_most_similar_wrong_result_per_query():
    from cbir.figures.select import confusion_examples

    ranking = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q2", "q3"], "rank": [1, 2, 1, 2, 1],
                            "image_id": ["x", "y", "x", "z", "w"], "score": [0.9, 0.8, 0.7, 0.95, 0.99]})
    labels = {"q1": "a", "q2": "a", "q3": "b", "x": "b", "y": "b", "z": "a", "w": "a"}
    ex = confusion_examples(ranking, labels, ("a", "b"), n=5)
    assert ex[["query_id", "image_id", "rank"]].values.tolist() == [["q1", "x", 1], ["q2", "x", 1]]
    assert len(confusion_examples(ranking, labels, ("a", "b"), n=1)) == 1


def test_best_worst_and_method_ranking():
    from cbir.figures.select import best_worst_queries, compared_methods, rank_methods

    assert best_worst_queries(["b", "a", "c", "d"], [0.5, 0.9, np.nan, 0.9]) == ("a", "b")
    assert best_worst_queries(["a"], [np.nan]) is None
    metrics = {"m1": {"map": 0.4}, "m2": {"map": 0.7}, "m3": {"map": None}, "m4": {"map": 0.7}}
    assert rank_methods(metrics) == ["m2", "m4", "m1", "m3"]
    assert compared_methods(metrics, "m1") == ("m1", "m2", "best")
    assert compared_methods(metrics, "m2") == ("m2", "m4", "runner-up")
    assert compared_methods(metrics, None) == ("m1", "m2", "best")
    assert compared_methods({"only": {"map": 0.1}}, "only") == ("only", None, "runner-up")


def test_trial_rows_are_the_seeded_queries_then_best_and_worst():
    from cbir.figures.select import trial_rows

    ap = {"q1": 0.2, "q2": 0.9, "q3": 0.5, "q4": 0.1}
    order, labels = trial_rows(list(ap), ["q1", "q3"], ap)
    assert order == ["q1", "q3", "q2", "q4"]
    assert labels == ["seeded\nAP 0.200", "seeded\nAP 0.500", "best AP\nAP 0.900", "worst AP\nAP 0.100"]
    order, labels = trial_rows(list(ap), ["q2"], ap)  # a seeded query that is also the best
    assert order == ["q2", "q4"] and labels[0] == "seeded + best AP\nAP 0.900"


def test_stratified_subsample_keeps_class_shares_and_is_seeded():
    from cbir.figures.select import stratified_subsample

    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    rows = stratified_subsample(labels, 20, seed=1)
    assert len(rows) == 20 and np.all(np.diff(rows) > 0)
    assert [int((labels[rows] == c).sum()) for c in "abc"] == [12, 6, 2]
    np.testing.assert_array_equal(rows, stratified_subsample(labels[::1], 20, seed=1))
    assert not np.array_equal(rows, stratified_subsample(labels, 20, seed=2))
    np.testing.assert_array_equal(stratified_subsample(labels, 500, 0), np.arange(100))


def test_embed_2d_is_deterministic_and_separates_clusters():
    from cbir.figures.select import embed_2d

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, (15, 80)), rng.normal(1, 0.05, (15, 80))])
    xy = embed_2d(x, seed=3, perplexity=5, pca_dims=10)
    assert xy.shape == (30, 2)
    np.testing.assert_array_equal(xy, embed_2d(x, seed=3, perplexity=5, pca_dims=10))
    a, b = xy[:15].mean(axis=0), xy[15:].mean(axis=0)
    spread = max(xy[:15].std(axis=0).max(), xy[15:].std(axis=0).max())
    assert np.linalg.norm(a - b) > 3 * spread
    with pytest.raises(Exception, match="at least 4 images"):
        embed_2d(x[:3])


def test_curve_with_band_matches_the_mean_and_brackets_it():
    from cbir.figures.select import curve_with_band

    values = np.array([[1.0, 0.5], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    mean, lo, hi = curve_with_band(values, n_bootstrap=200, seed=0)
    np.testing.assert_allclose(mean, [0.625, 0.5])
    assert np.all(lo <= mean) and np.all(mean <= hi)
    mean2, lo2, hi2 = curve_with_band(values, n_bootstrap=200, seed=0)
    np.testing.assert_array_equal(np.r_[lo, hi], np.r_[lo2, hi2])


def test_figure_settings_come_from_conf_and_a_missing_key_is_one_line(repo_root):
    import yaml

    from cbir.errors import CbirError
    from cbir.figures.style import figure_settings
    from cbir.schema import validate

    conf = yaml.safe_load((repo_root / "conf" / "figures" / "default.yaml").read_text())
    assert figure_settings({"figures": conf}) == {**conf, "methods": []}  # no methods in params: none to draw
    assert figure_settings({"figures": {**conf, "n_queries": 4}})["n_queries"] == 4
    with pytest.raises(CbirError, match=r"params.yaml: figures.dpi is missing: "):
        figure_settings({"figures": {k: v for k, v in conf.items() if k != "dpi"}})
    with pytest.raises(CbirError, match=r"figures.thumb_size=0: expected an integer from 16 to 2048"):
        validate({"figures": {**conf, "thumb_size": 0}})  # ranges: the schema, once, when params.yaml loads
    with pytest.raises(CbirError, match=r"figures.n_queries=0: expected an integer >= 1"):
        validate({"figures": {**conf, "n_queries": 0}})


def test_framed_and_side_by_side():
    from cbir.figures.thumbnails import framed, side_by_side

    image = np.full((10, 8, 3), 200, np.uint8)
    out = framed(image, "#ff0000", width=2)
    assert out[0, 0].tolist() == [255, 0, 0] and out[5, 4].tolist() == [200, 200, 200]
    assert image[0, 0].tolist() == [200, 200, 200]  # the input is not modified
    assert side_by_side(image, image, gap=3).shape == (10, 19, 3)


def test_charts_have_the_expected_panels():
    from cbir.figures.charts import curves_figure, embedding_figure, per_class_heatmap
    from cbir.figures.style import drawn_panels

    curves = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "k": [1, 2, 3] * 2,
                           "precision": [1, 0.5, 0.3, 0.9, 0.6, 0.4], "lo": 0.1, "hi": 1.0})
    fig = curves_figure(curves, "k", "k", "P@k", "t")
    assert drawn_panels(fig) == 1 and len(fig.axes[0].lines) == 2 and len(fig.axes[0].collections) == 2
    per_class = pd.DataFrame({"method": ["a", "a", "b", "b"], "label": ["x", "y", "x", "y"],
                              "p@10": [0.1, 0.2, 0.3, 0.4]})
    fig = per_class_heatmap(per_class)
    assert drawn_panels(fig) == 1 and len(fig.axes) == 2  # the map and its colour bar
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), [[0.1, 0.2], [0.3, 0.4]])
    xy = np.arange(8.0).reshape(4, 2)
    fig = embedding_figure([("a", xy, list("xxyy")), ("b", xy, list("xyxy"))])
    assert drawn_panels(fig) == 2 and len(fig.axes[0].collections) == 2


def test_comparison_figure_tolerates_missing_values_and_hatches_the_baseline():
    metrics = {"a": {"p@10": 0.5, "map": None, "ci95": {"p@10": [None, None]}}, "b": {"p@10": 0.4, "map": 0.3}}
    fig = comparison_figure(metrics, baseline="b")
    assert [p.get_height() for p in fig.axes[1].patches] == [0.0, 0.3]
    assert fig.axes[0].patches[1].get_hatch() == "///" and not fig.axes[0].patches[0].get_hatch()


def test_save_figure_is_byte_for_byte_deterministic(tmp_path):
    written_a = save_figure(comparison_figure(METRICS), tmp_path / "a" / "fig", dpi=50)
    written_b = save_figure(comparison_figure(METRICS), tmp_path / "b" / "fig", dpi=50)
    for a, b in zip(written_a, written_b):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["fig.pdf", "fig.png"]


# --- report.py -------------------------------------------------------------------------------

def test_metrics_table_handles_missing_values_and_intervals():
    metrics = {"m": {"p@1": None, "p@5": 0.5, "map": 0.25, "ci95": {"p@5": [None, None], "map": [0.2, 0.3]},
                     "n_queries": 3}}
    lines = metrics_table(metrics).splitlines()
    assert lines[0] == "| method | P@1 | P@5 | mAP | queries | database |"
    assert lines[2] == "| m | – | 0.500 | 0.250 [0.200, 0.300] | 3 | – |"


def test_significance_and_per_class_tables():
    from cbir.report.markdown import per_class_table, significance_table

    sig = pd.DataFrame({"method": ["b", "c"], "baseline": ["a", "a"], "n": [12, 40],
                        "mean_diff_ap": [0.0192130473, -0.2], "p_permutation": [0.5, 1 / 10001],
                        "p_wilcoxon": [float("nan"), 3.2e-6], "p_holm": [0.5, 2 / 10001]})
    lines = significance_table(sig, n_permutations=10000).splitlines()
    assert lines[0] == ("| method | baseline | queries | mean AP difference | "
                        "p (paired permutation) | p (Wilcoxon signed-rank) | p (permutation, Holm) |")
    assert lines[2] == "| b | a | 12 | +0.01921 | 0.500 | – | 0.500 |"
    # at the permutation floor 1/(10000 + 1) the p-value is an upper bound; one format: < 1e-4 for Wilcoxon too
    assert lines[3] == "| c | a | 40 | -0.2 | < 1e-4 | < 1e-4 | 0.000200 |"
    assert significance_table(pd.DataFrame()).startswith("_No comparison")
    per_class = pd.DataFrame({"method": ["a", "b", "a", "b"], "label": ["y", "y", "x", "x"],
                              "n_queries": [2, 2, 3, 3], "p@10": [0.25, 0.5, 1.0, None], "ap": 0.0})
    assert per_class_table(per_class, methods=["b", "a"]).splitlines() == [
        "| class | queries | b | a |", "|---|---|---|---|", "| x | 3 | – | 1.000 |", "| y | 2 | 0.500 | 0.250 |"]


def test_curation_summary_of_the_real_schema():
    from cbir.report.markdown import curation_summary

    curation = {"n_candidates": 12, "n_kept": 10, "n_dropped": 2, "drop_counts": {"duplicate": 1, "too_small": 1},
                "conversions": {"grey": 2, "alpha": 0}, "classes": {"cat": {"images": 6, "query": 2, "database": 4},
                                                                    "dog": {"images": 4, "query": 2, "database": 2}},
                "classes_dropped": {"emu": {"reason": "class_too_small", "images": 1}},
                "split": {"protocol": "holdout", "n_query": 4, "n_database": 6, "seed": 0}}
    text = curation_summary(curation)
    for line in ("- files found: 12", "- images kept: 10", "- dropped by reason: duplicate 1, too_small 1",
                 "- converted on load: grey 2", "- classes dropped: emu (class_too_small, 1 images)",
                 "- split: holdout, 4 queries, 6 database images (seed 0)", "| cat | 6 | 2 | 4 |"):
        assert line in text.splitlines()
    assert curation_summary({}).startswith("_No curation summary")


def test_methods_table_flattens_settings_and_shows_extraction_info():
    from cbir.report.markdown import methods_table

    methods = {"h": {"kind": "handcrafted", "descriptor": "hsv", "params": {"bins": [8, 4]}, "requires": "x"}}
    lines = methods_table(methods, {"h": {"dim": 32, "device": "cpu", "images_per_second": 90.5}}).splitlines()
    assert lines[2] == "| `h` | handcrafted | descriptor=hsv, params.bins=[8, 4] | – | – | 32 | cpu | 90.5 |"
    assert methods_table({"d": {"kind": "deep"}}).splitlines()[2] == "| `d` | deep | – | – | – | – | – | – |"
    # search settings and weight provenance (models/<backbone>.json "verified" and "check")
    weights = {"r": {"verified": True, "check": "sha256 of the torchvision file"}, "m": {"verified": False,
                                                                                     "check": "no reference"}}
    lines = methods_table({"d": {"kind": "deep", "backbone": "r"}, "e": {"kind": "deep", "backbone": "m"}},
                          weights=weights, search={"e": {"rerank": {"kind": "aqe", "n": 3}}}).splitlines()
    assert lines[2] == ("| `d` | deep | backbone=r | – | r: verified (sha256 of the torchvision file) | – | – | – |")
    assert lines[3] == "| `e` | deep | backbone=m | rerank.kind=aqe, rerank.n=3 | m: not verified (no reference) | – | – | – |"


def test_update_readme_keeps_permissions(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    readme.chmod(0o664)
    assert update_readme(readme, "T")
    assert readme.stat().st_mode & 0o777 == 0o664
    assert not update_readme(tmp_path / "missing.md", "T")
    (tmp_path / "plain.md").write_text("no markers\n")
    assert not update_readme(tmp_path / "plain.md", "T")
