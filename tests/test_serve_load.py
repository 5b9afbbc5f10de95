"""Load on the web server (loopback only, bounded loops): 200 sequential and 4 x 50 concurrent queries.

The server runs in its own process (``create_app`` + ``make_server`` on 127.0.0.1, a free
port), so its resident memory is measured alone. Every response must be correct, and the
server's RSS may grow by at most :data:`RSS_GROWTH_BOUND` between a warmed-up baseline and
the end. Why that bound: the queries upload 384 x 384 noise PNGs (~440 KB each, 432 KiB
once decoded), so a server that kept any one per-request object (the upload, the decoded
image, the temporary file's bytes) would grow by at least 400 x 430 KiB = 168 MiB over the
400 measured queries; 64 MiB is well under that yet leaves room for the allocator's
per-thread arenas and the bounded thumbnail cache (at most 2,048 small JPEGs) to settle.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from PIL import Image
from test_query import build_pipeline_state, serving_root

pytestmark = pytest.mark.slow

RSS_GROWTH_BOUND = 64 * 2 ** 20
REQUEST_TIMEOUT_S = 60
#: never a proxy from the environment: every request goes straight to the loopback server
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SERVER_SCRIPT = """
import sys
from pathlib import Path
from cbir.config import load_params
from cbir.app.server import create_app, make_server
root = Path(sys.argv[1])
server = make_server(create_app(load_params(root), root), "127.0.0.1", 0)
print(server.server_port, flush=True)
server.serve_forever()
"""


def noise_png(seed: int, size: int = 384) -> bytes:
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 256, size=3)
    pixels = np.clip(tint + rng.integers(-60, 60, size=(size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: dict, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@contextlib.contextmanager
def running_server(root):
    """``cbir serve`` on a free loopback port in its own process: ``{"url", "process"}``; stopped afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(proc.stdout.readline().strip() or 0)
        assert port > 0, "the server did not start"
        yield {"url": f"http://127.0.0.1:{port}", "process": psutil.Process(proc.pid)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("load_root")
    build_pipeline_state(root, random_mobilenet_file)
    with running_server(root) as server:
        yield server


def one_query(url: str, i: int, images: list[bytes], ids: list[str]) -> None:
    """Query ``i`` of a fixed rotation: HTML upload, JSON upload, click by id; checks the answer."""
    method = ("hsv_hist", "mobilenet_v2-gap")[i % 2]
    kind = i % 3
    if kind == 2:
        request = urllib.request.Request(f"{url}/api/search?id={ids[i % len(ids)]}&method={method}")
    else:
        body, ctype = multipart({"method": method}, f"q{i}.png", images[i % len(images)])
        path = "/search" if kind == 0 else "/api/search"
        request = urllib.request.Request(url + path, data=body, headers={"Content-Type": ctype}, method="POST")
    with OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status == 200
        payload = response.read()
    if kind == 0:
        assert payload.decode().count('data-rank="') == 10
    else:
        answer = json.loads(payload)
        assert answer["method"] == method and [r["rank"] for r in answer["results"]] == list(range(1, 11))
        if kind == 2:
            assert answer["results"][0]["image_id"] == ids[i % len(ids)]


def run_batch(url: str, start: int, count: int, workers: int, images, ids) -> None:
    if workers == 1:
        for i in range(start, start + count):
            one_query(url, i, images, ids)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_batch, url, start + w * count, count, 1, images, ids) for w in range(workers)]
        for future in futures:
            future.result(timeout=600)


def test_sequential_and_concurrent_queries_without_errors_or_leaks(server):
    url, process = server["url"], server["process"]
    images = [noise_png(seed) for seed in range(4)]
    ids = [f"{label}/{i}" for label in ("red", "green", "blue") for i in range(1, 6)]
    start = time.perf_counter()
    run_batch(url, 0, 30, 1, images, ids)  # warm up: caches, allocator arenas, thread pools
    run_batch(url, 30, 10, 4, images, ids)
    baseline = process.memory_info().rss
    run_batch(url, 1000, 200, 1, images, ids)  # 200 sequential
    after_sequential = process.memory_info().rss
    run_batch(url, 2000, 50, 4, images, ids)  # 4 x 50 concurrent
    final = process.memory_info().rss
    elapsed = time.perf_counter() - start
    growth = final - baseline
    print(f"\n480 queries in {elapsed:.1f}s; server RSS {baseline / 2 ** 20:.1f} MiB -> "
          f"{after_sequential / 2 ** 20:.1f} MiB (200 sequential) -> {final / 2 ** 20:.1f} MiB (4 x 50 concurrent); "
          f"growth {growth / 2 ** 20:.1f} MiB, bound {RSS_GROWTH_BOUND / 2 ** 20:.0f} MiB")
    assert growth < RSS_GROWTH_BOUND
    # and it still answers after the load
    with OPENER.open(f"{url}/api/search?id=blue/1", timeout=REQUEST_TIMEOUT_S) as response:
        assert json.loads(response.read())["results"][0]["image_id"] == "blue/1"
    with pytest.raises(urllib.error.HTTPError) as info:
        OPENER.open(f"{url}/thumb/..%2Fparams.yaml", timeout=REQUEST_TIMEOUT_S)
    assert info.value.code == 404


