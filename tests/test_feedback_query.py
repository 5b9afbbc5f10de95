"""Relevance feedback in the query tool: ``cbir query --relevant/--irrelevant/--feedback/--box``, one clear
line per bad input, and the same re-ranked lists as the ``feedback`` stage's simulated user for the same marks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cbir.app.engine import QueryEngine
from cbir.app.feedback import crop_box, parse_box, query_id_feedback
from cbir.errors import CbirError
from cbir.layout import Layout
from cbir.search.feedback import FeedbackSettings
from cbir.scoring import feedback_files as feedback_stage
from test_query import build_pipeline_state, cli_query

FEEDBACK = {"rounds": 2, "top_k": 3, "methods": ["rocchio", "svm"], "alpha": 1.0, "beta": 0.75, "gamma": 0.15,
            "svm_c": 1.0, "seed": 0, "max_queries": 1000}


@pytest.fixture(scope="module")
def state(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("feedback_root")
    params = build_pipeline_state(root, random_mobilenet_file)
    params["methods"] = {m: params["methods"][m] for m in ("hsv_hist", "mobilenet_v2-gap")}
    params["feedback"] = FEEDBACK
    params["evaluation"] = {"n_bootstrap": 50, "n_permutations": 100, "seed": 0}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    feedback_stage.run(params, root)
    return {"root": root, "params": params}


def rounds_of(trace: pd.DataFrame, method: str, fb: str, query_id: str) -> list[pd.DataFrame]:
    mine = trace[(trace["method"] == method) & (trace["feedback"] == fb) & (trace["query_id"] == query_id)]
    return [mine[mine["round"] == r] for r in sorted(set(mine["round"]))]


def test_stage_writes_its_outputs(state):
    paths = Layout(state["root"], state["params"])
    assert sorted(p.name for p in paths.feedback_dir.iterdir()) == sorted(
        ["metrics.json", "rounds.csv", "tests.csv", "table.md", "table.tex", "p10_rounds.png", "p10_rounds.pdf"])
    metrics = json.loads(paths.feedback_file("metrics.json").read_text())
    assert set(metrics["methods"]) == {"hsv_hist", "mobilenet_v2-gap"}
    entry = metrics["methods"]["hsv_hist"]["rocchio"]
    assert [r["round"] for r in entry["rounds"]] == [0, 1, 2] and [r["n_shown"] for r in entry["rounds"]] == [0, 3, 6]
    # the test pairs the queries that still have a relevant image left in the residual collection
    assert entry["test"]["round"] == 2
    assert entry["test"]["n"] == 3 - entry["rounds"][-1]["n_queries_without_relevant"]
    trace = pd.read_csv(paths.feedback_rankings, dtype={"image_id": str, "query_id": str})
    assert len(trace) == 2 * 2 * 3 * 3 * 3  # methods x feedback methods x queries x rounds 0..2 x top 3
    before = {p.name: p.read_bytes() for p in paths.feedback_dir.iterdir() if p.suffix != ".pdf"}
    rankings = paths.feedback_rankings.read_bytes()
    feedback_stage.run(state["params"], state["root"])  # deterministic: byte-identical outputs
    assert before == {p.name: p.read_bytes() for p in paths.feedback_dir.iterdir() if p.suffix != ".pdf"}
    assert rankings == paths.feedback_rankings.read_bytes()


@pytest.mark.parametrize("fb", ["rocchio", "svm"])
def test_query_tool_gives_the_pipeline_lists_for_the_same_marks(state, fb, monkeypatch, capsys, tmp_path):
    """Round r of the stage's trace is what ``cbir query`` returns given the marks of rounds 0..r-1 (one
    --relevant/--irrelevant pair per round), by image file (hsv_hist: the same descriptor) and by id."""
    root, params = state["root"], state["params"]
    trace = pd.read_csv(Layout(root, params).feedback_rankings, dtype={"image_id": str, "query_id": str})
    engine = QueryEngine.from_params(params, "hsv_hist", root)
    settings = FeedbackSettings.from_config(FEEDBACK, fb)
    checked = 0
    for query_id in ("red/0", "green/0", "blue/0"):
        rounds = rounds_of(trace, "hsv_hist", fb, query_id)
        relevant, irrelevant, args = [], [], []
        for r, shown in enumerate(rounds):
            if r:
                answer = query_id_feedback(engine, query_id, relevant, irrelevant, settings, k=3, rounds=r)
                assert [x["image_id"] for x in answer["results"]] == shown["image_id"].tolist()
                np.testing.assert_allclose([x["score"] for x in answer["results"]], shown["score"], atol=1e-6)
                out = tmp_path / f"{query_id.replace('/', '_')}_{r}.json"
                rc = cli_query(state, monkeypatch, root / f"data/raw/toy/{query_id}.png", "--method", "hsv_hist",
                               "--k", "3", "--feedback", fb, *args, "--out", out)
                assert rc == 0, capsys.readouterr().err
                saved = json.loads(out.read_text())[0]
                assert [x["image_id"] for x in saved["results"]] == shown["image_id"].tolist()
                np.testing.assert_allclose([x["score"] for x in saved["results"]], shown["score"], atol=1e-5)
                assert saved["feedback"]["round"] == r
                checked += 1
            good, bad = shown[shown["relevant"]]["image_id"].tolist(), shown[~shown["relevant"]]["image_id"].tolist()
            relevant += good
            irrelevant += bad
            args += ["--relevant", ",".join(good), "--irrelevant", ",".join(bad)]
    assert checked == 6


def test_marks_accumulate_and_marked_images_are_not_returned(state, monkeypatch, capsys):
    root = state["root"]
    image = root / "data/raw/toy/red/0.png"
    assert cli_query(state, monkeypatch, image, "--method", "hsv_hist", "--k", "15", "--json") == 0
    first = [r["image_id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert cli_query(state, monkeypatch, image, "--method", "hsv_hist", "--k", "15", "--json",
                     "--relevant", first[0], "--irrelevant", first[1], "--relevant", first[2]) == 0
    answer = json.loads(capsys.readouterr().out)
    ids = [r["image_id"] for r in answer["results"]]
    assert len(ids) == 12 and not set(ids) & set(first[:3])
    assert answer["feedback"] == {"method": "rocchio", "requested": "rocchio", "round": 2,
                                  "relevant": [first[0], first[2]], "irrelevant": [first[1]], "note": ""}
    # svm with only relevant marks falls back to Rocchio, and says so
    assert cli_query(state, monkeypatch, image, "--method", "hsv_hist", "--feedback", "svm", "--relevant",
                     first[0]) == 0
    text = capsys.readouterr().out
    assert "feedback round 1: rocchio" in text and "svm needs relevant and irrelevant marks" in text


@pytest.mark.parametrize("extra, expected", [
    (["--relevant", "nope"], "--relevant nope: no image with that id"),
    (["--irrelevant", "red/0"], "--irrelevant red/0: that image is a query image"),
    (["--relevant", "red/1", "--irrelevant", "red/1"], "marked both relevant and irrelevant"),
    (["--box", "1,2"], "--box '1,2': give four integers"),
    (["--box", "5,5,5,9"], "needs 0 <= x0 < x1"),
    (["--box", "0,0,49,10"], "does not fit in the 48x48 image"),
])
def test_bad_marks_and_boxes_are_one_line(state, monkeypatch, capsys, extra, expected):
    rc = cli_query(state, monkeypatch, state["root"] / "data/raw/toy/red/0.png", "--method", "hsv_hist", *extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_several_images_with_marks_are_refused(state, monkeypatch, capsys):
    rc = cli_query(state, monkeypatch, state["root"] / "data/raw/toy/red", "--relevant", "red/1")
    assert rc == 2 and "refine one query" in capsys.readouterr().err


def test_box_crops_the_region(state, monkeypatch, capsys, tmp_path):
    """A box query ranks the cropped region: the same as querying a file holding that crop."""
    root = state["root"]
    image = Image.open(root / "data/raw/toy/blue/0.png").convert("RGB")
    crop = tmp_path / "crop.png"
    image.crop((8, 4, 40, 30)).save(crop)
    assert cli_query(state, monkeypatch, root / "data/raw/toy/blue/0.png", "--method", "hsv_hist", "--json",
                     "--box", "8,4,40,30") == 0
    boxed = json.loads(capsys.readouterr().out)
    assert cli_query(state, monkeypatch, crop, "--method", "hsv_hist", "--json") == 0
    direct = json.loads(capsys.readouterr().out)
    assert [r["image_id"] for r in boxed["results"]] == [r["image_id"] for r in direct["results"]]
    assert boxed["query"]["box"] == [8, 4, 40, 30] and boxed["query"]["image_id"] == "blue/0"


def test_box_parsing_and_scaling_by_hand():
    assert parse_box(" 1, 2,30,40") == (1, 2, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "-1,0,4,4", "4,0,4,4", "1.5,0,4,4"):
        with pytest.raises(CbirError, match="--box"):
            parse_box(bad)
    # a 100x50 image decoded at half size (50x25): the box is scaled by 1/2
    small = Image.new("RGB", (50, 25))
    assert crop_box(small, (10, 10, 60, 30), full_size=(100, 50)).size == (25, 10)
    assert crop_box(Image.new("RGB", (100, 50)), (0, 0, 100, 50)).size == (100, 50)
    with pytest.raises(CbirError, match="does not fit"):
        crop_box(small, (0, 0, 101, 10), full_size=(100, 50))


def test_judgements_with_one_relevant_image_say_feedback_cannot_be_simulated(state, tmp_path):
    """A benchmark whose every query has one reference (copy detection): the results and the table say why
    there are no feedback numbers, instead of 0.0 and None."""
    import shutil

    from cbir.data.benchmarks import JUDGEMENTS_FILE
    from cbir.data.manifest import read_manifest
    from cbir.scoring.feedback_eval import NO_SECOND_RELEVANT

    root = tmp_path / "root"
    shutil.copytree(state["root"], root, symlinks=True)
    params = state["params"]
    paths = Layout(root, params)
    manifest = read_manifest(paths.manifest)
    database = manifest[manifest["split"] == "database"]
    queries = [{"query_id": row.image_id, "positives": database[database["label"] == row.label]["image_id"].tolist()[:1]}
               for row in manifest[manifest["split"] == "query"].itertuples()]
    (paths.curated_dir / JUDGEMENTS_FILE).write_text(json.dumps({"kind": "pairs", "queries": queries}))
    feedback_stage.run(params, root)
    metrics = json.loads(paths.feedback_file("metrics.json").read_text())
    assert metrics["unavailable"] == NO_SECOND_RELEVANT
    assert metrics["methods"]["hsv_hist"] == {"rocchio": {"unavailable": NO_SECOND_RELEVANT},
                                              "svm": {"unavailable": NO_SECOND_RELEVANT}}
    table = paths.feedback_file("table.md").read_text()
    assert table == f"Relevance feedback was not simulated on {paths.dataset}: {NO_SECOND_RELEVANT}.\n"
    assert "0.0" not in table and "None" not in table
    assert pd.read_csv(paths.feedback_rankings).empty
