"""Tables for the paper: CSV + LaTeX (booktabs, best in bold, intervals), p-values below the permutation
test's resolution, Holm's correction, all-pairs tests, and the report stage writing them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbir.scoring import statistics as st
from cbir.report.tables import (
    CMR10_WIDTHS,
    TEXTWIDTH_PT,
    constants_to_caption,
    format_p,
    main_display,
    main_frame,
    per_class_frame,
    text_width,
    to_latex,
    write_tables,
)
from cbir.scoring.metric_files import run as run_evaluate
from cbir.report.report_files import run as run_report
from test_retrieve_evaluate_stages import make_params, write_dataset

METRICS = {"gap": {"p@10": 0.8123, "map": 0.5, "ci95": {"p@10": [0.79, 0.83], "map": [0.45, 0.55]},
                   "n_queries": 50, "n_database": 950, "kind": "deep"},
           "hsv_hist": {"p@10": 0.6, "map": 0.61, "ci95": {"p@10": [0.55, 0.65], "map": [0.58, 0.64]},
                        "n_queries": 50, "n_database": 950, "kind": "handcrafted"}}


def test_format_p_one_format_three_significant_digits_and_floors():
    assert format_p(1 / 10001, 10000) == "< 1e-4"
    assert format_p(9.999e-05, 10000) == "< 1e-4"
    assert format_p(2 / 10001, 10000) == "0.000200"
    assert format_p(1 / 1001, 1000) == "< 1e-3"
    assert format_p(1 / 100001, 100000) == "< 1e-4"  # one floor whatever the permutation count
    assert format_p(0.0312, 10000) == "0.0312" and format_p(float("nan"), 10) == "–"
    assert format_p(0.0200043) == "0.0200" and format_p(1.0) == "1.00" and format_p(0.12588) == "0.126"
    assert format_p(1 / 10001) == "< 1e-4" and format_p(4.68e-05) == "< 1e-4"  # Wilcoxon: no exponent form
    assert format_p(1e-4) == "0.000100"


def test_holm_by_hand_and_nan_left_out():
    np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = st.holm([float("nan"), 0.2, 0.6])
    assert np.isnan(out[0]) and out[1:].tolist() == pytest.approx([0.4, 0.6])
    assert st.holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # 2 x 0.8 capped at 1 and st.holm([]).size == 0


def test_all_pairs_tests_are_the_paired_tests_with_holm():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(30)]
    ap = {m: pd.Series(rng.random(30) + shift, index=ids) for m, shift in (("a", 0.3), ("b", 0.0), ("c", 0.0))}
    pairs = st.all_pairs_tests(ap, n_permutations=999, seed=0)
    assert pairs[["a", "b"]].values.tolist() == [["a", "b"], ["a", "c"], ["b", "c"]]
    for row in pairs.itertuples():
        one = st.paired_test(ap[row.a].to_numpy(), ap[row.b].to_numpy(), 999, 0)
        assert row.p_permutation == one["p_permutation"] and row.mean_diff_ap == pytest.approx(one["mean_diff"])
    np.testing.assert_allclose(pairs["p_holm"], st.holm(pairs["p_permutation"].to_numpy()))
    assert pairs.loc[0, "p_permutation"] == pytest.approx(1 / 1000)  # a is clearly better than b


def test_main_table_latex_bolds_the_best_and_keeps_intervals():
    frame = main_frame(METRICS)
    assert list(frame.columns) == ["method", "kind", "p@10", "p@10_lo", "p@10_hi", "map", "map_lo", "map_hi",
                                   "queries", "database"]
    display = main_display(frame, lambda t: f"**{t}**")
    assert display["P@10"].tolist() == ["**0.812** [0.790, 0.830]", "0.600 [0.550, 0.650]"]
    assert display["mAP"].tolist() == ["0.500 [0.450, 0.550]", "**0.610** [0.580, 0.640]"]
    shown, note = constants_to_caption(main_display(frame, lambda t: rf"\textbf{{{t}}}", sep="\n"))
    assert note == "50 queries, 950 database images." and list(shown.columns) == ["method", "P@10", "mAP"]
    tex = to_latex(shown, "Main. " + note, "tab:x")
    lines = tex.splitlines()
    assert r"\toprule" in lines and r"\midrule" in lines and r"\bottomrule" in lines
    assert r"\begin{tabular}{lrr}" in lines
    i = lines.index(r"hsv\_hist & 0.600 & \textbf{0.610} \\")
    assert lines[i + 1] == r" & {\scriptsize [0.550, 0.650]} & {\scriptsize [0.580, 0.640]} \\"
    assert r"gap & \textbf{0.812} & 0.500 \\" in lines


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
    assert r"good & \textbf{1.000}" in (tables / "main.tex").read_text()
    assert r" & {\scriptsize [1.000, 1.000]}" in (tables / "main.tex").read_text()
    pairs = pd.read_csv(tables / "pairs.csv")
    assert len(pairs) == 3 and "p_holm" in pairs.columns
    report = (tmp_path / "reports/toy/report.md").read_text()
    assert "## Every pair of methods" in report and "| good | noisy |" in report
    # P@20 does not fit 4 database images per class: no per_class_p20 table, a note in the report
    assert "No per-class P@20" in report


# --- LaTeX that fits \textwidth --------------------------------------------------------------------------

def tabular_widths(tex: str) -> list[float]:
    """Width of every ``tabular`` in ``tex`` as LaTeX sets it: per column the widest cell (text_width), plus
    ``2 \\tabcolsep`` per column; spanning-header rows are narrower than the columns they span."""
    import re

    widths = []
    for body in re.findall(r"\\begin\{tabular\}\{([lr]+)\}(.*?)\\end\{tabular\}", tex, re.S):
        align, text = body
        rows = [line[:-3].split(" & ") for line in text.splitlines()
                if line.endswith(r" \\") and r"\multicolumn" not in line]
        assert rows and all(len(r) == len(align) for r in rows)
        widths.append(sum(max(text_width(r[j].strip()) for r in rows) for j in range(len(align)))
                      + 12.0 * len(align))
    return widths


def test_text_width_follows_computer_modern():
    assert text_width("0.700") == pytest.approx(4 * 5 + 2.77778)
    assert text_width(r"\textbf{0.700}") == pytest.approx(1.15 * text_width("0.700"))
    assert text_width(r"{\scriptsize [0.1, 0.2]}") == pytest.approx(0.8 * text_width("[0.1, 0.2]"))
    assert text_width(r"a\_b $<$ 1") == pytest.approx(5 + 3.6 + 5.55556 + 3.33333 + 7.77778 + 3.33333 + 5)


def test_embedded_widths_are_cmr10s_font_metrics():
    import matplotlib

    afm = Path(matplotlib.get_data_path()) / "fonts" / "afm" / "cmr10.afm"
    for line in afm.read_text(encoding="latin-1").splitlines():
        if line.startswith("C "):
            fields = dict(part.strip().split(" ", 1) for part in line.split(";") if part.strip())
            if int(fields["C"]) in CMR10_WIDTHS:
                assert CMR10_WIDTHS[int(fields["C"])] == pytest.approx(float(fields["WX"]), abs=1e-3)


def test_the_width_check_catches_an_overfull_table():
    cell = r"\textbf{0.700} [0.583, 0.817]"
    wide = "\\begin{tabular}{l" + "r" * 8 + "}\n" + " & ".join([r"efficientnet\_lite0-gem"] + [cell] * 8) + " \\\\\n\\end{tabular}"
    assert tabular_widths(wide)[0] > 2.5 * TEXTWIDTH_PT  # the layout before: 986 pt by pdflatex


METHODS = ["mobilenet_v2-gap", "mobilenet_v2-gem", "efficientnet_lite0-gem", "hsv_hist", "color_moments",
           "correlogram", "lbp", "glcm", "hog", "fusion", "resnet50-gem-whitened"]


def paper_sized_tables(tmp_path):
    rng = np.random.default_rng(0)
    keys = ["p@1", "p@5", "p@10", "p@20", "p@50", "r@10", "map", "map@10"]
    metrics = {m: {**{k: float(rng.random()) for k in keys}, "ci95": {k: [0.1234, 0.9876] for k in keys},
                   "n_queries": 1000, "n_database": 99999, "kind": "deep", "ap": "non-interpolated"}
               for m in METHODS}
    classes = ["animals", "clothes", "food", "hobbies", "household", "plants", "people", "vehicles_and_ships",
               "sports", "space", "symbols", "towns"]
    per_class = pd.DataFrame([{"method": m, "label": c, "n_queries": 5, "p@10": rng.random(), "p@20": rng.random()}
                              for m in METHODS for c in classes])
    sig = pd.DataFrame([{"method": m, "baseline": METHODS[0], "n": 1000, "mean_diff_ap": -0.1234,
                         "p_permutation": 1 / 10001, "p_wilcoxon": 4.68e-05, "p_holm": 0.00089991}
                        for m in METHODS[1:]])
    pairs = st.all_pairs_tests({m: pd.Series(rng.random(40)) for m in METHODS}, 10000, 0)
    return write_tables(tmp_path, "tuxpaint_more", metrics, per_class, sig, pairs, 10000)


def test_every_latex_table_fits_the_text_width(tmp_path):
    written = [p for p in paper_sized_tables(tmp_path) if p.suffix == ".tex"]
    assert {p.stem for p in written} == {"main", "per_class_p10", "per_class_p20", "significance", "pairs"}
    for path in written:
        widths = tabular_widths(path.read_text())
        assert widths and max(widths) <= TEXTWIDTH_PT, (path.name, widths)
    main = (tmp_path / "main.tex").read_text()
    assert "1000 queries, 99999 database images." in main and "mAP: non-interpolated AP." in main
    assert "5 queries per class." in (tmp_path / "per_class_p10.tex").read_text()
    sig = (tmp_path / "significance.tex").read_text()
    assert r"Baseline mobilenet\_v2-gap, 1000 paired queries." in sig and r"\multicolumn{3}{c}{$p$}" in sig
    assert "e-05" not in sig and "$<$ 1e-4 & $<$ 1e-4 & 0.000900" in sig


@pytest.mark.skipif(not __import__("shutil").which("pdflatex"), reason="pdflatex is not installed")
def test_pdflatex_sets_every_table_without_an_overfull_box(tmp_path):
    assert_pdflatex_fits([p for p in paper_sized_tables(tmp_path / "tables") if p.suffix == ".tex"], tmp_path)


def assert_pdflatex_fits(tables, tmp_path) -> None:
    """pdflatex sets every ``.tex`` table in an ``article`` without an overfull box."""
    import subprocess

    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + "".join(f"\\input{{{p}}}\n\\clearpage\n" for p in tables) + "\\end{document}\n")
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)
    assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text(errors="replace")


def across_found(datasets) -> dict:
    """Six datasets' compact metrics (every kind), intervals everywhere, 11 methods with long names."""
    from cbir.report.headline import METRICS

    found = {}
    for ds, kind in datasets:
        cols = [k for k, _ in METRICS[kind]]
        metrics = {m: {**{k: 0.463 for k in cols}, **{f"{k}_lo": 0.382 for k in cols}, **{f"{k}_hi": 0.553 for k in cols}}
                   for m in METHODS}
        found[ds] = {"metrics": metrics, "protocol": "holdout", "n_queries": 60, "n_database": 679,
                     **({"kind": kind, "n_without_reference": 3} if kind else {})}
    return found


