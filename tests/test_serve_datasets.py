"""query and serve name their dataset: ``--dataset`` (the only one by default, the list with several), the page
shows it, and a server refuses to answer from a database rebuilt on disk under it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from test_query import build_pipeline_state
from test_serve import parse

from cbir.app.server import create_app, load_engines
from cbir.cli import main
from cbir.config import select_dataset
from cbir.fileio import sha256_file


@pytest.fixture(scope="module")
def state(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("serve_datasets")
    params = build_pipeline_state(root, random_mobilenet_file)
    return {"root": root, "params": params}


def _client(params, root, methods=("hsv_hist",)):
    app = create_app(params, root, engines=load_engines(params, root, list(methods)))
    app.config["TESTING"] = True
    return app.test_client()


def test_page_shows_the_dataset(state):
    client = _client(state["params"], state["root"])
    html = client.get("/").get_data(as_text=True)
    assert "dataset: toy" in html


def test_a_rebuilt_database_is_refused_not_served_stale(state):
    root, params = state["root"], state["params"]
    client = _client(params, root)
    assert client.get("/api/search", query_string={"id": "red/0", "method": "hsv_hist"}).status_code == 200
    features = root / "data" / "features" / "toy" / "hsv_hist.npy"
    sidecar = features.with_suffix(".json")
    before, sidecar_before = features.read_bytes(), sidecar.read_bytes()
    try:
        rebuilt = np.load(features)[::-1].copy()  # same shape, other rows: what a rebuild under the server does
        np.save(features, rebuilt)
        info = json.loads(sidecar_before)
        info["features_sha256"] = sha256_file(features)  # extract records the new array's hash beside it
        sidecar.write_text(json.dumps(info))
        st = features.stat()
        os.utime(features, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
        response = client.get("/api/search", query_string={"id": "red/0", "method": "hsv_hist"})
        assert response.status_code == 400
        message = response.get_json()["error"]
        assert "was rebuilt on disk" in message and "hsv_hist.npy" in message and "restart `cbir serve`" in message
        assert "\n" not in message
        page = client.get("/search", query_string={"id": "red/0", "method": "hsv_hist"})
        assert page.status_code == 400 and "was rebuilt on disk" in parse(page).error
        # a fresh server loads the new database and answers
        assert _client(params, root).get("/api/search", query_string={"id": "red/0", "method": "hsv_hist"}
                                          ).status_code == 200
    finally:
        features.write_bytes(before)
        sidecar.write_bytes(sidecar_before)


def test_manifest_change_is_noticed_too(state):
    root, params = state["root"], state["params"]
    engines = load_engines(params, root, ["hsv_hist"])
    db = engines["hsv_hist"].db
    assert db.dataset == "toy" and db.changed_sources() == []
    manifest = root / "data" / "curated" / "toy" / "manifest.csv"
    text = manifest.read_text()
    try:
        manifest.write_text(text + "\n")
        assert db.changed_sources() == [str(manifest)]
    finally:
        manifest.write_text(text)


def test_query_takes_dataset(state, capsys):
    root, params = state["root"], state["params"]
    two = {k: v for k, v in params.items() if k != "dataset"}
    two["datasets"] = {"toy": {"source": "folder"}, "other": {"source": "folder"}}
    (root / "params.yaml").write_text(yaml.safe_dump(two, sort_keys=False))
    image = root / "data" / "raw" / "toy" / "red" / "1.png"
    try:
        assert main(["--root", str(root), "-q", "query", str(image), "--method", "hsv_hist"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == ("error: this experiment has 2 datasets (toy, other): choose one with --dataset NAME")
        assert main(["--root", str(root), "-q", "query", str(image), "--method", "hsv_hist",
                     "--dataset", "nope"]) == 2
        assert "dataset 'nope' is not in params.yaml (datasets: toy, other)" in capsys.readouterr().err
        assert main(["--root", str(root), "-q", "query", str(image), "--method", "hsv_hist", "--json",
                     "--dataset", "toy"]) == 0
        assert "red/" in capsys.readouterr().out
        assert select_dataset(two, "toy")["dataset"]["name"] == "toy"
    finally:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
