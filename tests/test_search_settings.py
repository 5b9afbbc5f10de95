"""Search settings are search settings: re-ranking and the index belong to retrieve/evaluate (never
extract), the query tool ranks exactly as the pipeline does (αQE, FAISS, the saved index), and batch
queries, ``--exclude-self`` and ``-q`` behave."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from cbir.app.engine import QueryEngine
from cbir.config import compose_yaml
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.search.rankings import run as run_retrieve
from integrity_helpers import rehash
from test_query import build_pipeline_state, run_cli

AQE = {"kind": "aqe", "n": 2, "alpha": 3.0}
SETTINGS = {"hsv_hist": {"index": "hnsw", "faiss": {"M": 8, "efSearch": 16}},
            "mobilenet_v2-gap": {"rerank": AQE},
            "hsv_dba": {"rerank": {"kind": "dba+aqe", "n": 2, "alpha": 1.0}, "index": "ivf",
                        "faiss": {"nlist": 2, "nprobe": 1}}}


def with_settings(params: dict, root, k: int = 5) -> dict:
    """``params`` plus per-method search settings and a third method sharing hsv_hist's features."""
    params = json.loads(json.dumps(params))
    params["retrieval"].update(k=k, per_method=SETTINGS)
    params["methods"]["hsv_dba"] = params["methods"]["hsv_hist"]
    features = root / "data/features/toy"
    shutil.copy(features / "hsv_hist.npy", features / "hsv_dba.npy")
    shutil.copy(features / "hsv_hist.json", features / "hsv_dba.json")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, random_mobilenet_file):
    """The toy pipeline with every search setting retrieved, built once per protocol on first use."""
    built: dict = {}

    def get(protocol: str):
        if protocol not in built:
            root = tmp_path_factory.mktemp(f"settings_{protocol}")
            params = with_settings(build_pipeline_state(root, random_mobilenet_file, protocol=protocol), root)
            for method in SETTINGS:
                run_retrieve(params, method, root)
            built[protocol] = (root, params, protocol)
        return built[protocol]
    return get


@pytest.fixture(scope="module", params=["holdout", "leave_one_out"])
def built(request, pipelines):
    return pipelines(request.param)


@pytest.fixture(scope="module")
def holdout(pipelines):
    """The holdout pipeline only: the command line's behaviour does not depend on the protocol."""
    return pipelines("holdout")


@pytest.mark.parametrize("method", list(SETTINGS))
def test_query_tool_top_k_equals_the_pipeline_csv(built, method):
    root, params, protocol = built
    csv = pd.read_csv(root / f"data/retrieval/toy/{method}.csv")
    engine = QueryEngine.from_params(params, method, root)
    assert engine.db.search == {"rerank": SETTINGS[method].get("rerank"),
                                "index": {"hnsw": "faiss-hnsw", "ivf": "faiss-ivf"}.get(
                                    SETTINGS[method].get("index"), "exact"),
                                "faiss": SETTINGS[method].get("faiss", {})}
    assert (engine.db.index is None) == ("index" not in SETTINGS[method])  # FAISS: the saved index, loaded
    exact = 0
    for query_id, expected in csv.groupby("query_id", sort=False):
        answer = engine.query_id(query_id, exclude_self=protocol == "leave_one_out")
        ids, scores = [r["image_id"] for r in answer["results"]], [r["score"] for r in answer["results"]]
        same_ranking(ids, scores, expected["image_id"].tolist(), expected["score"].tolist())
        exact += ids == expected["image_id"].tolist()
    assert exact >= len(csv["query_id"].unique()) - 2


def same_ranking(ids, scores, expected_ids, expected_scores, tol=1e-6):
    """Equal rankings, except that two results whose cosines agree to ``tol`` (float rounding of one query
    against a block of queries) may swap."""
    assert len(ids) == len(expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=tol)
    for i, (got, want) in enumerate(zip(ids, expected_ids)):
        if got != want:
            j = expected_ids.index(got) if got in expected_ids else None
            assert j is not None and abs(expected_scores[j] - scores[i]) < tol, (i, ids, expected_ids)