# ---------------------------------------------------------------- bounded work under hostile load

RSS_CEILING = int(1.5 * 2 ** 30)
NEAR_LIMIT_SIDE = 3460  # 3460 x 3460 = 11.97 MP, just under the default query budget (serve.max_query_pixels 12 MP)


def near_limit_png(seed: int, side: int = NEAR_LIMIT_SIDE) -> bytes:
    """A compressible (well under the 16 MB upload cap) PNG of ``side x side`` pixels: gradients and a tint."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    tint = np.random.default_rng(seed).integers(0, 256, size=3)
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[..., 0] = ((ramp[None, :] + tint[0]) % 256).astype(np.uint8)
    pixels[..., 1] = ((ramp[:, None] + tint[1]) % 256).astype(np.uint8)
    pixels[..., 2] = tint[2]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory, random_mobilenet_file):
    """A server with the default serve limits and curation's default 40 MP cap (so the query budget binds)."""
    root = serving_root(tmp_path_factory.mktemp("bounded_root"), random_mobilenet_file, max_upload_mb=16,
                        thumb_size=160, max_query_pixels=12_000_000, max_concurrent=2, queue_timeout_s=10,
                        request_timeout_s=30)
    with running_server(root) as server:
        yield server


def post_upload(url: str, method: str, name: str, data: bytes) -> tuple[int, dict, dict]:
    """POST an upload to the JSON API; ``(status, headers, body)`` for any status."""
    body, ctype = multipart({"method": method}, name, data)
    request = urllib.request.Request(url + "/api/search", data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def test_eight_concurrent_near_limit_images_keep_the_server_bounded_and_standing(bounded_server):
    """Eight 12 MP uploads at once (plus eight 6300 x 6300 PNG bombs of ~100 KB): every reply is a ranking, a
    one-line refusal or a 503 with Retry-After; peak RSS stays under 1.5 GB; a normal query works afterwards."""
    import threading

    url, process = bounded_server["url"], bounded_server["process"]
    images = [near_limit_png(seed) for seed in range(8)]
    bomb = io.BytesIO()
    Image.new("L", (6300, 6300), 7).save(bomb, format="PNG", optimize=True)
    assert max(len(b) for b in images) < 16 * 2 ** 20 and len(bomb.getvalue()) < 200 * 2 ** 10
    post_upload(url, "hsv_hist", "warm.png", noise_png(0))  # load lazily imported code before measuring
    peak, done = [process.memory_info().rss], threading.Event()

    def watch():
        while not done.wait(0.05):
            peak.append(process.memory_info().rss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    jobs = [("mobilenet_v2-gap" if i % 2 else "hsv_hist", f"near{i}.png", data) for i, data in enumerate(images)]
    jobs += [("hsv_hist", f"bomb{i}.png", bomb.getvalue()) for i in range(8)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        replies = list(pool.map(lambda job: (job[1], *post_upload(url, *job), time.perf_counter() - start), jobs))
    done.set()
    watcher.join()
    statuses = {}
    for name, status, headers, body, _ in replies:
        statuses[name] = status
        if name.startswith("bomb"):
            assert status == 400 and "too_large (6300x6300 = 39690000 pixels > max_pixels 12000000)" in body["error"]
        elif status == 503:
            assert int(headers["Retry-After"]) >= 1 and "busy" in body["error"]
        else:
            assert status == 200 and len(body["results"]) == 10, body
    assert sum(s == 200 for n, s in statuses.items() if n.startswith("near")) >= 2
    print(f"\n8 near-limit (12 MP) uploads + 8 bombs at once: statuses {sorted(statuses.values())}; "
          f"slowest reply {max(r[-1] for r in replies):.1f} s; peak server RSS {max(peak) / 2 ** 20:.0f} MiB")
    assert max(peak) < RSS_CEILING
    status, _, body = post_upload(url, "hsv_hist", "after.png", noise_png(1))
    assert status == 200 and len(body["results"]) == 10
    with OPENER.open(f"{url}/api/search?id=blue/1", timeout=REQUEST_TIMEOUT_S) as response:
        assert json.loads(response.read())["results"][0]["image_id"] == "blue/1"
