"""The retrieve and evaluate stages on a tiny generated manifest and feature files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbir.errors import CbirError
from cbir.scoring.evaluation import per_query_metrics
from cbir.search.exact import exact_topk
from cbir.scoring.metric_files import run as run_evaluate
from cbir.search.rankings import run as run_retrieve
from integrity_helpers import write_features

LABELS = ["cat", "dog", "fox"]
PER_CLASS = 6


def write_dataset(root: Path, protocol: str = "holdout", noise: dict | None = None) -> pd.DataFrame:
    """18 images (3 classes x 6), two queries per class under holdout; one .npy per method."""
    rows = []
    for c, label in enumerate(LABELS):
        for j in range(PER_CLASS):
            split = "query" if (protocol == "holdout" and j < 2) else "database"
            rows.append({"image_id": f"{label}_{j:02d}", "path": f"data/raw/toy/{label}/{j}.png",
                         "label": label, "split": split, "width": 32, "height": 32,
                         "sha256": f"{c}{j:063d}", "protocol": protocol})
    manifest = pd.DataFrame(rows).sort_values("image_id").reset_index(drop=True)
    curated = root / "data" / "curated" / "toy"
    curated.mkdir(parents=True)
    manifest.to_csv(curated / "manifest.csv", index=False)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(LABELS), 16))
    codes = manifest["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy()
    features_dir = root / "data" / "features" / "toy"
    features_dir.mkdir(parents=True)
    for method, sigma in (noise or {"good": 0.05, "noisy": 3.0}).items():
        x = centres[codes] + sigma * rng.standard_normal((len(manifest), 16))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        write_features(features_dir / f"{method}.npy", x, manifest)
    return manifest


def make_params(**overrides) -> dict:
    params = {
        "seed": 0,
        "dataset": {"name": "toy"},
        "methods": {"good": {"kind": "handcrafted"}, "noisy": {"kind": "handcrafted"}},
        "retrieval": {"k": 4, "block_size": 5, "index": "exact"},
        "evaluation": {"ks": [1, 5, 10, 20, 50], "n_bootstrap": 200, "seed": 0,
                       "n_permutations": 500, "baseline": "noisy"},
    }
    for key, value in overrides.items():  # a retrieval override changes only the keys it names
        params[key] = {**params[key], **value} if key == "retrieval" else value
    return params


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob(".*") if p.is_file()]


def test_run_retrieve_exact(tmp_path):
    manifest = write_dataset(tmp_path)
    run_retrieve(make_params(), "good", tmp_path)
    frame = pd.read_csv(tmp_path / "data/retrieval/toy/good.csv")
    assert list(frame.columns) == ["query_id", "rank", "image_id", "score"]
    queries = manifest[manifest.split == "query"]
    database = manifest[manifest.split == "database"]
    assert len(frame) == len(queries) * 4
    assert frame.groupby("query_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()
    assert set(frame["image_id"]) <= set(database["image_id"])
    x = np.load(tmp_path / "data/features/toy/good.npy")
    idx, scores = exact_topk(x[queries.index], x[database.index], 4)
    assert frame["image_id"].tolist() == database["image_id"].to_numpy()[idx].ravel().tolist()
    np.testing.assert_allclose(frame["score"], scores.ravel(), atol=1e-6)
    # well-separated clusters: every top-4 shares the query's label
    label = dict(zip(manifest.image_id, manifest.label))
    assert (frame["query_id"].map(label) == frame["image_id"].map(label)).all()
    info = json.loads((tmp_path / "data/retrieval/toy/good.json").read_text())
    assert info["index"] == "exact" and info["k"] == 4 and "recall_at_k" not in info
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("index, options", [("flat", {}), ("ivf", {"nlist": 2, "nprobe": 2}),
                                            ("hnsw", {"M": 8, "efSearch": 32})])
def test_run_retrieve_faiss_records_recall(tmp_path, index, options):
    write_dataset(tmp_path, protocol="leave_one_out")
    params = make_params(retrieval={"k": 5, "block_size": 7, "index": index, "faiss": options})
    run_retrieve(params, "good", tmp_path)
    frame = pd.read_csv(tmp_path / "data/retrieval/toy/good.csv")
    assert len(frame) == 18 * 5
    assert not (frame["query_id"] == frame["image_id"]).any()  # leave-one-out
    info = json.loads((tmp_path / "data/retrieval/toy/good.json").read_text())
    assert info["index"] == info["index_name"] == f"faiss-{index}" and info["faiss"] == options
    assert info["recall_at_k"] == 1.0  # exhaustive settings on 17 candidates


def test_run_retrieve_applies_rerank(tmp_path):
    write_dataset(tmp_path)
    plain = make_params()
    run_retrieve(plain, "noisy", tmp_path)
    before = pd.read_csv(tmp_path / "data/retrieval/toy/noisy.csv")
    reranked = make_params(retrieval={"k": 4, "block_size": 5, "index": "exact", "per_method": {
        "noisy": {"rerank": {"kind": "dba+aqe", "n": 2, "alpha": 3}}}})
    run_retrieve(reranked, "noisy", tmp_path)
    after = pd.read_csv(tmp_path / "data/retrieval/toy/noisy.csv")
    assert len(after) == len(before)
    assert not np.allclose(after["score"], before["score"])
    info = json.loads((tmp_path / "data/retrieval/toy/noisy.json").read_text())
    assert info["rerank"] == {"kind": "dba+aqe", "n": 2, "alpha": 3.0}


def test_run_evaluate_writes_metrics_and_plots(tmp_path):
    manifest = write_dataset(tmp_path)
    run_evaluate(make_params(), tmp_path)
    metrics = json.loads((tmp_path / "reports/toy/metrics.json").read_text())
    assert list(metrics) == ["good", "noisy"]
    assert metrics["good"]["kind"] == "handcrafted"
    # the compact DVC metrics file: mAP and P@10 with their bounds, nothing else
    compact = json.loads((tmp_path / "metrics/toy.json").read_text())
    assert compact["noisy"] == {"map": metrics["noisy"]["map"], "map_lo": metrics["noisy"]["ci95"]["map"][0],
                                "map_hi": metrics["noisy"]["ci95"]["map"][1], "p@10": metrics["noisy"]["p@10"],
                                "p@10_lo": metrics["noisy"]["ci95"]["p@10"][0],
                                "p@10_hi": metrics["noisy"]["ci95"]["p@10"][1]}
    good = metrics["good"]
    # holdout: 6 queries, 12 database images (4 per class): p@20/p@50 do not fit
    assert {"p@1", "p@5", "p@10", "r@10", "map", "map@10", "n_queries", "n_database",
            "ci95"} <= set(good)
    assert "p@20" not in good and "p@50" not in good
    assert good["n_queries"] == 6 and good["n_database"] == 12
    assert good["map"] == 1.0 and good["p@1"] == 1.0 and good["p@5"] == pytest.approx(0.8)
    assert good["ci95"]["map"] == [1.0, 1.0]
    x = np.load(tmp_path / "data/features/toy/noisy.npy")
    q, d = manifest.split == "query", manifest.split == "database"
    expected = per_query_metrics(x[q.to_numpy()], x[d.to_numpy()], manifest.label[q], manifest.label[d],
                                 ks=(10,))
    assert metrics["noisy"]["map"] == pytest.approx(expected["ap"].mean(), abs=1e-6)
    lo, hi = metrics["noisy"]["ci95"]["map"]
    assert lo <= metrics["noisy"]["map"] <= hi

    plots = tmp_path / "reports/toy/plots"
    pk = pd.read_csv(plots / "pk.csv")
    assert list(pk.columns) == ["method", "k", "precision", "lo", "hi"]
    assert pk.groupby("method")["k"].max().tolist() == [12, 12]  # curve stops at n_database
    assert pk.query("method == 'good' and k == 5")["precision"].item() == pytest.approx(0.8)
    pr = pd.read_csv(plots / "pr.csv")
    assert list(pr.columns) == ["method", "recall", "precision", "lo", "hi"] and len(pr) == 22
    assert (pr["lo"] <= pr["precision"] + 1e-12).all() and (pr["precision"] <= pr["hi"] + 1e-12).all()
    per_class = pd.read_csv(plots / "per_class.csv")
    assert list(per_class.columns) == ["method", "label", "n_queries", "p@10", "p@20", "ap"]
    assert per_class["p@20"].isna().all()  # 12 database images: P@20 does not fit
    assert per_class.query("method == 'good'")["label"].tolist() == LABELS
    per_query = pd.read_csv(plots / "per_query.csv")
    assert list(per_query.columns[:4]) == ["method", "query_id", "label", "n_relevant"]
    assert {"p@10", "r@10", "ap", "ap@10"} <= set(per_query.columns) and len(per_query) == 12
    sig = pd.read_csv(plots / "significance.csv")
    assert list(sig.columns) == ["method", "baseline", "n", "mean_diff_ap", "p_permutation", "p_wilcoxon",
                                 "p_holm"]
    assert sig["p_holm"].item() == sig["p_permutation"].item()  # a family of one
    pairs = pd.read_csv(tmp_path / "reports/toy/pairs.csv")
    assert pairs[["a", "b"]].values.tolist() == [["good", "noisy"]]
    assert pairs["mean_diff_ap"].item() == pytest.approx(sig["mean_diff_ap"].item())
    assert sig["method"].tolist() == ["good"] and sig["baseline"].tolist() == ["noisy"]
    assert sig["mean_diff_ap"].item() == pytest.approx(1.0 - expected["ap"].mean(), abs=1e-6)
    assert 0 < sig["p_permutation"].item() <= 1 and 0 < sig["p_wilcoxon"].item() <= 1
    assert no_temp_files(tmp_path)


def test_run_evaluate_leave_one_out_without_baseline(tmp_path):
    write_dataset(tmp_path, protocol="leave_one_out")
    params = make_params(evaluation={"ks": [1, 5], "n_bootstrap": 50, "seed": 0,
                                     "n_permutations": 100, "baseline": None})
    run_evaluate(params, tmp_path)
    metrics = json.loads((tmp_path / "reports/toy/metrics.json").read_text())
    assert metrics["good"]["n_queries"] == 18 and metrics["good"]["n_database"] == 17
    assert metrics["good"]["map"] == 1.0 and metrics["good"]["p@5"] == 1.0
    assert pd.read_csv(tmp_path / "reports/toy/plots/significance.csv").empty


def test_mismatched_row_count_raises(tmp_path):
    write_dataset(tmp_path)
    path = tmp_path / "data/features/toy/good.npy"
    np.save(path, np.load(path)[:-1])
    with pytest.raises(CbirError, match=r"good\.npy have 17 rows but the manifest has 18"):
        run_retrieve(make_params(), "good", tmp_path)
    with pytest.raises(CbirError, match="17 rows but the manifest has 18"):
        run_evaluate(make_params(), tmp_path)
    assert not (tmp_path / "data/retrieval").exists() and not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("params, method, message", [
    (make_params(), "missing", "method 'missing' is not in params.yaml"),
    (make_params(methods={"absent": {}}), "absent", r"features for method 'absent' not found .*extract@\w+"),
    (make_params(retrieval={"k": 3, "index": "annoy"}), "good", "unknown retrieval.index 'annoy'"),
    (make_params(retrieval={"k": 3, "index": "ivf", "faiss": {"nprobes": 3}}), "good",
     r"unknown retrieval.faiss keys \['nprobes'\]"),
    (make_params(methods={"good": {"kind": "handcrafted", "rerank": {"kind": "aqe"}}}), "good",
     r"methods.good.rerank is a search setting: move it to retrieval.per_method.good.rerank"),
    (make_params(retrieval={"k": 3, "per_method": {"good": {"rerank": {"kind": "qe"}}}}), "good",
     r"retrieval.per_method.good.rerank: unknown rerank kind 'qe'"),
    (make_params(retrieval={"k": 3, "per_method": {"good": {"index": "hnsw", "nprobe": 3}}}), "good",
     r"unknown retrieval.per_method.good keys \['nprobe'\]"),
])
def test_run_retrieve_bad_params(tmp_path, params, method, message):
    write_dataset(tmp_path)
    with pytest.raises(CbirError, match=message):
        run_retrieve(params, method, tmp_path)


def test_run_evaluate_unknown_baseline_and_missing_manifest(tmp_path):
    params = make_params(evaluation={"ks": [1], "baseline": "resnet50-gap"})
    with pytest.raises(CbirError, match="manifest not found"):
        run_retrieve(params, "good", tmp_path)
    write_dataset(tmp_path)
    with pytest.raises(CbirError, match="evaluation.baseline 'resnet50-gap' is not one of the methods"):
        run_evaluate(params, tmp_path)


def test_one_methods_evaluation_is_the_same_alone_and_the_combine_is_its_rows(tmp_path):
    """Per-method evaluate stages: a method's files have the same bytes whatever the other methods, and the
    combined files are exactly those rows (seeds are per call, floats round-trip through the CSVs)."""
    from cbir.scoring.metric_files import combine, run_method

    write_dataset(tmp_path)
    run_evaluate(make_params(), tmp_path)
    folder = tmp_path / "data/evaluation/toy/good"
    together = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(together) == ["per_class.csv", "per_query.csv", "pk.csv", "pr.csv", "summary.json"]
    alone = make_params(methods={"good": {"kind": "handcrafted"}}, evaluation={**make_params()["evaluation"],
                                                                                  "baseline": None})
    run_method(alone, "good", tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == together
    metrics = json.loads((tmp_path / "reports/toy/metrics.json").read_text())
    assert metrics["good"] == json.loads(together["summary.json"])
    per_query = (tmp_path / "reports/toy/plots/per_query.csv").read_text().splitlines()
    assert per_query[1:7] == together["per_query.csv"].decode().splitlines()[1:]  # good's 6 queries first
    (folder / "summary.json").unlink()
    with pytest.raises(CbirError, match=r"good/summary.json not found: run `dvc repro evaluate@toy` first"):
        combine(make_params(), tmp_path)