def test_rerank_changes_the_ranking_the_tool_shows(built):
    root, params, _ = built
    plain = json.loads(json.dumps(params))
    plain["retrieval"]["per_method"] = {}
    q = "red/0"
    aqe = QueryEngine.from_params(params, "mobilenet_v2-gap", root).query_id(q, k=12)
    exact = QueryEngine.from_params(plain, "mobilenet_v2-gap", root).query_id(q, k=12)
    assert [r["score"] for r in aqe["results"]] != [r["score"] for r in exact["results"]]


def test_stale_or_missing_index_is_refused(built, tmp_path):
    root, params, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    features = copy / "data/features/toy/hsv_hist.npy"
    np.save(features, np.load(features)[:, ::-1].copy())
    with pytest.raises(CbirError, match=r"hsv_hist\.npy does not match hsv_hist\.json \(rows permuted or edited\): "
                                        r"run `dvc repro extract@\w+`"):
        QueryEngine.from_params(params, "hsv_hist", copy)
    rehash(features, read_manifest(copy / "data/curated/toy/manifest.csv"))  # as a fresh extract would
    with pytest.raises(CbirError, match=r"saved index .* was built from other features .* \(stale\): rebuild it "
                                        r"with `dvc repro evaluate@\w+`"):
        QueryEngine.from_params(params, "hsv_hist", copy)
    changed = json.loads(json.dumps(params))
    changed["retrieval"]["per_method"]["hsv_dba"]["faiss"]["nprobe"] = 2
    with pytest.raises(CbirError, match=r"built with search settings .* params.yaml says"):
        QueryEngine.from_params(changed, "hsv_dba", copy)
    shutil.rmtree(copy / "data/index/toy/hsv_dba")
    with pytest.raises(CbirError, match=r"no saved index for 'hsv_dba' .*dvc repro evaluate@\w+"):
        QueryEngine.from_params(params, "hsv_dba", copy)


def test_index_folder_holds_the_id_map(built):
    root, params, protocol = built
    folder = root / "data/index/toy/hsv_hist"
    assert sorted(p.name for p in folder.iterdir()) == ["ids.txt", "index.faiss", "index.json"]
    manifest = pd.read_csv(root / "data/curated/toy/manifest.csv")
    database = manifest if protocol == "leave_one_out" else manifest[manifest.split == "database"]
    assert (folder / "ids.txt").read_text().split() == database["image_id"].tolist()
    assert sorted(p.name for p in (root / "data/index/toy/mobilenet_v2-gap").iterdir()) == ["ids.txt", "index.json"]


def test_search_settings_never_reach_extract(repo_root):
    """The αQE variant's re-ranking composes into retrieval.per_method, not into methods.<name> (extract's
    params); changing it changes retrieval only."""
    over = ["+method@methods.mobilenet_v2-gap-aqe=mobilenet_v2-gap-aqe"]
    base = yaml.safe_load(compose_yaml(repo_root / "conf", over))
    alpha = yaml.safe_load(compose_yaml(repo_root / "conf", over + [
        "retrieval.per_method.mobilenet_v2-gap-aqe.rerank.alpha=1.0"]))
    assert base["retrieval"]["per_method"]["mobilenet_v2-gap-aqe"] == {
        "rerank": {"kind": "aqe", "n": 3, "alpha": 3.0}}
    assert base["methods"]["mobilenet_v2-gap-aqe"] == {**base["methods"]["mobilenet_v2-gap"]}
    assert base["methods"] == alpha["methods"] and base["retrieval"] != alpha["retrieval"]
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    # search settings are parameters of evaluate alone; extract never reads them (per method, evaluate keys its
    # results by that method's own search settings: tests/test_incremental.py)
    assert not [p for p in stages["extract"]["do"]["params"] if p.startswith("retrieval")]
    assert "retrieval" in stages["evaluate"]["do"]["params"]


