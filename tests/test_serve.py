"""The web page through Flask's test client: upload, result order, clicking a result, bad uploads, limits."""

from __future__ import annotations

import io
import socket
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from methods_helpers import from_conf
from test_query import build_pipeline_state, colour_png

from cbir.app.engine import QueryEngine
from cbir.app.server import create_app, is_loopback, load_engines, make_server
from cbir.errors import CbirError


class PageParser(HTMLParser):
    """The parts of the page a person reads: results (in order), the query figure, the error, the methods."""

    def __init__(self):
        super().__init__()
        self.results, self.query, self.error, self.options, self.links = [], None, None, [], []
        self._in_error = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "li" and "result" in classes:
            self.results.append(attrs)
        elif tag == "figure" and attrs.get("id") == "query":
            self.query = attrs
        elif tag == "img" and self.query is not None and "src" not in self.query:
            self.query["src"] = attrs["src"]
        elif tag == "img" and self.results and "src" not in self.results[-1]:
            self.results[-1]["src"] = attrs["src"]
        elif tag == "a" and self.results and "href" not in self.results[-1]:
            self.results[-1]["href"] = attrs["href"]
        elif tag == "option":
            self.options.append(attrs["value"])
        elif tag == "p" and attrs.get("id") == "error":
            self._in_error, self.error = True, ""

    def handle_data(self, data):
        if self._in_error:
            self.error += data

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_error = False


def parse(response) -> PageParser:
    parser = PageParser()
    parser.feed(response.get_data(as_text=True))
    return parser


