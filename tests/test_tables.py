"""Tables for the paper: CSV + LaTeX (booktabs, best in bold, intervals), p-values below the permutation
test's resolution, Holm's correction, all-pairs tests, and the report stage writing them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cbir import evaluation as ev
from cbir.report.tables import format_p, main_display, main_frame, per_class_frame, to_latex
from cbir.stages.evaluate import run as run_evaluate
from cbir.stages.report import run as run_report
from test_retrieve_evaluate_stages import make_params, write_dataset

METRICS = {"gap": {"p@10": 0.8123, "map": 0.5, "ci95": {"p@10": [0.79, 0.83], "map": [0.45, 0.55]},
                   "n_queries": 50, "n_database": 950, "kind": "deep"},
           "hsv_hist": {"p@10": 0.6, "map": 0.61, "ci95": {"p@10": [0.55, 0.65], "map": [0.58, 0.64]},
                        "n_queries": 50, "n_database": 950, "kind": "handcrafted"}}


def test_format_p_marks_the_permutation_floor():
    assert format_p(1 / 10001, 10000) == "< 1e-4"
    assert format_p(9.999e-05, 10000) == "< 1e-4"
    assert format_p(2 / 10001, 10000) == "0.0002"
    assert format_p(1 / 1001, 1000) == "< 1e-3"
    assert format_p(0.0312, 10000) == "0.0312" and format_p(float("nan"), 10) == "–"
    assert format_p(1 / 10001) == "0.0001"  # no permutation count: a plain number (e.g. Wilcoxon)


def test_holm_by_hand_and_nan_left_out():
    np.testing.assert_allclose(ev.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = ev.holm([float("nan"), 0.2, 0.6])
    assert np.isnan(out[0]) and out[1:].tolist() == pytest.approx([0.4, 0.6])
    assert ev.holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # 2 x 0.8 capped at 1 and ev.holm([]).size == 0


def test_all_pairs_tests_are_the_paired_tests_with_holm():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(30)]
    ap = {m: pd.Series(rng.random(30) + shift, index=ids) for m, shift in (("a", 0.3), ("b", 0.0), ("c", 0.0))}
    pairs = ev.all_pairs_tests(ap, n_permutations=999, seed=0)
    assert pairs[["a", "b"]].values.tolist() == [["a", "b"], ["a", "c"], ["b", "c"]]
    for row in pairs.itertuples():
        one = ev.paired_test(ap[row.a].to_numpy(), ap[row.b].to_numpy(), 999, 0)
        assert row.p_permutation == one["p_permutation"] and row.mean_diff_ap == pytest.approx(one["mean_diff"])
    np.testing.assert_allclose(pairs["p_holm"], ev.holm(pairs["p_permutation"].to_numpy()))
    assert pairs.loc[0, "p_permutation"] == pytest.approx(1 / 1000)  # a is clearly better than b


def test_main_table_latex_bolds_the_best_and_keeps_intervals():
    frame = main_frame(METRICS)
    assert list(frame.columns) == ["method", "kind", "p@10", "p@10_lo", "p@10_hi", "map", "map_lo", "map_hi",
                                   "queries", "database"]
    display = main_display(frame, lambda t: f"**{t}**")
    assert display["P@10"].tolist() == ["**0.812** [0.790, 0.830]", "0.600 [0.550, 0.650]"]
    assert display["mAP"].tolist() == ["0.500 [0.450, 0.550]", "**0.610** [0.580, 0.640]"]
    tex = to_latex(main_display(frame, lambda t: rf"\textbf{{{t}}}"), "Main.", "tab:x")
    lines = tex.splitlines()
    assert r"\toprule" in lines and r"\midrule" in lines and r"\bottomrule" in lines
    assert r"\begin{tabular}{lrrrr}" in lines
    assert r"hsv\_hist & 0.600 [0.550, 0.650] & \textbf{0.610} [0.580, 0.640] & 50 & 950 \\" in lines
    assert r"gap & \textbf{0.812} [0.790, 0.830] & 0.500 [0.450, 0.550] & 50 & 950 \\" in lines


def test_per_class_frame_and_ties_in_bold():
    per_class = pd.DataFrame({"method": ["a", "b", "a", "b"], "label": ["y", "y", "x", "x"], "n_queries": [2, 2, 3, 3],
                              "p@10": [0.5, 0.5, 1.0, 0.2], "p@20": [0.25, 0.3, 0.5, 0.5]})
    frame = per_class_frame(per_class, "p@20")
    assert frame.values.tolist() == [["x", 3, 0.5, 0.5], ["y", 2, 0.25, 0.3]]
    from cbir.report.tables import per_class_display

    shown = per_class_display(per_class_frame(per_class, "p@10"), lambda t: f"*{t}*")
    assert shown.values.tolist() == [["x", "3", "*1.000*", "0.200"], ["y", "2", "*0.500*", "*0.500*"]]


def test_report_stage_writes_csv_and_latex_tables(tmp_path):
    write_dataset(tmp_path, noise={"good": 0.05, "noisy": 3.0, "worse": 6.0})
    params = make_params(methods={m: {"kind": "handcrafted"} for m in ("good", "noisy", "worse")},
                         dataset={"name": "toy", "source": "folder"}, split={"protocol": "holdout"})
    run_evaluate(params, tmp_path)
    (tmp_path / "reports/toy/figures").mkdir(parents=True)
    run_report(params, tmp_path)
    tables = tmp_path / "reports/toy/tables"
    assert sorted(p.name for p in tables.iterdir()) == sorted(
        f"{n}.{e}" for n in ("main", "per_class_p10", "pairs", "significance") for e in ("csv", "tex"))
    main = pd.read_csv(tables / "main.csv")
    metrics = json.loads((tmp_path / "reports/toy/metrics.json").read_text())
    assert main["method"].tolist() == ["good", "noisy", "worse"]
    assert main["map"].tolist() == [metrics[m]["map"] for m in main["method"]]
    assert main["map_lo"].tolist() == [metrics[m]["ci95"]["map"][0] for m in main["method"]]
    assert r"good & \textbf{1.000} [1.000, 1.000]" in (tables / "main.tex").read_text()
    pairs = pd.read_csv(tables / "pairs.csv")
    assert len(pairs) == 3 and "p_holm" in pairs.columns
    report = (tmp_path / "reports/toy/report.md").read_text()
    assert "## Every pair of methods" in report and "| good | noisy |" in report
    # P@20 does not fit 4 database images per class: no per_class_p20 table, a note in the report
    assert "No per-class P@20" in report