ALL_KINDS = [("tuxpaint", None), ("neardup", "pairs"), ("roxford5k", "revisitop"), ("ukbench", "ukbench"),
             ("holidays", "groups"), ("fashion_mnist", None)]


def test_datasets_tex_fits_with_dataset_groups_and_intervals_below(tmp_path):
    from cbir.report.across import latex

    tex = latex(across_found(ALL_KINDS))
    widths = tabular_widths(tex)
    assert len(widths) > 1 and max(widths) <= TEXTWIDTH_PT, widths  # 196.7 pt too wide before
    assert r"\resizebox" not in tex and r"\small" not in tex and "µ" not in tex
    assert r"\multicolumn{3}{c}{neardup}" in tex and r"\multicolumn{2}{c}{fashion\_mnist}" in tex
    assert "mobilenet\\_v2-gap & 0.463 & 0.463 \\\\\n & {\\scriptsize [0.382, 0.553]} & {\\scriptsize [0.382, 0.553]}" in tex
    # a dataset group is never split over two blocks when it fits in one
    import re
    spans = re.findall(r"\\multicolumn\{\d+\}\{c\}\{([^}]*)\}", tex)
    assert sorted(ds.replace("\\_", "_") for ds in spans) == sorted(dict(ALL_KINDS))  # each group whole, once
    assert sum(int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}\{c\}", tex)) == 2 + 3 + 2 + 2 + 1 + 2


