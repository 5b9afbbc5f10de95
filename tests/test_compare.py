"""`cbir compare`: experiments x datasets x methods from `dvc exp show --json`, one metric, 120 columns."""

from __future__ import annotations

import csv
import io

import pytest

from cbir.errors import CbirError
from cbir.report.compare import compare

METHODS = ["mobilenet_v2-gap", "mobilenet_v2-gem", "efficientnet_lite0-gem", "hsv_hist", "color_moments",
           "correlogram", "lbp", "glcm", "hog", "fusion"]


def _metrics(offset: float) -> dict:
    return {f"metrics/{ds}.json": {"data": {m: {"map": round(0.1 + offset + i / 100 + j / 1000, 6),
                                                "p@10": round(0.2 + offset + i / 100, 6)}
                                            for i, m in enumerate(METHODS)}}
            for j, ds in enumerate(["tuxpaint", "fashion_mnist"])}


def exp_json() -> list:
    """The shape `dvc exp show --json` prints: workspace, the baseline commit with its experiments."""
    return [{"rev": "workspace", "name": None, "data": {"metrics": _metrics(0.0)}},
            {"rev": "0123456789abcdef", "name": "main", "data": {"metrics": _metrics(0.0)},
             "experiments": [{"name": f"exp-{n}", "revs": [{"rev": f"{n}abcdef0", "name": f"exp-{n}",
                                                             "data": {"metrics": _metrics(n / 10)}}]}
                             for n in (1, 2, 3)]}]


def test_text_fits_120_columns_and_names_every_row():
    text = compare(None, "map", "text", exp_json=exp_json())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    rows = [line for line in lines[3:] if line and line.split()[0] in {"workspace", "main", "exp-1", "exp-2",
                                                                        "exp-3"}]
    assert len(rows) == 5 * 2  # every experiment x dataset, each naming its experiment
    first = rows[0].split()
    assert first[:2] == ["workspace", "fashion_mnist"] and first[2] == ".101" and len(first) == 12
    assert "A mobilenet_v2-gap" in text and "J fusion" in text


def test_csv_and_latex_carry_the_same_numbers():
    rows = list(csv.DictReader(io.StringIO(compare(None, "p@10", "csv", exp_json=exp_json()))))
    assert [r["experiment"] for r in rows] == ["workspace"] * 2 + ["main"] * 2 + ["exp-1"] * 2 + ["exp-2"] * 2 + \
        ["exp-3"] * 2
    assert all(r["experiment"] for r in rows)
    assert rows[4]["dataset"] == "fashion_mnist" and rows[4]["hog"] == "0.380"
    tex = compare(None, "p@10", "latex", exp_json=exp_json())
    assert r"\begin{tabular}{ll" + "r" * 10 + "}" in tex and r"exp-1 & tuxpaint & 0.300" in tex
    assert r"mobilenet\_v2-gap" in tex


def _benchmarks(offset: float) -> dict:
    """tuxpaint (class labels) and neardup (copy detection: µAP, R@P90, mAP with bounds) as the default writes."""
    neardup = {m: {"map": 0.5, "map_lo": 0.4, "map_hi": 0.6, "p@10": 0.08, "micro_ap": round(0.7 + offset + i / 100, 6),
                   "micro_ap_lo": 0.6, "micro_ap_hi": 0.8, "recall@p0.9": round(0.3 + i / 100, 6)}
               for i, m in enumerate(METHODS)}
    return {"metrics/tuxpaint.json": _metrics(offset)["metrics/tuxpaint.json"],
            "metrics/neardup.json": {"data": neardup}}


def benchmark_exp_json() -> list:
    return [{"rev": "workspace", "name": None, "data": {"metrics": _benchmarks(0.0)}},
            {"rev": "0123456789abcdef", "name": "main", "data": {"metrics": _benchmarks(0.0)},
             "experiments": [{"name": "exp-quick", "revs": [{"rev": "1abcdef0", "name": "exp-quick",
                                                               "data": {"metrics": _benchmarks(0.05)}}]}]}]


def test_micro_ap_across_experiments_fits_120_columns_and_leaves_out_datasets_without_it():
    text = compare(None, "micro_ap", "text", exp_json=benchmark_exp_json())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120 and lines[0].startswith("micro_ap per method")
    rows = [line.split() for line in lines[3:] if line and line.split()[0] in {"workspace", "main", "exp-quick"}]
    assert [r[:2] for r in rows] == [["workspace", "neardup"], ["main", "neardup"], ["exp-quick", "neardup"]]
    assert rows[2][2:4] == [".750", ".760"] and len(rows[2]) == 2 + len(METHODS)
    csv_rows = list(csv.DictReader(io.StringIO(compare(None, "recall@p0.9", "csv", exp_json=benchmark_exp_json()))))
    assert {r["dataset"] for r in csv_rows} == {"neardup"} and csv_rows[0]["lbp"] == "0.360"
    tex = compare(None, "micro_ap", "latex", exp_json=benchmark_exp_json())
    assert r"\caption{$\mu$AP of every method" in tex and r"\label{tab:compare-micro-ap}" in tex


def test_default_is_each_datasets_headline_metric():
    text = compare(None, None, "text", exp_json=benchmark_exp_json())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120 and lines[0].startswith("each dataset's headline metric")
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in lines[3:]
            if line and line.split()[0] in {"workspace", "main", "exp-quick"}}
    assert rows[("workspace", "neardup", "micro_ap")][0] == ".700"
    assert rows[("workspace", "tuxpaint", "p@10")][0] == ".200"  # class labels: P@10 first, as the README
    csv_rows = list(csv.DictReader(io.StringIO(compare(None, "", "csv", exp_json=benchmark_exp_json()))))
    assert {(r["dataset"], r["metric"]) for r in csv_rows} == {("neardup", "micro_ap"), ("tuxpaint", "p@10")}
    tex = compare(None, "headline", "latex", exp_json=benchmark_exp_json())
    assert "Experiment & Dataset & Metric & " in tex and r"main & neardup & $\mu$AP & 0.700" in tex


def test_bad_metric_and_no_metrics_are_one_line():
    with pytest.raises(CbirError) as err:
        compare(None, "ndcg", exp_json=benchmark_exp_json())
    assert str(err.value) == ("--metric 'ndcg' is in no metrics/<dataset>.json: choose one of map, map_hi, map_lo, "
                              "micro_ap, micro_ap_hi, micro_ap_lo, p@10, recall@p0.9 (or leave it out for each "
                              "dataset's headline metric)")
    with pytest.raises(CbirError, match="no metrics/<dataset>.json"):
        compare(None, "map", exp_json=[{"rev": "workspace", "data": {"metrics": {}}}])
