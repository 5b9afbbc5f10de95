"""The benchmark tables in the literature's columns: ROxf/RPar M and H side by side, Holidays mAP, UKBench N-S,
copy detection µAP (CSV + Markdown + LaTeX that fits \\textwidth)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from test_tables import tabular_widths

from cbir.report.benchmark_tables import benchmark_frames, revisitop_frame
from cbir.report.tables import TEXTWIDTH_PT, write_tables

METHODS = ["mobilenet_v2-gap", "mobilenet_v2-gem", "efficientnet_lite0-gem", "hsv_hist", "color_moments",
           "correlogram", "lbp", "glcm", "hog", "fusion"]
SIZES = {"n_queries": 500, "n_database": 1491}


def revisitop_metrics(shift: float) -> dict:
    return {m: {"map": 0.3, "p@10": 0.2, "ap": "trapezoidal", "ci95": {}, "n_queries": 70, "n_database": 4993,
                "benchmark": {"kind": "revisitop", **{p: {"map": v + shift + i / 100} for p, v in
                                                      (("easy", 0.5), ("medium", 0.3), ("hard", 0.1))}}}
            for i, m in enumerate(METHODS)}


def pairs_metrics() -> dict:
    families = ["blur", "color", "combo", "crop", "flip", "jpeg", "overlay_stamp", "overlay_text", "rescale", "rotate"]
    return {m: {"map": 0.5, "p@10": 0.1, "ap": "non-interpolated", "ci95": {}, "n_queries": 70, "n_database": 4993,
                "benchmark": {"kind": "pairs", "micro_ap": 0.4 + i / 100, "recall@p0.9": 0.2, "top_k": 10,
                              "families": {f: {"micro_ap": 0.1 * j} for j, f in enumerate(families)}}}
            for i, m in enumerate(METHODS)}


def test_revisitop_side_by_side_columns():
    frame = revisitop_frame({"rparis6k": revisitop_metrics(0.1), "roxford5k": revisitop_metrics(0.0)})
    assert list(frame.columns) == ["method", "ROxf M", "ROxf H", "RPar M", "RPar H", "ROxf E", "RPar E"]
    assert frame.loc[0, "ROxf M"] == pytest.approx(30.0) and frame.loc[0, "RPar H"] == pytest.approx(20.0)


@pytest.mark.parametrize("dataset, metrics, columns", [
    ("roxford5k", revisitop_metrics(0.0), ["method", "ROxf M", "ROxf H", "ROxf E"]),
    ("holidays", {m: {**SIZES, "map": 0.7, "benchmark": {"kind": "groups", "map": 0.7, "plain_map": 0.75}}
                  for m in METHODS}, ["method", "mAP", "plain mAP"]),
    ("ukbench", {m: {**SIZES, "map": 0.7, "benchmark": {"kind": "ukbench", "ns": 3.1}} for m in METHODS},
     ["method", "N-S", "mAP"]),
    ("neardup", pairs_metrics(), ["method", "µAP", "R@P90", "mAP"]),
])
def test_benchmark_tables_are_written_and_fit(tmp_path, dataset, metrics, columns):
    written = write_tables(tmp_path, dataset, metrics, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 1000)
    names = {p.name for p in written}
    assert {"benchmark.csv", "benchmark.md", "benchmark.tex"} <= names
    assert list(pd.read_csv(tmp_path / "benchmark.csv").columns) == columns
    for tex in (p for p in written if p.suffix == ".tex"):
        widths = tabular_widths(tex.read_text())
        assert widths and max(widths) <= TEXTWIDTH_PT, (tex.name, widths)
    md = (tmp_path / "benchmark.md").read_text()
    assert md.count("\n|") == len(METHODS) + 2 and "**" in md
    if dataset == "neardup":
        assert "benchmark_families.tex" in names and r"$\mu$AP" in (tmp_path / "benchmark.tex").read_text()


def test_benchmark_csv_holds_the_printed_numbers(tmp_path):
    # 0.187369 * 100 is 18.736900000000002 in floating point: the CSV holds 18.7, as printed; N-S two decimals
    metrics = {m: {**SIZES, "map": 0.187369 + i / 1000, "benchmark": {"kind": "ukbench", "ns": 3.14159}}
               for i, m in enumerate(METHODS[:2])}
    write_tables(tmp_path, "ukbench", metrics, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 1000)
    assert (tmp_path / "benchmark.csv").read_text().splitlines() == [
        "method,N-S,mAP", "mobilenet_v2-gap,3.14,18.7", "mobilenet_v2-gem,3.14,18.8"]
    md = (tmp_path / "benchmark.md").read_text()
    assert "| mobilenet_v2-gap | **3.14** | 18.7 |" in md and "| mobilenet_v2-gem | **3.14** | **18.8** |" in md


def test_class_level_metrics_have_no_benchmark_table():
    assert benchmark_frames("corel1k", {"a": {"map": 0.5}}) == {}


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="pdflatex is not installed")
def test_pdflatex_sets_the_benchmark_tables_without_an_overfull_box(tmp_path):
    write_tables(tmp_path / "t", "neardup", pairs_metrics(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 1000)
    write_tables(tmp_path / "r", "roxford5k", revisitop_metrics(0.0), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                 1000)
    from test_tables import assert_pdflatex_fits

    assert_pdflatex_fits(sorted((tmp_path / "t").glob("*.tex")) + sorted((tmp_path / "r").glob("*.tex")), tmp_path)


def test_report_section_of_copy_detection_has_intervals_and_every_family():
    from cbir.report.benchmark_tables import report_section

    metrics = pairs_metrics()
    for entry in metrics.values():
        entry["ci95"] = {"map": [0.45, 0.55]}
        entry["benchmark"].update({"micro_ap_ci95": [0.3, 0.6], "recall@p0.9_ci95": [0.0, 0.3], "n_positives": 60})
        for family in entry["benchmark"]["families"].values():
            family.update({"recall@p0.9": 0.25, "map": 0.75, "n_queries": 7})
    text = report_section("neardup", metrics)
    assert text.startswith("## Benchmark scores (`neardup`)\n\n") and text.endswith("(CSV, Markdown, LaTeX).\n\n")
    lines = text.splitlines()
    assert "| `mobilenet_v2-gap` | 40.0 [30.0, 60.0] | 20.0 [0.0, 30.0] | 50.0 [45.0, 55.0] |" in lines
    assert "60 of the queries have one" in text and "top-10" in text and "queries: blur 7, color 7" in text
    family_rows = [line for line in lines if line.startswith("| `fusion` |")]
    assert family_rows[1:] == ["| `fusion` | " + " | ".join(f"{10 * j:.1f}" for j in range(10)) + " |",
                               "| `fusion` | " + " | ".join(["25.0"] * 10) + " |",
                               "| `fusion` | " + " | ".join(["75.0"] * 10) + " |"]
    assert report_section("corel1k", {"a": {"map": 0.5}}) == ""
