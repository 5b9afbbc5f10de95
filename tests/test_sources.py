"""Dataset sources: synthetic, corel1k (local tar / folder / URL / offline), folder, tuxpaint, fashion_mnist."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import logging
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2gray, rgb2hsv
from skimage.feature import hog

from cbir.data import sources
from cbir.data.sources import COREL1K_LABELS, corel1k_label, fetch, list_files, read_idx
from cbir.data.synthetic import class_names, generate, synthetic_image
from cbir.errors import CbirError
from methods_helpers import from_conf


def _provenance(raw: Path) -> dict:
    return json.loads((raw / "_source.json").read_text())


def _jpeg_bytes(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def corel_tar(path: Path, ids=(0, 1, 2, 100, 101, 102, 950, 999)) -> Path:
    """A small Corel-1K-shaped tar: ``image.orig/<id>.jpg``."""
    with tarfile.open(path, "w") as tar:
        for i in ids:
            data = _jpeg_bytes(i)
            info = tarfile.TarInfo(f"image.orig/{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _closed_port_url(name: str = "test1.tar") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_seeded(tmp_path):
    files_a = generate(tmp_path / "a", n_classes=3, per_class=4, size=32, seed=7, fmt="png", quality=90)
    files_b = generate(tmp_path / "b", n_classes=3, per_class=4, size=32, seed=7, fmt="png", quality=90)
    files_c = generate(tmp_path / "c", n_classes=3, per_class=4, size=32, seed=8, fmt="png", quality=90)
    assert files_a == files_b == files_c and len(files_a) == 12
    assert files_a[0] == "c00_disc_solid/0000.png"
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert any((tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes() for r in files_a)
    # image i of class c does not depend on how many images are generated
    more = generate(tmp_path / "d", n_classes=3, per_class=6, size=32, seed=7, fmt="png", quality=90)
    assert (tmp_path / "d" / more[6]).read_bytes() == (tmp_path / "a" / files_a[4]).read_bytes()


def test_synthetic_classes_differ_in_colour_and_in_shape():
    n, per = 10, 20
    images, labels = [], []
    for c in range(n):
        for i in range(per):
            images.append(synthetic_image(c, n, 64, np.random.default_rng([0, c, i])))
            labels.append(c)
    labels = np.array(labels)

    def nn_accuracy(features: np.ndarray) -> float:
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
        similarity = features @ features.T
        np.fill_diagonal(similarity, -np.inf)
        return float((labels[similarity.argmax(1)] == labels).mean())

    colour = np.array([np.histogramdd(rgb2hsv(im).reshape(-1, 3), bins=(8, 4, 4), range=[(0, 1)] * 3)[0].ravel()
                       for im in images])
    shape = np.array([hog(rgb2gray(im), pixels_per_cell=(16, 16), cells_per_block=(2, 2)) for im in images])
    assert nn_accuracy(colour) >= 0.7  # chance is 0.1
    assert nn_accuracy(shape) >= 0.45  # shape/texture alone, colour removed


def test_synthetic_images_are_jittered():
    a = synthetic_image(0, 4, 32, np.random.default_rng([0, 0, 0]))
    b = synthetic_image(0, 4, 32, np.random.default_rng([0, 0, 1]))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)


def test_fetch_synthetic_jpeg(tmp_path):
    raw = tmp_path / "raw"
    provenance = fetch(from_conf("dataset/synthetic", name="syn", n_classes=2, per_class=3, size=24, format="jpeg"), raw)
    assert provenance["n_files"] == 6 and _provenance(raw) == provenance
    assert list_files(raw) == ["_source.json"] + [f"{c}/{i:04d}.jpg" for c in class_names(2) for i in range(3)]
    assert Image.open(raw / "c00_disc_solid/0000.jpg").format == "JPEG"


def test_synthetic_bad_settings(tmp_path):
    with pytest.raises(CbirError, match="n_classes >= 1"):
        fetch(from_conf("dataset/synthetic", n_classes=0), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------- corel1k

def test_corel1k_label():
    assert [corel1k_label(s) for s in ("0", "99", "100", "450", "550", "999")] == \
        ["africa", "africa", "beach", "dinosaurs", "elephants", "food"]
    assert corel1k_label("1000") is None and corel1k_label("cover") is None
    assert len(COREL1K_LABELS) == 10


def test_corel1k_from_local_tar(tmp_path, caplog):
    archive = corel_tar(tmp_path / "test1.tar")
    raw = tmp_path / "raw" / "corel1k"
    with caplog.at_level(logging.WARNING, logger="cbir"):
        provenance = fetch({"source": "corel1k", "name": "corel1k", "archive": str(archive), "sha256": None,
                            "urls": [_closed_port_url()]}, raw)
    observed = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert provenance["sha256"] == observed and provenance["sha256_pinned"] is False
    assert provenance["n_images"] == 8 and _provenance(raw)["archive"] == "test1.tar"  # named, never an absolute path
    assert f"dataset.sha256={observed}" in caplog.text
    assert (raw / "image.orig/101.jpg").read_bytes() == _jpeg_bytes(101)


def test_corel1k_pinned_sha_mismatch(tmp_path):
    archive = corel_tar(tmp_path / "test1.tar")
    with pytest.raises(CbirError) as info:
        fetch({"source": "corel1k", "name": "corel1k", "archive": str(archive), "sha256": "a" * 64}, tmp_path / "raw")
    assert "a" * 64 in str(info.value) and hashlib.sha256(archive.read_bytes()).hexdigest() in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_corel1k_from_folder(tmp_path):
    folder = tmp_path / "image.orig"
    folder.mkdir()
    for i in (5, 205):
        (folder / f"{i}.jpg").write_bytes(_jpeg_bytes(i))
    provenance = fetch({"source": "corel1k", "name": "corel1k", "folder": str(folder)}, tmp_path / "raw")
    assert provenance["n_images"] == 2 and list_files(tmp_path / "raw") == ["205.jpg", "5.jpg", "_source.json"]


def test_corel1k_archive_without_corel_images(tmp_path):
    archive = tmp_path / "other.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(CbirError, match=r"no Corel-1K images \(0.jpg … 999.jpg\) found"):
        fetch({"source": "corel1k", "name": "corel1k", "archive": str(archive)}, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_corel1k_offline_error_is_one_line(tmp_path):
    url = _closed_port_url()
    with pytest.raises(CbirError) as info:
        fetch({"source": "corel1k", "name": "corel1k", "urls": [url], "sha256": None}, tmp_path / "raw",
              cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("corel1k: could not download corel1k.tar from any of 1 URL(s): " + url)
    assert "a URL that works in dataset.urls" in message
    assert "dataset.archive=" in message and "dataset.folder=" in message
    assert not (tmp_path / "raw").exists()
    with pytest.raises(CbirError, match="no dataset.urls and no local copy configured.*dataset.archive="):
        fetch({"source": "corel1k", "name": "corel1k", "urls": []}, tmp_path / "raw")


def test_corel1k_download_from_local_server(tmp_path):
    archive = corel_tar(tmp_path / "test1.tar", ids=(3, 303))
    data = archive.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/test1.tar"
        provenance = fetch({"source": "corel1k", "name": "corel1k", "urls": [_closed_port_url(), url],
                            "sha256": digest}, tmp_path / "data/raw/corel1k", cache_dir=tmp_path / "cache")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert provenance["url"] == url and provenance["sha256"] == digest and provenance["sha256_pinned"] is True
    assert (tmp_path / "cache/corel1k.tar").read_bytes() == data
    assert list_files(tmp_path / "data/raw/corel1k") == ["_source.json", "image.orig/3.jpg", "image.orig/303.jpg"]


# ---------------------------------------------------------------- folder

def test_folder_source_copies_class_folders(tmp_path):
    src = tmp_path / "photos"
    for rel in ("cats/a.png", "cats/deep/b.png", "dogs/c.png", "dogs/.hidden.png", "notes.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    provenance = fetch({"source": "folder", "name": "pets", "folder": str(src)}, tmp_path / "raw")
    assert list_files(tmp_path / "raw") == ["_source.json", "cats/a.png", "cats/deep/b.png", "dogs/c.png"]
    assert (tmp_path / "raw/cats/deep/b.png").read_bytes() == b"cats/deep/b.png"
    assert provenance["ignored_top_level_files"] == ["notes.txt"] and provenance["n_files"] == 3


def test_folder_source_errors(tmp_path):
    with pytest.raises(CbirError, match="needs dataset.folder="):
        fetch({"source": "folder"}, tmp_path / "raw")
    with pytest.raises(CbirError, match="dataset.folder=.* does not exist"):
        fetch({"source": "folder", "folder": str(tmp_path / "nope")}, tmp_path / "raw")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat/a.png").write_bytes(b"x")
    with pytest.raises(CbirError, match="no image files inside class sub-folders"):
        fetch({"source": "folder", "folder": str(tmp_path / "flat")}, tmp_path / "raw")


def test_a_source_checks_its_inputs_then_needs_its_name(tmp_path):
    """conf/dataset/ names every dataset: a valid source without ``name`` is one line, and nothing written."""
    (tmp_path / "photos/cats").mkdir(parents=True)
    (tmp_path / "photos/cats/a.png").write_bytes(b"x")
    missing = "params.yaml: dataset.name is missing: regenerate params.yaml with `python -m cbir params`"
    for cfg in ({"source": "folder", "folder": str(tmp_path / "photos")},
                {"source": "corel1k", "folder": str(tmp_path / "photos")},
                {k: v for k, v in from_conf("dataset/synthetic").items() if k != "name"}):
        with pytest.raises(CbirError) as info:
            fetch(cfg, tmp_path / "raw")
        assert str(info.value).startswith(missing) and "\n" not in str(info.value), cfg
        assert not (tmp_path / "raw").exists()
    with pytest.raises(CbirError, match="is a folder, not an archive"):  # the input's own error comes first
        fetch({"source": "corel1k", "archive": str(tmp_path / "photos")}, tmp_path / "raw")


# ---------------------------------------------------------------- tuxpaint

def test_tuxpaint_copies_image_files_only(tmp_path):
    stamps = tmp_path / "stamps"
    for rel in ("animals/birds/robin.png", "animals/birds/robin.txt", "animals/birds/robin.ogg",
                "animals/cat_mirror.png", "symbols/star.svg", "symbols/star.dat"):
        (stamps / rel).parent.mkdir(parents=True, exist_ok=True)
        (stamps / rel).write_bytes(b"data")
    provenance = fetch({"source": "tuxpaint", "name": "tuxpaint", "root": str(stamps)}, tmp_path / "raw")
    assert list_files(tmp_path / "raw") == ["_source.json", "animals/birds/robin.png", "animals/cat_mirror.png",
                                            "symbols/star.svg"]
    assert provenance["n_files"] == 3 and provenance["debian_package"] == "tuxpaint-stamps-default"


def test_tuxpaint_missing_names_the_package(tmp_path):
    with pytest.raises(CbirError) as info:
        fetch({"source": "tuxpaint", "root": str(tmp_path / "none")}, tmp_path / "raw")
    message = str(info.value)
    assert "tuxpaint-stamps-default" in message and "make setup" in message
    assert "apt-get install tuxpaint-stamps-default" in message and "\n" not in message


TUXPAINT_ROOT = Path(from_conf("dataset/tuxpaint")["root"])
FASHION_MNIST_ROOT = Path(from_conf("dataset/fashion_mnist")["root"])


@pytest.mark.skipif(not TUXPAINT_ROOT.is_dir(), reason="tuxpaint-stamps-default not installed")
def test_tuxpaint_real_package(tmp_path):
    provenance = fetch(from_conf("dataset/tuxpaint"), tmp_path / "raw")
    files = list_files(tmp_path / "raw")
    assert provenance["n_files"] == len(files) - 1 > 300
    assert {f.split("/")[0] for f in files if "/" in f} >= {"animals", "food", "vehicles"}


# ---------------------------------------------------------------- fashion_mnist

def write_idx(path: Path, array: np.ndarray) -> None:
    """Independent idx writer: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_root(root: Path, n_train: int = 30, n_test: int = 10, size: int = 28) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, size, size)))
        write_idx(root / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc"))
    with pytest.raises(CbirError, match="not an unsigned-byte idx file"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc"))
    with pytest.raises(CbirError, match=r"declares shape \(5,\) but the file holds 3 bytes"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_copies_the_idx_files(tmp_path):
    root = fake_fashion_root(tmp_path / "fm")
    provenance = fetch({"source": "fashion_mnist", "name": "fashion_mnist", "root": str(root)}, tmp_path / "raw")
    assert list_files(tmp_path / "raw") == sorted(["_source.json", "t10k-images-idx3-ubyte.gz",
                                                   "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                                                   "train-labels-idx1-ubyte.gz"])
    assert provenance["sha256"]["train-labels-idx1-ubyte.gz"] == hashlib.sha256(
        (root / "train-labels-idx1-ubyte.gz").read_bytes()).hexdigest()


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(CbirError) as info:
        fetch({"source": "fashion_mnist", "root": str(tmp_path)}, tmp_path / "raw")
    assert "dataset-fashion-mnist" in str(info.value) and "apt-get install" in str(info.value)


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_real_package_shapes():
    images = read_idx(FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_unknown_source(tmp_path):
    with pytest.raises(CbirError, match="unknown dataset.source 'flickr'"):
        fetch({"source": "flickr"}, tmp_path / "raw")


# ---------------------------------------------------------------- never outside the dataset folder

def test_scan_tree_never_leaves_the_folder_and_says_why_it_skips(tmp_path):
    import os

    root = tmp_path / "ds"
    (root / "c").mkdir(parents=True)
    (root / "c" / "a.png").write_bytes(b"a")
    (tmp_path / "secret.png").write_bytes(b"secret")
    links = {"c/out.png": "../../secret.png", "c/abs.png": "/etc/passwd", "c/dangling.png": "missing.png",
             "c/loop.png": "loop.png", "c/in.png": "a.png", "dir": "c", "c/.hidden.png": "a.png"}
    for rel, target in links.items():
        os.symlink(target, root / rel)
    os.mkfifo(root / "c" / "pipe.png")
    (root / "lonely").mkdir()
    scan = sources.scan_tree(root, empty_folders=True)
    assert scan.files == ["c/a.png", "c/in.png"]
    assert {s["path"]: s["reason"] for s in scan.skipped} == {
        "c/out.png": "outside_dataset", "c/abs.png": "outside_dataset", "c/dangling.png": "dangling_link",
        "c/loop.png": "link_loop", "dir": "linked_folder", "c/.hidden.png": "hidden", "c/pipe.png": "fifo",
        "lonely": "empty_class_folder"}
    provenance = fetch({"source": "folder", "name": "x", "folder": str(root)}, tmp_path / "raw")
    assert (tmp_path / "raw/c/in.png").read_bytes() == b"a" and not (tmp_path / "raw/c/out.png").exists()
    assert len(provenance["skipped"]) == 8


def test_display_name_escapes_bytes_that_are_not_utf8():
    import os

    assert sources.display_name(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert sources.display_name("ünï.png") == "ünï.png"