def test_non_ascii_becomes_latex_and_the_delta_header_is_measured():
    from cbir.report.tables import ascii_tex

    assert ascii_tex("ΔAP vs initial") == r"$\Delta$AP vs initial" and ascii_tex("µAP ± 0.1") == r"$\mu$AP $\pm$ 0.1"
    assert ascii_tex("café → x") == r"cafe $\to$ x" and ascii_tex("日") == "?"
    display = pd.DataFrame({"method": ["a"], "ΔAP vs initial": ["+0.100"]})
    tex = to_latex(display, "Feedback: ΔAP.", "tab:x")
    assert r"$\Delta$AP vs initial" in tex and "Feedback: $\\Delta$AP." in tex and tex.isascii()
    assert text_width(r"$\Delta$AP") == pytest.approx(8.33333 + text_width("AP"))


def test_a_table_too_wide_even_in_blocks_is_scaled_to_the_text_width():
    display = pd.DataFrame({"method": ["m" * 30], "wide": ["W" * 40]})
    tex = to_latex(display, "Too wide.", "tab:w")
    assert "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}{lr}" in tex and tex.count("\\end{tabular}\n}") == 1
    assert r"\resizebox" not in to_latex(display.assign(wide=["W"]), "Fits.", "tab:f")


@pytest.mark.skipif(not __import__("shutil").which("pdflatex"), reason="pdflatex is not installed")
def test_pdflatex_sets_datasets_tex_and_a_feedback_table(tmp_path):
    from cbir.report.across import latex

    (tmp_path / "datasets.tex").write_text(latex(across_found(ALL_KINDS)))
    display = pd.DataFrame({"method": METHODS[:3], "rounds": ["3"] * 3, "ΔAP vs initial": ["+0.012"] * 3})
    (tmp_path / "feedback.tex").write_text(to_latex(display, "Relevance feedback: ΔAP per round.", "tab:fb"))
    assert_pdflatex_fits([tmp_path / "datasets.tex", tmp_path / "feedback.tex"], tmp_path)