@pytest.fixture(scope="module")
def state(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("serve_root")
    params = build_pipeline_state(root, random_mobilenet_file)
    engines = load_engines(params, root)
    outside = colour_png(tmp_path_factory.mktemp("outside") / "bluish.png", (30, 60, 220), seed=7, size=64)
    return {"root": root, "params": params, "engines": engines, "outside": outside}


@pytest.fixture
def client(state):
    app = create_app(state["params"], state["root"], engines=state["engines"])
    app.config["TESTING"] = True
    return app.test_client()


def upload(client, data: bytes, name: str = "q.png", method: str = "hsv_hist", url: str = "/search"):
    return client.post(url, data={"method": method, "image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_index_offers_the_built_methods(client):
    response = client.get("/")
    assert response.status_code == 200
    page = parse(response)
    assert page.options == ["hsv_hist", "mobilenet_v2-gap"]  # hsv_unbuilt has no features: not offered
    html = response.get_data(as_text=True)
    assert 'type="file" name="image"' in html and 'id="drop-zone"' in html and page.results == []


@pytest.mark.parametrize("method", ["hsv_hist", "mobilenet_v2-gap"])
def test_upload_shows_top10_in_the_engines_order(client, state, method):
    data = state["outside"].read_bytes()
    response = upload(client, data, "bluish.png", method)
    assert response.status_code == 200
    page = parse(response)
    expected, _ = state["engines"][method].query_bytes(data, "bluish.png")
    assert [r["data-image-id"] for r in page.results] == [e["image_id"] for e in expected["results"]]
    assert [int(r["data-rank"]) for r in page.results] == list(range(1, 11))
    assert [float(r["data-score"]) for r in page.results] == pytest.approx(
        [e["score"] for e in expected["results"]], abs=1e-6)
    assert [r["data-label"] for r in page.results[:5]] == ["blue"] * 5
    assert page.query["src"].startswith("data:image/jpeg;base64,")
    assert page.error is None
    assert page.results[0]["src"] == f"/thumb/{page.results[0]['data-image-id']}"


def test_clicking_a_result_queries_with_it(client, state):
    page = parse(upload(client, state["outside"].read_bytes()))
    href = page.results[3]["href"]
    clicked_id = page.results[3]["data-image-id"]
    url = urlsplit(href)
    assert url.path == "/search" and parse_qs(url.query) == {"id": [clicked_id], "method": ["hsv_hist"]}
    response = client.get(href)
    assert response.status_code == 200
    after = parse(response)
    assert after.query["data-image-id"] == clicked_id and after.query["src"] == f"/thumb/{clicked_id}"
    assert after.results[0]["data-image-id"] == clicked_id
    assert float(after.results[0]["data-score"]) == pytest.approx(1.0, abs=1e-5)
    expected = state["engines"]["hsv_hist"].query_id(clicked_id)
    assert [r["data-image-id"] for r in after.results] == [e["image_id"] for e in expected["results"]]
    assert all("relevant" in r["class"].split() or "irrelevant" in r["class"].split() for r in after.results)


def test_api_returns_the_same_answer(client, state):
    response = client.get("/api/search?id=green/4&method=mobilenet_v2-gap")
    assert response.status_code == 200 and response.is_json
    answer = response.get_json()
    expected = state["engines"]["mobilenet_v2-gap"].query_id("green/4")
    assert [r["image_id"] for r in answer["results"]] == [r["image_id"] for r in expected["results"]]
    assert [r["score"] for r in answer["results"]] == pytest.approx([r["score"] for r in expected["results"]])
    assert answer["query"] == {"image_id": "green/4", "label": "green", "source": "data/raw/toy/green/4.png"}
    answer = upload(client, state["outside"].read_bytes(), url="/api/search").get_json()
    assert len(answer["results"]) == 10 and answer["query"]["source"] == "q.png"


@pytest.mark.parametrize("data,name,message", [
    (b"%PDF-1.4 not a picture", "report.pdf", "cannot use image report.pdf: not_an_image"),
    (b"", "empty.png", "cannot use image empty.png: empty"),
    (None, "truncated.png", "cannot use image truncated.png: truncated"),
])
def test_bad_upload_shows_a_message_and_the_server_keeps_serving(client, state, data, name, message):
    if data is None:
        whole = (state["root"] / "data/raw/toy/red/1.png").read_bytes()
        data = whole[: len(whole) // 2]
    response = upload(client, data, name)
    assert response.status_code == 400
    page = parse(response)
    assert message in page.error and page.results == []
    assert "/tmp" not in page.error  # the temporary file's name is not shown
    assert upload(client, state["outside"].read_bytes()).status_code == 200


def test_no_file_unknown_method_unknown_id(client, state):
    response = client.post("/search", data={"method": "hsv_hist"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "no image was chosen" in parse(response).error
    response = upload(client, state["outside"].read_bytes(), method="sift")
    assert response.status_code == 400
    assert parse(response).error == "unknown method 'sift': pick one of hsv_hist, mobilenet_v2-gap"
    response = client.get("/search?id=purple/9")
    assert response.status_code == 400 and "image id 'purple/9' is not in the manifest" in parse(response).error
    response = client.get("/api/search?id=purple/9")
    assert response.status_code == 400 and "purple/9" in response.get_json()["error"]


def test_too_many_pixels_is_refused(client):
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1000), (1, 2, 3)).save(buffer, format="PNG")  # small file, 1.2 MP > 1 MP
    response = upload(client, buffer.getvalue(), "wide.png")
    assert response.status_code == 400
    assert "wide.png: too_large (1200x1000 = 1200000 pixels > max_pixels 1000000)" in parse(response).error


def test_upload_size_limit(state):
    params = {**state["params"], "serve": {**state["params"]["serve"], "max_upload_mb": 0.05}}  # 52,428 bytes
    app = create_app(params, state["root"], engines=state["engines"])
    assert app.config["MAX_CONTENT_LENGTH"] == 52428
    client = app.test_client()
    noise = Image.effect_noise((256, 256), 100).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 60_000
    response = upload(client, buffer.getvalue(), "noise.png")
    assert response.status_code == 413
    assert parse(response).error == "the upload is larger than the 0.05 MB limit: choose a smaller image"
    response = upload(client, buffer.getvalue(), "noise.png", url="/api/search")
    assert response.status_code == 413 and "0.05 MB limit" in response.get_json()["error"]
    assert upload(client, state["outside"].read_bytes()).status_code == 200


def test_thumbnails_by_image_id_only(client, state):
    response = client.get("/thumb/red/2")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(response.data)) as im:
        assert im.format == "JPEG" and im.size == (48, 48)  # already smaller than the 160 px thumbnail
    for bad in ("/thumb/purple/1", "/thumb/data/raw/toy/red/2.png", "/thumb/../params.yaml",
                "/thumb/%2E%2E/%2E%2E/etc/passwd", "/thumb/data/curated/toy/manifest.csv"):
        assert client.get(bad).status_code == 404, bad


def test_models_load_once_at_start_up(state, monkeypatch):
    calls = []
    original = QueryEngine.from_params.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args[1])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(QueryEngine, "from_params", classmethod(counting))
    client = create_app(state["params"], state["root"]).test_client()
    assert calls == ["hsv_hist", "mobilenet_v2-gap"]
    for method in ("hsv_hist", "mobilenet_v2-gap", "hsv_hist"):
        assert upload(client, state["outside"].read_bytes(), method=method).status_code == 200
    assert client.get("/search?id=red/3&method=mobilenet_v2-gap").status_code == 200
    assert calls == ["hsv_hist", "mobilenet_v2-gap"]


def test_explicit_methods_must_be_built(state, tmp_path):
    with pytest.raises(CbirError, match="features for method 'hsv_unbuilt' not found"):
        load_engines(state["params"], state["root"], ["hsv_unbuilt"])
    engines = load_engines(state["params"], state["root"], ["hsv_hist"])
    assert list(engines) == ["hsv_hist"]
    empty = {**state["params"], "dataset": {"name": "nothing"}}
    with pytest.raises(CbirError, match="no method has its features built"):
        load_engines(empty, tmp_path)


def test_loopback_and_busy_port(client, state):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    app = create_app(state["params"], state["root"], engines=state["engines"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CbirError, match=rf"cannot listen on 127.0.0.1:{port} .*pick another port with --port"):
            make_server(app, "127.0.0.1", port)


# ---------------------------------------------------------------- bounded work

def test_gate_bounds_concurrent_work_and_time():
    import threading

    from cbir.app.server import Busy, Gate

    release = threading.Event()
    gate = Gate(1, queue_timeout_s=0, request_timeout_s=0.2)
    with pytest.raises(Busy, match="took longer than the 0.2 s limit") as slow:
        gate.run(release.wait)
    assert slow.value.retry_after == 1
    with pytest.raises(Busy, match="the server is busy"):  # the overrunning job still holds the only slot
        gate.run(lambda: "never")
    release.set()
    gate.pool.submit(lambda: None).result()  # the first job has ended and released its slot
    assert Gate(1, 0, 5).run(lambda x: x + 1, 41) == 42
    assert gate.run(lambda: "ok") == "ok"


def test_busy_server_answers_503_with_retry_after(state):
    params = {**state["params"], "serve": {**state["params"]["serve"], "queue_timeout_s": 0, "max_concurrent": 1}}
    app = create_app(params, state["root"], engines=state["engines"])
    gate = app.extensions["cbir"]["gate"]
    assert gate.slots.acquire(timeout=1)
    try:
        client = app.test_client()
        api = client.get("/api/search?id=red/1")
        assert api.status_code == 503 and api.headers["Retry-After"] == "1" and "busy" in api.get_json()["error"]
        page = upload(client, state["outside"].read_bytes())
        assert page.status_code == 503 and page.headers["Retry-After"] == "1" and "busy" in parse(page).error
    finally:
        gate.slots.release()
    assert app.test_client().get("/api/search?id=red/1").status_code == 200


def test_query_budget_is_capped_by_curation_and_configurable(state):
    from cbir.app.server import serve_settings

    serve, curate = from_conf("serve/default"), from_conf("curate/default")
    assert serve_settings({"serve": serve, "curate": {**curate, "max_pixels": 1000}})["max_query_pixels"] == 1000
    settings = serve_settings({"serve": serve, "curate": curate})
    assert settings == {"max_upload_bytes": 16 * 2 ** 20, "thumb_size": 160, "max_query_pixels": 12_000_000,
                        "max_concurrent": 2, "queue_timeout_s": 10.0, "request_timeout_s": 30.0}
    settings = serve_settings({"serve": {**serve, "max_query_pixels": 500, "max_concurrent": 3, "request_timeout_s": 5},
                               "curate": curate})
    assert (settings["max_query_pixels"], settings["max_concurrent"], settings["request_timeout_s"]) == (500, 3, 5.0)
    for section, key in (("serve", "thumb_size"), ("curate", "max_pixels")):
        params = {"serve": dict(serve), "curate": dict(curate)}
        del params[section][key]
        with pytest.raises(CbirError) as info:
            serve_settings(params)
        assert str(info.value).startswith(f"params.yaml: {section}.{key} is missing: regenerate params.yaml")


@pytest.mark.parametrize("port", [99999, -1, 65536])
def test_port_outside_the_tcp_range_is_refused(client, port):
    with pytest.raises(CbirError, match=f"--port {port} is not a TCP port: give a number from 1 to 65535"):
        make_server(client.application, "127.0.0.1", port)


def test_refused_upload_says_what_to_do(client):
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1000), (1, 2, 3)).save(buffer, format="PNG")
    error = upload(client, buffer.getvalue(), "wide.png", url="/api/search").get_json()["error"]
    assert error.endswith("send an image of at most 1000000 pixels (serve.max_query_pixels)") and "\n" not in error
    error = upload(client, b"plain text", "notes.png", url="/api/search").get_json()["error"]
    assert "not_an_image" in error and error.endswith("send a JPEG, PNG, GIF, BMP, TIFF or WebP image")


def test_a_stalled_client_is_dropped_after_the_request_time_limit(state):
    import threading

    params = {**state["params"], "serve": {**state["params"]["serve"], "request_timeout_s": 0.5}}
    server = make_server(create_app(params, state["root"], engines=state["engines"]), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as conn:
            conn.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")  # then silence
            reply = b""
            while chunk := conn.recv(65536):  # the server hangs up (a 30 s socket timeout here would raise)
                reply += chunk
            # dropped as idle, or answered 408 at the request's deadline: either way, closed
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408 "), reply
    finally:
        server.shutdown()
        server.server_close()
