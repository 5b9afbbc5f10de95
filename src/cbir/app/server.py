"""``cbir serve``: a local web page to query the database by upload (or drop) or by image id.

:func:`create_app` loads every method's model and features once, at start-up; each request
then only decodes, embeds and searches (:mod:`cbir.app.engine` holds that logic). Uploads are
size-limited (``MAX_CONTENT_LENGTH``) and decoded with the project's safe decoder; a bad
upload is a readable message on the page. Thumbnails are served by image id only, from
the manifest, never by a path taken from the request.
"""

from __future__ import annotations

import base64
import functools
import io
import ipaddress
import logging
import socket
from pathlib import Path

from flask import Flask, Response, abort, jsonify, render_template, request, url_for
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import make_server as werkzeug_server

from cbir.app.engine import QueryEngine, load_database
from cbir.data.images import open_rgb
from cbir.errors import CbirError
from cbir.layout import Layout

log = logging.getLogger("cbir")

WEB_DIR = Path(__file__).resolve().parent / "web"
DEFAULT_MAX_UPLOAD_MB = 16
DEFAULT_THUMB_SIZE = 160
THUMB_CACHE_SIZE = 2048


def serve_settings(params: dict) -> dict:
    """``max_upload_bytes`` and ``thumb_size`` from the optional ``serve:`` section of params."""
    cfg = params.get("serve") or {}
    return {"max_upload_bytes": int(float(cfg.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB)) * 1024 * 1024),
            "thumb_size": int(cfg.get("thumb_size", DEFAULT_THUMB_SIZE))}


def load_engines(params: dict, root: Path, methods: list[str] | None = None) -> dict[str, QueryEngine]:
    """One :class:`QueryEngine` per method, loaded once.

    ``methods=None``: every method in params whose features file exists (at least one must).
    A method named explicitly must have its features built.
    """

    root = Path(root)
    names = list(methods) if methods else [m for m in (params.get("methods") or {})
                                           if Layout(root, params).features(m).exists()]
    if not names:
        listed = ", ".join(params.get("methods") or {}) or "none"
        raise CbirError(f"no method has its features built (methods in params.yaml: {listed}): "
                        "run `dvc repro` first")
    engines = {}
    for name in names:
        engines[name] = QueryEngine.from_params(params, name, root, db=load_database(params, name, root))
        log.info("serve: loaded %s (%d database images, dim %d)", name, len(engines[name].db.rows),
                 engines[name].db.dim)
    return engines


def image_data_uri(image: Image.Image, size: int) -> str:
    """A small JPEG of ``image`` as a ``data:`` URI (the uploaded query, shown without storing it)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_thumbnail(image, size)).decode("ascii")


def jpeg_thumbnail(image: Image.Image, size: int) -> bytes:
    """``image`` shrunk to fit ``size x size`` (aspect kept), as JPEG bytes."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def create_app(params: dict, root: Path, methods: list[str] | None = None,
               engines: dict[str, QueryEngine] | None = None) -> Flask:
    """The Flask app; models and features load here, once (or pass ready ``engines``)."""

    root = Path(root)
    engines = engines if engines is not None else load_engines(params, root, methods)
    settings = serve_settings(params)
    thumb_size = settings["thumb_size"]
    first = next(iter(engines.values()))
    manifest = first.db.manifest
    paths = dict(zip(manifest["image_id"].astype(str), manifest["path"].astype(str)))
    max_pixels = first.max_pixels

    app = Flask(__name__, template_folder=str(WEB_DIR / "templates"), static_folder=str(WEB_DIR / "static"))
    app.config["MAX_CONTENT_LENGTH"] = settings["max_upload_bytes"]
    app.extensions["cbir"] = {"engines": engines, "root": root}

    @functools.lru_cache(maxsize=THUMB_CACHE_SIZE)
    def thumbnail_bytes(image_id: str) -> bytes:
        return jpeg_thumbnail(open_rgb(root / paths[image_id], max_pixels=max_pixels), thumb_size)

    def pick_engine(name: str | None) -> QueryEngine:
        name = name or next(iter(engines))
        if name not in engines:
            raise CbirError(f"unknown method {name!r}: pick one of {', '.join(engines)}")
        return engines[name]

    def run_search() -> tuple[dict, str]:
        """Answer the request: an uploaded ``image`` (POST) or an image ``id``; returns (answer, query src)."""
        engine = pick_engine(request.values.get("method"))
        if request.method == "POST":
            upload = request.files.get("image")
            if upload is None or not upload.filename:
                raise CbirError("no image was chosen: pick or drop an image file, then search")
            name = Path(upload.filename).name
            answer, image = engine.query_bytes(upload.read(), name=name)
            return answer, image_data_uri(image, 2 * thumb_size)
        image_id = request.args.get("id")
        if not image_id:
            raise CbirError("no query: upload an image or give an image id")
        answer = engine.query_id(image_id)
        return answer, url_for("thumb", image_id=image_id)

    def page(status: int = 200, **context):
        if "method" not in context:  # request.values would re-raise for a too-large upload
            context["method"] = request.values.get("method") or next(iter(engines))
        return render_template("index.html", methods=list(engines), max_upload_mb=app.config[
            "MAX_CONTENT_LENGTH"] / 2 ** 20, **context), status

    @app.get("/")
    def index():
        return page()

    @app.route("/search", methods=["GET", "POST"])
    def search():
        try:
            answer, query_src = run_search()
        except CbirError as exc:
            return page(400, error=str(exc))
        return page(answer=answer, query_src=query_src, method=answer["method"])

    @app.route("/api/search", methods=["GET", "POST"])
    def api_search():
        try:
            answer, _ = run_search()
        except CbirError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(answer)

    @app.get("/thumb/<path:image_id>")
    def thumb(image_id: str):
        if image_id not in paths:
            abort(404)
        try:
            data = thumbnail_bytes(image_id)
        except CbirError:
            abort(404)
        response = Response(data, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        message = (f"the upload is larger than the {app.config['MAX_CONTENT_LENGTH'] / 2 ** 20:.3g} MB limit: "
                   "choose a smaller image")
        if request.path.startswith("/api/"):
            return jsonify(error=message), 413
        return page(413, error=message, method=next(iter(engines)))

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8000):
    """A threaded WSGI server for ``app`` (``port=0`` picks a free port: read ``server.server_port``)."""

    def refuse(reason) -> CbirError:
        return CbirError(f"cannot listen on {host}:{port} ({reason}): pick another port with --port, "
                         "or another --host")

    if port:  # werkzeug exits the process on a busy port: find out first
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            raise refuse(exc.strerror or exc) from None
    try:
        return werkzeug_server(host, port, app, threaded=True)
    except (OSError, SystemExit) as exc:
        raise refuse(getattr(exc, "strerror", None) or "address in use") from None


def run_server(params: dict, root: Path, host: str = "127.0.0.1", port: int = 8000,
               methods: list[str] | None = None) -> None:
    """``cbir serve``: load everything once, then serve until interrupted."""
    if not is_loopback(host):
        log.warning("serve: listening on %s, which is reachable from other machines", host)
    app = create_app(params, root, methods)
    server = make_server(app, host, port)
    print(f"serving on http://{host}:{server.server_port}/ (methods: "
          f"{', '.join(app.extensions['cbir']['engines'])}); press Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
