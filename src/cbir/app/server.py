"""``cbir serve``: a local web page to query the database by upload (or drop) or by image id.

:func:`create_app` loads every method's model and features once, at start-up; each request
then only decodes, embeds and searches (:mod:`cbir.app.engine` holds that logic). Uploads are
size-limited (``MAX_CONTENT_LENGTH``) and decoded with the project's safe decoder; a bad
upload is a readable message on the page. Thumbnails are served by image id only, from
the manifest, never by a path taken from the request (any id, even one holding a newline).

Work is bounded (``serve:`` in params): a query image's decoded pixels are capped from its header
before decoding (``max_query_pixels``, at most ``curate.max_pixels``; large JPEGs decoded at reduced
size; strips beyond 50:1, or whose resize would exceed the budget, refused: see :mod:`cbir.app.decode`);
at most ``max_concurrent`` queries compute at once, others wait up to ``queue_timeout_s`` and then get
``503`` with ``Retry-After``; a query that takes longer than ``request_timeout_s`` is answered ``503``
(its work still holds its slot until done, so the bound holds). A malformed form is one line saying why
(:mod:`cbir.app.forms`). Connections are bounded by the WSGI server (:mod:`cbir.app.wsgi`, waitress): a
fixed thread pool, a connection cap, a total deadline of ``request_timeout_s`` for a request to arrive,
and every error reply closes its connection.
"""

from __future__ import annotations

import base64
import functools
import io
import ipaddress
import logging
import math
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from flask import Flask, Response, abort, jsonify, render_template, request, url_for
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import PathConverter

from cbir.app.decode import MAX_ASPECT_RATIO, check_budget, decode_query
from cbir.app.engine import QueryEngine, load_database
from cbir.app.feedback import refine_request
from cbir.app.forms import (
    MAX_FORM_FIELD_BYTES,
    MAX_FORM_PARTS,
    MalformedForm,
    TooManyParts,
    UploadRequest,
    bounded,
)
from cbir.app.wsgi import BoundedServer
from cbir.data.images import ImageError
from cbir.errors import CbirError
from cbir.layout import Layout
from cbir.settings import mapping, need

log = logging.getLogger("cbir")

