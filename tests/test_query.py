"""``cbir query``: ranking any image against the database, its outputs, and one clear line per bad input.

The pipeline state (manifest, weights, features) is built in a temporary root by the real
stage code; :func:`build_pipeline_state` is shared with the serve, browser and load tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cbir.app.engine import (
    QueryEngine,
    decode_image_bytes,
    load_database,
    result_records,
    search,
)
from cbir.app.output import format_table
from cbir.cli import add_query_parsers
from cbir.data.images import MAX_PIXELS, ImageError
from cbir.data.manifest import database_rows
from cbir.errors import CbirError
from cbir.features.handcrafted import describe
from cbir.fileio import sha256_file
from cbir.stages.extract import run as run_extract
from cbir.stages.weights import run as run_weights
from methods_helpers import from_conf, with_defaults
from cbir.features.handcrafted import descriptor_node

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 40, 200)}
PER_CLASS = 6
BUILT = ("hsv_hist", "mobilenet_v2-gap")


def colour_png(path: Path, rgb, seed: int, size: int = 48) -> Path:
    """A noisy, mostly single-colour PNG."""
    rng = np.random.default_rng(seed)
    base = np.array(rgb, dtype=np.int16)
    pixels = np.clip(base + rng.integers(-35, 35, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def serving_root(root: Path, weights_file: Path, **serve) -> Path:
    """:func:`build_pipeline_state` with curation's default 40 MP cap (so a query budget binds) and ``serve``
    as the web server's settings."""
    import yaml

    build_pipeline_state(root, weights_file)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["curate"]["max_pixels"] = MAX_PIXELS
    params["serve"] = {**params["serve"], **serve}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def build_pipeline_state(root: Path, weights_file: Path, protocol: str = "holdout") -> dict:
    """Three colour classes x 6 PNGs, their manifest, params.yaml, weights and two methods' features.

    Holdout: image 0 of each class is a query, the other 15 are the database.
    ``hsv_unbuilt`` is a method in params whose features are never extracted.
    """
    rows = []
    for c, (label, rgb) in enumerate(COLOURS.items()):
        for i in range(PER_CLASS):
            path = colour_png(root / "data" / "raw" / "toy" / label / f"{i}.png", rgb, seed=100 * c + i)
            rows.append({"image_id": f"{label}/{i}", "path": path.relative_to(root).as_posix(), "label": label,
                         "split": "query" if (i == 0 and protocol == "holdout") else "database",
                         "width": 48, "height": 48, "sha256": sha256_file(path), "protocol": protocol})
    manifest = pd.DataFrame(rows).sort_values("image_id").reset_index(drop=True)
    out = root / "data" / "curated" / "toy"
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    hsv = {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram", {"bins": [8, 4, 4]})}
    params = {
        "seed": 0, "device": "cpu",
        "dataset": {"name": "toy", "source": "folder"},
        "curate": {"min_side": 8, "max_pixels": 1_000_000},
        "serve": from_conf("serve/default"), "feedback": from_conf("feedback/default"),
        "split": {"protocol": protocol},
        "retrieval": {"k": 10, "block_size": 4, "index": "exact"},
        "extract": {**with_defaults({})["extract"], "compile": False},
        "backbones": {"mobilenet_v2": {"arch": "mobilenet_v2", "source": "file", "format": "torch",
                                       "file": str(weights_file),
                                       "allow_unverified": True,  # a random network: nothing to verify
                                       "image_size": 64, "batch_size": 8}},
        "methods": {"hsv_hist": hsv,
                    "mobilenet_v2-gap": {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"},
                    "hsv_unbuilt": {**hsv, "descriptor": descriptor_node("hsv_histogram", {"bins": [4, 4, 4]})}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_weights(params, "mobilenet_v2", root)
    for method in BUILT:
        run_extract(params, root, method=method)
    return params


@pytest.fixture(scope="module")
def state(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("query_root")
    params = build_pipeline_state(root, random_mobilenet_file)
    outside = colour_png(tmp_path_factory.mktemp("outside") / "reddish.png", (210, 60, 30), seed=999, size=56)
    return {"root": root, "params": params, "outside": outside}


def run_cli(argv: list[str], monkeypatch) -> int:
    """``cbir.cli.main`` with the query commands (added here when the CLI does not list them yet)."""
    from cbir import cli

    original = cli.build_parser

    def parser_with_query(*args):
        parser = original(*args)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "query" not in sub.choices:
            add_query_parsers(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", parser_with_query)
    return cli.main(argv)


def cli_query(state, monkeypatch, *args) -> int:
    return run_cli(["--root", str(state["root"]), "-q", "query", *map(str, args)], monkeypatch)


def brute_force(db_feats: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    """Independent ranking: every cosine, sorted by (-score, image_id)."""
    sims = (db_feats.astype(np.float64) @ q.astype(np.float64))
    order = sorted(range(len(ids)), key=lambda i: (-round(sims[i], 6), ids[i]))[:k]
    return [ids[i] for i in order], sims[order]


# --------------------------------------------------------------------------- command line


def test_table_for_an_image_outside_the_dataset(state, monkeypatch, capsys):
    assert cli_query(state, monkeypatch, state["outside"], "--method", "hsv_hist") == 0
    out = capsys.readouterr().out.splitlines()
    assert "not in the dataset" in out[0] and "hsv_hist" in out[0]
    assert out[1].split() == ["rank", "image_id", "label", "cosine", "path"]
    rows = [line.split() for line in out[3:]]
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    scores = [float(r[3]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # a reddish image: the five red database images come first
    assert [r[2] for r in rows[:5]] == ["red"] * 5
    # same ranking as an independent brute-force over the database features
    manifest = pd.read_csv(state["root"] / "data/curated/toy/manifest.csv", dtype=str)
    feats = np.load(state["root"] / "data/features/toy/hsv_hist.npy")
    db = (manifest["split"] == "database").to_numpy()
    q = describe("hsv_histogram", np.asarray(Image.open(state["outside"]).convert("RGB")), {"bins": [8, 4, 4]})
    q = q / np.linalg.norm(q)
    ids, sims = brute_force(feats[db], manifest["image_id"][db].tolist(), q, 10)
    assert [r[1] for r in rows] == ids
    np.testing.assert_allclose(scores, sims, atol=1e-4)
    assert rows[0][4] == manifest.set_index("image_id").at[ids[0], "path"]


@pytest.mark.parametrize("method", BUILT)
def test_own_image_ranks_first_with_score_one(state, monkeypatch, capsys, method):
    image_id = "green/3"
    path = state["root"] / "data/raw/toy/green/3.png"
    assert cli_query(state, monkeypatch, path, "--method", method, "--json", "--k", "5") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["method"] == method and answer["k"] == 5 and len(answer["results"]) == 5
    assert answer["query"] == {"image_id": image_id, "label": "green", "source": str(path)}
    top = answer["results"][0]
    assert top["image_id"] == image_id and top["rank"] == 1 and top["relevant"] is True
    assert top["score"] == pytest.approx(1.0, abs=1e-5)


def test_default_method_is_the_first_in_params(state, monkeypatch, capsys):
    assert cli_query(state, monkeypatch, state["outside"], "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["method"] == "hsv_hist" and answer["k"] == 10


def test_json_matches_table(state, monkeypatch, capsys):
    assert cli_query(state, monkeypatch, state["outside"], "--method", "mobilenet_v2-gap", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"]["image_id"] is None and answer["query"]["label"] is None
    assert [r["rank"] for r in answer["results"]] == list(range(1, 11))
    assert all(r["relevant"] is None for r in answer["results"])
    assert set(answer["timings_ms"]) == {"decode", "embed", "search"}
    assert cli_query(state, monkeypatch, state["outside"], "--method", "mobilenet_v2-gap") == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]
    assert [t[1] for t in table] == [r["image_id"] for r in answer["results"]]
    assert [float(t[3]) for t in table] == [round(r["score"], 4) for r in answer["results"]]


def test_figure_is_written(state, monkeypatch, capsys, tmp_path):
    target = tmp_path / "figs" / "trial.png"
    target.parent.mkdir()  # --figure creates no folder (tests/test_bounded_inputs.py)
    assert cli_query(state, monkeypatch, state["root"] / "data/raw/toy/blue/0.png", "--figure", target) == 0
    out = capsys.readouterr().out
    assert f"figure: {target}" in out
    with Image.open(target) as im:
        assert im.format == "PNG" and im.width > im.height > 50
    assert target.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in target.parent.iterdir()) == ["trial.pdf", "trial.png"]


def _bad_inputs(root: Path, tmp: Path) -> dict:
    text = tmp / "notes.png"
    text.write_text("this is not an image\n")
    png = (root / "data/raw/toy/red/1.png").read_bytes()
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(png[: len(png) // 2])
    huge = tmp / "huge.png"
    Image.new("RGB", (1100, 1000), (10, 20, 30)).save(huge)  # 1.1 MP > max_pixels 1 MP
    empty = tmp / "empty.jpg"
    empty.write_bytes(b"")
    return {"text": text, "corrupt": corrupt, "huge": huge, "empty": empty}


@pytest.mark.parametrize("case,extra,expected", [
    ("text", [], "notes.png: not_an_image"),
    ("corrupt", [], "corrupt.png: truncated"),
    ("huge", [], "huge.png: too_large (1100x1000 = 1100000 pixels > max_pixels 1000000)"),
    ("empty", [], "empty.jpg: empty"),
    ("missing", [], "missing.png not found: give the path of an image file"),
    ("emptydir", [], "holds no image files"),
    ("folder", [], "none of the 4 query images could be read: see the warnings above"),
    ("good", ["--method", "hsv_unbuilt"], "features for method 'hsv_unbuilt' not found at"),
    ("good", ["--method", "nope"], "method 'nope' is not in params.yaml"),
    ("good", ["--k", "0"], "--k must be from 1 to 100000, got 0"),
    ("good", ["--k", "1000000000"], "--k must be from 1 to 100000, got 1000000000"),
])
def test_bad_input_is_one_line_and_exit_2(state, monkeypatch, capsys, tmp_path, case, extra, expected):
    (tmp_path / "emptydir").mkdir()
    paths = {**_bad_inputs(state["root"], tmp_path), "missing": tmp_path / "missing.png", "folder": tmp_path,
             "good": state["outside"], "emptydir": tmp_path / "emptydir"}
    assert cli_query(state, monkeypatch, paths[case], *extra) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if " WARNING skipped " not in line]  # a batch names each skipped image
    assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], captured.err


def test_unbuilt_method_error_names_the_stage(state):
    with pytest.raises(CbirError, match=r"hsv_unbuilt\.npy: build them with `dvc repro extract@\w+`"):
        load_database(state["params"], "hsv_unbuilt", state["root"])


def test_stale_features_are_refused(state, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(state["root"], root)
    np.save(root / "data/features/toy/hsv_hist.npy", np.ones((3, 128), np.float32))
    with pytest.raises(CbirError, match=r"hsv_hist\.npy have 3 rows but the manifest has 18"):
        load_database(state["params"], "hsv_hist", root)


def test_parsers_defaults():
    parser = argparse.ArgumentParser()
    add_query_parsers(parser.add_subparsers(dest="command"))
    q = parser.parse_args(["query", "x.png"])
    assert (q.image, q.method, q.k, q.figure, q.json) == (["x.png"], None, None, None, False) and callable(q.func)
    assert (q.out, q.exclude_self, q.query_quiet) == (None, False, False)
    q = parser.parse_args(["query", "a/", "b/*.jpg", "c.png", "--out", "r.csv", "--exclude-self", "-q"])
    assert q.image == ["a/", "b/*.jpg", "c.png"] and str(q.out) == "r.csv" and q.exclude_self and q.query_quiet
    s = parser.parse_args(["serve"])
    assert (s.host, s.port, s.method) == ("127.0.0.1", 8000, None) and callable(s.func)
    s = parser.parse_args(["serve", "--port", "0", "--method", "a", "--method", "b"])
    assert s.port == 0 and s.method == ["a", "b"]


# --------------------------------------------------------------------------- pure functions


def test_database_rows_by_protocol():
    holdout = pd.DataFrame({"split": ["query", "database", "database", "query"], "protocol": ["holdout"] * 4})
    np.testing.assert_array_equal(database_rows(holdout), [1, 2])
    loo = pd.DataFrame({"split": ["database"] * 3, "protocol": ["leave_one_out"] * 3})
    np.testing.assert_array_equal(database_rows(loo), [0, 1, 2])
    with pytest.raises(CbirError, match="0 database rows"):
        database_rows(holdout.assign(split="query"))


def test_search_and_records_by_hand():
    manifest = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "path": ["p/a", "p/b", "p/c", "p/d"],
                             "label": ["x", "y", "x", "y"], "split": ["database", "query", "database", "database"],
                             "protocol": ["holdout"] * 4, "sha256": ["1", "2", "3", "4"]})
    feats = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.6, 0.8]], dtype=np.float32)
    from cbir.app.engine import Database

    rows = database_rows(manifest)
    db = Database("m", manifest, feats, rows, feats[rows])
    idx, scores = search(db, np.array([[0.0, 1.0]], np.float32), k=2, block_size=1024)
    # c and d tie at 0.8: the lower image id (c) first; b is a query row, never returned
    assert idx.tolist() == [[2, 3]]
    np.testing.assert_allclose(scores, [[0.8, 0.8]], atol=1e-6)
    records = result_records(db, idx[0], scores[0], query_label="x")
    assert [(r["rank"], r["image_id"], r["label"], r["path"], r["relevant"]) for r in records] == [
        (1, "c", "x", "p/c", True), (2, "d", "y", "p/d", False)]
    idx, _ = search(db, np.array([[1.0, 0.0]], np.float32), k=10, block_size=1024)
    assert idx.tolist() == [[0, 2, 3]]  # k larger than the database: all three database rows
    assert db.row_of_sha256("3") == 2 and db.row_of_sha256("zzz") is None
    with pytest.raises(CbirError, match="query has 3 dimensions but the m features have 2"):
        search(db, np.ones((1, 3), np.float32), k=2, block_size=1024)
    with pytest.raises(CbirError, match="image id 'zz' is not in the manifest"):
        db.row_of("zz")
    text = format_table({"method": "m", "k": 2, "query": {"image_id": None, "label": None, "source": "q.png"},
                         "results": records})
    assert text.splitlines()[3:] == ["   1  c         x      0.8000  p/c", "   2  d         y      0.8000  p/d"]


def test_query_by_id_matches_query_by_file(state):
    engine = QueryEngine.from_params(state["params"], "hsv_hist", state["root"])
    by_id = engine.query_id("blue/2")
    by_file, image = engine.query_path(state["root"] / "data/raw/toy/blue/2.png")
    assert image.mode == "RGB" and image.size == (48, 48)
    assert [r["image_id"] for r in by_id["results"]] == [r["image_id"] for r in by_file["results"]]
    np.testing.assert_allclose([r["score"] for r in by_id["results"]], [r["score"] for r in by_file["results"]],
                               atol=1e-6)
    assert by_id["query"] == {"image_id": "blue/2", "label": "blue", "source": "data/raw/toy/blue/2.png"}
    # a query-split image queried by id is not in the database, so it is not among its own results
    assert "blue/0" not in [r["image_id"] for r in engine.query_id("blue/0")["results"]]


def test_leave_one_out_searches_every_row(tmp_path, random_mobilenet_file):
    params = build_pipeline_state(tmp_path, random_mobilenet_file, protocol="leave_one_out")
    engine = QueryEngine.from_params(params, "hsv_hist", tmp_path)
    assert len(engine.db.rows) == 18
    answer = engine.query_id("red/0", k=18)
    assert len(answer["results"]) == 18 and answer["results"][0]["image_id"] == "red/0"
    assert [r["label"] for r in answer["results"][:6]] == ["red"] * 6


def test_decode_image_bytes_names_the_upload(state):
    data = (state["root"] / "data/raw/toy/red/2.png").read_bytes()
    assert decode_image_bytes(data, "x.png").size == (48, 48)
    with pytest.raises(ImageError) as info:
        decode_image_bytes(b"GIF89a broken", "holiday.gif")
    assert info.value.path == "holiday.gif" and str(info.value).startswith("cannot use image holiday.gif: ")
    with pytest.raises(ImageError, match="holiday.jpg: empty"):
        decode_image_bytes(b"", "holiday.jpg")
    big = Image.new("RGB", (1100, 1000))
    import io

    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    with pytest.raises(ImageError, match="too_large"):
        decode_image_bytes(buffer.getvalue(), "big.png", max_pixels=1_000_000)
