"""Every dataset reported in its own terms: tiny ROxford-, UKBench-, Copydays- and Holidays-layout datasets run
through every stage (figures and report included, in process) get their protocol's figures and tables and no
class-level ones; the figures' selections (pooled PR, P90 point, misses, distractor scores, N-S, roles, the query
box) by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import (METHOD, PALETTE, bench_params, colour_image, encode, revisitop_archives, run_stages,
                           write_tar, write_zip)

from cbir.scoring.benchmark_metrics import micro_ap, recall_at_precision
from cbir.features.handcrafted import descriptor_node
from cbir.figures import judged as jd
from cbir.figures.benchmark_summary import figure_names
from cbir.figures.trials import box_on

pytestmark = pytest.mark.slow

CLASS_LEVEL = ("pk_curves", "pr_curves", "per_class_p10", "confusions_")


def _copydays(folder: Path) -> list[Path]:
    originals = {b: colour_image(PALETTE[i], seed=i) for i, b in enumerate(("2000", "2001", "2002", "2003"))}
    archives = [write_tar(folder / "copydays_original.tar.gz",
                          {f"original/{b}00.jpg": encode(px) for b, px in originals.items()})]
    archives.append(write_tar(folder / "copydays_jpeg.tar.gz", {
        f"jpegqual/{q}/{b}00.jpg": encode(px) for b, px in originals.items() for q in (10, 50)}))
    archives.append(write_tar(folder / "copydays_strong.tar.gz", {
        f"strong/{b}01.jpg": encode(255 - px) for b, px in originals.items()}))
    return archives


def _ukbench(folder: Path) -> Path:
    members = {f"full/ukbench{i:05d}.jpg": encode(colour_image(PALETTE[i // 4], seed=i)) for i in range(16)}
    return write_zip(folder / "ukbench.zip", members)


def _holidays_archives(folder: Path) -> str:
    from test_benchmarks import _holidays

    return "dataset.archive=[" + ",".join(map(str, _holidays(folder))) + "]"


CASES = {"holidays": ("groups", _holidays_archives),
         "roxford5k": ("revisitop", lambda d: "dataset.archive=[" + ",".join(map(str, revisitop_archives(d))) + "]"),
         "ukbench": ("ukbench", lambda d: f"dataset.archive={_ukbench(d)}"),
         "copydays": ("pairs", lambda d: "dataset.archive=[" + ",".join(map(str, _copydays(d))) + "]")}


@pytest.fixture(scope="module", params=sorted(CASES))
def reported(request, tmp_path_factory):
    """One benchmark run through download .. report in a temporary root, with two cheap methods."""
    from cbir.figures import figure_files as figures
    from cbir.report import report_files as report

    name = request.param
    kind, archive = CASES[name]
    folder = tmp_path_factory.mktemp(name)
    params = bench_params(name, archive(folder))
    params["methods"] = {"color_moments": dict(METHOD),
                         "hsv_hist": {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram", {})}}
    params["figures"].update(tsne_max_points=40, tsne_iterations=250, thumb_size=32, dpi=40, n_queries=2)
    root = folder / "repo"
    metrics = run_stages(params, root)
    emitter = figures._emitter

    def spy(ctx, writer, out_dir):  # the title each figure is drawn with
        emit = emitter(ctx, writer, out_dir)

        def recorded(index, fig_name, title, caption, build, /, *args, **kwargs):
            reported_titles.setdefault(name, {})[fig_name] = kwargs.get("title", "")
            return emit(index, fig_name, title, caption, build, *args, **kwargs)
        return recorded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "_emitter", spy)
        figures.run(params, root)
    report.run(params, root)
    return name, kind, root, params, metrics


#: per dataset, the title each figure was drawn with (filled by the fixture)
reported_titles: dict[str, dict[str, str]] = {}


def test_each_report_has_its_protocols_figures_and_no_class_level_ones(reported):
    name, kind, root, params, _ = reported
    folder = root / "reports" / name / "figures"
    index = json.loads((folder / "figures.json").read_text())
    names = [entry["name"] for entry in index]
    assert sorted(names) == sorted(figure_names(kind, list(params["methods"])))
    assert not [n for n in names if n.startswith(CLASS_LEVEL)]
    for entry in index:
        assert (folder / entry["png"]).stat().st_size > 0 and (folder / entry["pdf"]).stat().st_size > 0
    on_disk = {p.stem for p in folder.glob("*.png")}
    assert on_disk == set(names)
    relevance = {"revisitop": "same landmark", "ukbench": "same object", "pairs": "image a copy was made from",
                 "groups": "same scene group"}[kind]
    tsne = next(e for e in index if e["name"] == "embedding_tsne")
    assert "coloured by role" in tsne["caption"]
    comparison = next(e for e in index if e["name"] == "comparison")
    assert {"revisitop": "mAP E, mAP M, mAP H, mP@10 M, mP@10 H", "ukbench": "N-S, mAP", "groups": "mAP, plain mAP",
            "pairs": "µAP, R@P90"}[kind] in comparison["caption"] and "P@10 and" not in comparison["caption"]
    trials = next(e for e in index if e["name"] == "trials_color_moments")
    assert "Marks:" in trials["caption"]
    if kind == "pairs":
        assert {"misses_color_moments", "pr_pooled", "families_micro_ap", "distractor_scores"} <= set(names)
    if kind == "ukbench":
        assert "ns_distribution" in names
    if kind == "revisitop":
        assert "with its box" in trials["caption"]
    from cbir.figures.benchmark_summary import title_of
    assert relevance in title_of(name, kind)
    titles = reported_titles[name]  # every figure's own title names the relevance
    assert sorted(titles) == sorted(names) and all(relevance in t for t in titles.values()), titles


def test_each_report_has_its_protocols_tables_and_no_class_level_ones(reported):
    name, kind, root, _, metrics = reported
    tables = root / "reports" / name / "tables"
    files = {p.name for p in tables.iterdir()}
    assert {"main.csv", "main.tex", "benchmark.csv", "benchmark.tex"} <= files
    assert not [f for f in files if f.startswith("per_class")]
    main = pd.read_csv(tables / "main.csv")
    shown = {"revisitop": ["e_map", "m_map", "h_map", "m_mp@10", "h_mp@10"], "ukbench": ["ns", "map"],
             "pairs": ["micro_ap", "recall@p0.9"], "groups": ["map", "plain_map"]}[kind]
    assert [c for c in main.columns if c in shown or c.startswith("p@")] == shown  # no P@k of classes
    first = main.set_index("method").loc["color_moments"]
    bench = metrics["color_moments"]["benchmark"]
    expected = {"revisitop": lambda: bench["medium"]["map"], "ukbench": lambda: bench["ns"],
                "pairs": lambda: bench["micro_ap"], "groups": lambda: bench["map"]}[kind]()
    assert first[shown[1] if kind == "revisitop" else shown[0]] == expected
    text = (root / "reports" / name / "report.md").read_text()
    assert "## P@10 per class" not in text and "## Benchmark scores" in text and "class-level P@k" in text
    main_tex = (tables / "main.tex").read_text()
    assert not re.search(r"(?<!m)P@10", main_tex) and main_tex.isascii()  # revisitop's mP@10 is its own


def test_the_best_method_is_the_same_by_the_headline_metric_everywhere(reported):
    from cbir.report.headline import best, headline, label
    from cbir.report.readme import results_block

    name, kind, root, _, metrics = reported
    top = best(metrics, kind)
    index = json.loads((root / "reports" / name / "figures" / "figures.json").read_text())
    versus = next(e for e in index if e["name"] == "trials_baseline_vs_best")
    assert f"by {label(headline(kind))}" in versus["caption"]
    if top[0] != "color_moments":  # the baseline is the first method; the other is the best
        assert f"best method by {label(headline(kind))}, `{top[0]}`" in versus["caption"]
    else:
        assert f"runner-up method by {label(headline(kind))}, `{top[1]}`" in versus["caption"]
    # the README's summary picks by the same metric
    (root / "params.yaml").write_text("datasets: {" + name + ": {}}\n")
    block = results_block(root)
    assert f"| `{name}` | {label(headline(kind))} |" in block


# ---------------------------------------------------------------- the selections, by hand

def _judged():
    return {"kind": "pairs", "queries": {"q0": {"positives": ["r0"]}, "q1": {"positives": ["r1"]},
                                         "q2": {"positives": []}}}


RANKING = pd.DataFrame({"query_id": ["q0", "q0", "q1", "q1", "q2", "q2"], "rank": [1, 2, 1, 2, 1, 2],
                        "image_id": ["r0", "r1", "r0", "x", "r1", "x"],
                        "score": [0.95, 0.5, 0.9, 0.4, 0.92, 0.3]})


def test_pooled_pr_and_the_p90_point_agree_with_the_official_scores():
    scores, positive, n_pos = jd.pooled_pairs(RANKING, _judged())
    assert n_pos == 2 and positive.tolist() == [True, False, False, False, False, False]
    curve = jd.pooled_pr(scores, positive, n_pos)
    # pooled: 0.95 true, 0.92 false, 0.9 false, 0.5 false...: precision 1, 1/2, 1/3; recall 1/2 after the first
    assert curve["precision"].tolist()[:3] == [1.0, 0.5, pytest.approx(1 / 3)] and curve["recall"].iloc[0] == 0.5
    point = jd.operating_point(curve)
    assert point == {"recall": 0.5, "precision": 1.0, "threshold": 0.95}
    assert point["recall"] == recall_at_precision(scores, positive, n_pos, 0.9)
    in_order = positive[np.lexsort((positive, -scores))]
    hits = curve["precision"].to_numpy()[in_order]  # the precision at each true pair: µAP is their sum / n_pos
    assert hits.sum() / n_pos == micro_ap(scores, positive, n_pos) == 0.5


def test_misses_distractor_scores_and_roles_by_hand():
    missed = jd.misses(RANKING, _judged())  # q0 finds r0 at rank 1; q1's r1 is not in its top 2; q2 has none
    assert missed["query_id"].tolist() == ["q1"] and missed["reference"].tolist() == ["r1"]
    assert np.isnan(missed["ref_rank"].iloc[0]) and np.isnan(missed["ref_score"].iloc[0])
    assert missed[["top_id", "top_score"]].values.tolist() == [["r0", 0.9]]
    lower = RANKING.assign(image_id=["r0", "r1", "x", "r1", "r1", "x"])  # q1's reference now at rank 2
    assert jd.misses(lower, _judged())[["query_id", "ref_rank", "ref_score", "top_id"]].values.tolist() == [
        ["q1", 2.0, 0.4, "x"]]
    assert jd.distractor_top_scores(RANKING, _judged()).to_dict() == {"q2": 0.92}
    roles = jd.roles(["q0", "r0", "r1", "x"], ["query", "database", "database", "database"], _judged())
    assert roles.tolist() == ["query", "reference", "reference", "distractor"]


def test_ns_per_query_counts_the_query_itself():
    judged = {"kind": "ukbench", "queries": {"q0": {"positives": ["a", "b", "c"], "junk": ["q0db"]}}}
    ranking = pd.DataFrame({"query_id": ["q0"] * 5, "rank": [1, 2, 3, 4, 5],
                            "image_id": ["q0db", "a", "x", "b", "c"], "score": [1.0, 0.9, 0.8, 0.7, 0.6]})
    assert jd.ns_per_query(ranking, judged).to_dict() == {"q0": 3}  # c at rank 5 is outside the top 4
    assert jd.statuses({"positives": ["p"], "junk": ["own"]}, "groups") == {"own": "junk", "p": "relevant"}
    assert jd.statuses({"easy": ["e"], "hard": ["h"], "junk": ["j"]}, "revisitop") == {"e": "easy", "h": "hard",
                                                                                       "j": "junk"}


def test_the_query_box_lands_where_pad_puts_the_image():
    # a 100 x 50 image padded into a 100 x 100 white square sits at rows 25..74: box (10, 10)-(30, 20) at rows 35..45
    thumb = np.full((100, 100, 3), 255, dtype=np.uint8)
    out = box_on(thumb, (10, 10, 30, 20), (100, 50), colour="#000000", width=1)
    dark = np.argwhere(out[:, :, 0] == 0)
    assert dark[:, 0].min() == 35 and dark[:, 0].max() == 45 and dark[:, 1].min() == 10 and dark[:, 1].max() == 30
    assert out[40, 20, 0] == 255  # inside the box untouched