WEB_DIR = Path(__file__).resolve().parent / "web"
THUMB_CACHE_SIZE = 2048
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Busy(CbirError):
    """The server is at its bound: answered ``503`` with ``Retry-After: retry_after``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ImageIdConverter(PathConverter):
    """``<image_id:...>``: any id, slashes and newlines included (``path`` stops at a newline)."""

    regex = "[^/](?s:.)*?"


def serve_settings(params: dict) -> dict:
    """The web server's limits from the ``serve`` section of params (conf/serve/default.yaml sets every
    key; :mod:`cbir.schema` checks them).

    ``max_query_pixels`` is capped at ``curate.max_pixels``: a query never decodes more than curation would.
    """
    serve = mapping(params, "serve")

    def value(key: str):
        return need(serve, key, "serve")

    curate_limit = int(need(mapping(params, "curate"), "max_pixels", "curate"))
    return {"max_upload_bytes": int(float(value("max_upload_mb")) * 1024 * 1024),
            "thumb_size": int(value("thumb_size")),
            "max_query_pixels": min(int(value("max_query_pixels")), curate_limit),
            "max_concurrent": int(value("max_concurrent")), "queue_timeout_s": float(value("queue_timeout_s")),
            "request_timeout_s": float(value("request_timeout_s"))}


def upload_name(filename: str | None) -> str:
    """A printable name for an upload (its base name; control characters replaced; at most 100 characters)."""
    name = Path(str(filename or "").replace("\\", "/")).name
    name = _UNPRINTABLE.sub("?", name.encode("utf-8", "replace").decode("utf-8"))[:100]
    return name or "upload"


class Gate:
    """At most ``slots`` jobs at once; a job waits up to ``queue_timeout_s`` and is awaited ``request_timeout_s``.

    A job that overruns is answered :class:`Busy` but keeps its slot until it really ends.
    """

    def __init__(self, slots: int, queue_timeout_s: float, request_timeout_s: float):
        self.slots = threading.BoundedSemaphore(slots)
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="cbir-query")
        self.queue_timeout_s, self.request_timeout_s = queue_timeout_s, request_timeout_s
        self.retry_after = max(1, math.ceil(min(queue_timeout_s or 1.0, request_timeout_s)))

    def run(self, job, *args):
        start = time.monotonic()
        if not self.slots.acquire(timeout=self.queue_timeout_s):
            raise Busy(f"the server is busy (all query slots in use for {self.queue_timeout_s:g} s): "
                       f"try again in {self.retry_after} s", self.retry_after)
        try:
            future = self.pool.submit(job, *args)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _f: self.slots.release())
        left = max(0.0, self.request_timeout_s - (time.monotonic() - start))
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            raise Busy(f"the query took longer than the {self.request_timeout_s:g} s limit: try a smaller image "
                       f"or try again in {self.retry_after} s", self.retry_after) from None


def load_engines(params: dict, root: Path, methods: list[str] | None = None) -> dict[str, QueryEngine]:
    """One :class:`QueryEngine` per method, loaded once.

    ``methods=None``: every method in params whose features file exists (at least one must).
    A method that cannot be loaded (features damaged or stale, its model missing) is skipped with a warning
    naming it and why; the others are served. When none loads, that is one error.
    """

    root = Path(root)
    names = list(methods) if methods else [m for m in (params.get("methods") or {})
                                           if Layout(root, params).features(m).exists()]
    if not names:
        listed = ", ".join(params.get("methods") or {}) or "none"
        raise CbirError(f"no method has its features built (methods in params.yaml: {listed}): "
                        "run `dvc repro` first")
    engines, skipped = {}, {}
    for name in names:
        try:
            engines[name] = QueryEngine.from_params(params, name, root, db=load_database(params, name, root))
        except CbirError as exc:
            skipped[name] = str(exc)
            log.warning("serve: skipped method %s: %s", name, exc)
            continue
        log.info("serve: loaded %s (%d database images, dim %d)", name, len(engines[name].db.rows),
                 engines[name].db.dim)
    if not engines:
        first, why = next(iter(skipped.items()))
        more = f" (and {len(skipped) - 1} other method(s) skipped)" if len(skipped) > 1 else ""
        raise CbirError(f"no method can be served: {first}: {why}{more}")
    if skipped:
        log.warning("serve: serving %d method(s) (%s); skipped %s", len(engines), ", ".join(engines),
                    ", ".join(skipped))
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
    for engine in engines.values():  # the engines decode uploads within the query budget
        engine.max_pixels = min(int(engine.max_pixels), settings["max_query_pixels"])
    gate = Gate(settings["max_concurrent"], settings["queue_timeout_s"], settings["request_timeout_s"])

    app = Flask(__name__, template_folder=str(WEB_DIR / "templates"), static_folder=str(WEB_DIR / "static"))
    app.request_class = UploadRequest
    app.url_map.converters["image_id"] = ImageIdConverter
    app.config.update(MAX_CONTENT_LENGTH=settings["max_upload_bytes"], MAX_FORM_PARTS=MAX_FORM_PARTS,
                      MAX_FORM_MEMORY_SIZE=MAX_FORM_FIELD_BYTES)
    app.extensions["cbir"] = {"engines": engines, "root": root, "settings": settings, "gate": gate}

    @functools.lru_cache(maxsize=THUMB_CACHE_SIZE)
    def thumbnail_bytes(image_id: str) -> bytes:
        return jpeg_thumbnail(decode_query(root / paths[image_id], image_id, max(max_pixels, 1)), thumb_size)

    def pick_engine(name: str | None) -> QueryEngine:
        name = name or next(iter(engines))
        if name not in engines:
            raise CbirError(f"unknown method {name!r}: pick one of {', '.join(engines)}")
        engines[name].db.check_fresh()  # never answer from features or a manifest rebuilt under the server
        return engines[name]

    def run_search() -> tuple[dict, str]:
        """Answer the request: an uploaded ``image`` (POST) or an image ``id``; returns (answer, query src)."""
        try:
            return answer_request()
        except ImageError as exc:  # say what to do, in the server's terms
            advice = {"too_large": f"send an image of at most {settings['max_query_pixels']} pixels "
                                   "(serve.max_query_pixels)",
                      "bad_aspect": f"send an image whose long side is at most {MAX_ASPECT_RATIO} times its short "
                                    "side (crop the strip)"}.get(exc.reason, "send a JPEG, PNG, GIF, BMP, TIFF or "
                                                                            "WebP image")
            raise CbirError(f"{exc}: {advice}") from None

    def answer_request() -> tuple[dict, str]:
        engine = pick_engine(request.values.get("method"))
        if request.method == "POST":
            upload = request.files.get("image")
            data = upload.read() if upload is not None else b""
            if upload is None or (not upload.filename and not data):
                raise CbirError("no image was chosen: pick or drop an image file, then search")
            name = upload_name(upload.filename)
            # the header only, before waiting for a slot: pixels, shape and the method's resize
            check_budget(data, name, engine.max_pixels, resize_side=engine.resize_side)

            def work():
                answer, image = engine.query_bytes(data, name=name)
                return answer, image_data_uri(image, 2 * thumb_size)
            return gate.run(work)
        image_id = request.args.get("id")
        if not image_id:
            raise CbirError("no query: upload an image or give an image id")
        answer = gate.run(engine.query_id, image_id)
        return answer, url_for("thumb", image_id=image_id)

    def page(status: int = 200, **context):
        if "method" not in context:  # request.values would re-raise for a too-large upload
            context["method"] = request.values.get("method") or next(iter(engines))
        return render_template("index.html", methods=list(engines), dataset=first.db.dataset, max_upload_mb=app.config[
            "MAX_CONTENT_LENGTH"] / 2 ** 20, **context), status

    @app.get("/")
    def index():
        return page()

    def busy(response, exc: Busy):
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.route("/search", methods=["GET", "POST"])
    def search():
        try:
            answer, query_src = run_search()
        except Busy as exc:
            body, status = page(503, error=str(exc))
            return busy(app.make_response((body, status)), exc)
        except CbirError as exc:
            return page(400, error=bounded(exc))
        return page(answer=answer, query_src=query_src, method=answer["method"])

    def json_answer(compute):
        """``compute()``'s answer as JSON: 503 with Retry-After when busy, 400 with the one line of a CbirError."""
        try:
            answer = compute()
        except Busy as exc:
            return busy(app.make_response((jsonify(error=bounded(exc)), 503)), exc)
        except CbirError as exc:
            return jsonify(error=bounded(exc)), 400
        return jsonify(answer)

    @app.route("/api/search", methods=["GET", "POST"])
    def api_search():
        return json_answer(lambda: run_search()[0])

    # relevance feedback and region queries of a dataset image (cbir.app.feedback.refine_request)
    @app.get("/refine")
    def refine():
        try:
            answer = gate.run(refine_request, pick_engine(request.args.get("method")), params, root, request.args)
        except Busy as exc:
            body, status = page(503, error=str(exc))
            return busy(app.make_response((body, status)), exc)
        except CbirError as exc:
            return page(400, error=bounded(exc))
        return page(answer=answer, query_src=url_for("thumb", image_id=answer["query"]["image_id"]),
                    method=answer["method"])

    @app.get("/api/refine")
    def api_refine():
        return json_answer(lambda: gate.run(refine_request, pick_engine(request.args.get("method")), params, root,
                                            request.args))

    @app.get("/thumb/<image_id:image_id>")
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

    def form_error(status: int, message: str):
        message = bounded(message)
        if request.path.startswith("/api/"):
            return jsonify(error=message), status
        return page(status, error=message, method=next(iter(engines)))  # request.values would re-raise

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        if isinstance(exc, TooManyParts):
            return form_error(413, exc.description)
        return form_error(413, f"the upload is larger than the {app.config['MAX_CONTENT_LENGTH'] / 2 ** 20:.3g} "
                               "MB limit: choose a smaller image")

    @app.errorhandler(MalformedForm)
    def malformed(exc):
        return form_error(400, exc.description)

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8000) -> BoundedServer:
    """The production WSGI server for ``app`` (``port=0`` picks a free port: read ``server.server_port``).

    waitress with a fixed pool of threads and a connection cap; a request must arrive whole within
    ``serve.request_timeout_s`` of its first byte (see :mod:`cbir.app.wsgi`).
    """

    def refuse(reason) -> CbirError:
        return CbirError(f"cannot listen on {host}:{port} ({reason}): pick another port with --port, "
                         "or another --host")

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise CbirError(f"--port {port} is not a TCP port: give a number from 1 to 65535 (0 picks a free one)")
    settings = app.extensions["cbir"]["settings"]  # create_app's serve_settings
    timeout, max_upload = settings["request_timeout_s"], settings["max_upload_bytes"]

    if port:  # a busy port is one clear line, found out before the server starts its threads
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            raise refuse(exc.strerror or exc) from None
    try:
        return BoundedServer(app, host, port, deadline_s=timeout, max_upload_bytes=max_upload)
    except (OSError, ValueError) as exc:
        raise refuse(getattr(exc, "strerror", None) or exc) from None


def run_server(params: dict, root: Path, host: str = "127.0.0.1", port: int = 8000,
               methods: list[str] | None = None) -> None:
    """``cbir serve``: load everything once, then serve until interrupted."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise CbirError(f"--port {port} is not a TCP port: give a number from 1 to 65535 (0 picks a free one)")
    if not is_loopback(host):
        log.warning("serve: listening on %s, which is reachable from other machines", host)
    app = create_app(params, root, methods)
    server = make_server(app, host, port)
    print(f"serving {params['dataset']['name']} on http://{host}:{server.server_port}/ (methods: "
          f"{', '.join(app.extensions['cbir']['engines'])}); press Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