# --------------------------------------------------------------------------- batch queries

def test_batch_query_folder_glob_and_files_to_csv_and_json(holdout, monkeypatch, capsys, tmp_path):
    root, _, _ = holdout
    raw = root / "data/raw/toy"
    out = tmp_path / "results.csv"
    monkeypatch.setenv("TQDM_DISABLE", "0")  # restored after the test
    code = run_cli(["--root", str(root), "query", str(raw / "red"), str(raw / "blue" / "*.png"),
                    str(raw / "green/1.png"), "--method", "hsv_hist", "--k", "3", "--out", str(out), "-q"],
                   monkeypatch)
    captured = capsys.readouterr()
    assert code == 0 and "13 queries x top-3 (hsv_hist) written to" in captured.out
    assert "query hsv_hist" not in captured.err  # -q: no progress bar, ours or any other tqdm bar
    assert os.environ["TQDM_DISABLE"] == "1"
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["query", "query_image_id", "rank", "image_id", "label", "score", "relevant",
                                   "path"]
    assert len(frame) == 13 * 3 and all(r == [1, 2, 3] for r in frame.groupby("query")["rank"].apply(list))
    assert frame["query"].iloc[0].endswith("red/0.png")
    engine = QueryEngine.from_params(yaml.safe_load((root / "params.yaml").read_text()), "hsv_hist", root)
    one = engine.query_id("blue/3", k=3)["results"]
    rows = frame[frame["query_image_id"] == "blue/3"]
    assert rows["image_id"].tolist() == [r["image_id"] for r in one]
    # the same batch as JSON, with --exclude-self: a database image no longer finds itself
    out_json = tmp_path / "results.json"
    assert run_cli(["--root", str(root), "-q", "query", str(raw / "blue"), "--method", "hsv_hist", "--k", "3",
                    "--exclude-self", "--out", str(out_json)], monkeypatch) == 0
    answers = json.loads(out_json.read_text())
    assert len(answers) == 6
    for answer in answers:
        assert answer["query"]["image_id"] not in [r["image_id"] for r in answer["results"]]
    assert frame[frame["query_image_id"] == "blue/3"]["image_id"].iloc[0] == "blue/3"  # without: rank 1


def test_exclude_self_matches_pixels_not_just_files(holdout, tmp_path):
    root, params, _ = holdout
    from PIL import Image

    copy = tmp_path / "copy.bmp"  # same pixels, other file (other sha256)
    Image.open(root / "data/raw/toy/green/3.png").save(copy)
    engine = QueryEngine.from_params(params, "hsv_hist", root)
    kept, _ = engine.query_path(copy, k=3)
    dropped, _ = engine.query_path(copy, k=3, exclude_self=True)
    assert kept["results"][0]["image_id"] == "green/3" and kept["results"][0]["score"] == pytest.approx(1.0)
    assert "green/3" not in [r["image_id"] for r in dropped["results"]]
    assert [r["image_id"] for r in dropped["results"]] == [r["image_id"] for r in
                                                             engine.query_id("green/3", k=4)["results"][1:]]


@pytest.mark.parametrize("args, message", [
    (["nothing/*.png"], "pattern 'nothing/*.png' matches no file"),
    (["{raw}/red/0.png", "--out", "x.txt"], r"--out x.txt: give a .csv or .json file"),
    (["{raw}/red", "{raw}/blue", "--figure", "f.png"], "--figure draws one query: give a single image"),
])
def test_batch_query_bad_input_is_one_line(holdout, monkeypatch, capsys, args, message):
    root, _, _ = holdout
    args = [a.format(raw=root / "data/raw/toy") for a in args]
    assert run_cli(["--root", str(root), "-q", "query", *args, "--method", "hsv_hist"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message.split(":")[0] in err
