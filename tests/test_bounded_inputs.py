"""Bounded inputs (issue 36): what a dataset source copies, what curation and extraction admit, what the manifest
hash covers, pairs replaced together, and the server's bounded replies.

* A folder source on ``/proc`` (a virtual file system, found by its type), one holding the repository or
  inside its outputs, and a pseudo-file whose size is 0 but which reads on: refused in one line, nothing
  written. The byte budget (``download.max_bytes``) and the free space kept (``download.min_free_bytes``)
  are checked before the first byte is copied.
* The 1,250,000 x 32 PNG of the issue (40 M pixels, within ``curate.max_pixels``) is dropped by curation as
  ``bad_aspect``, from its header; extraction's own check refuses it from a hand-made manifest.
* A split, label or path edit of the manifest is refused on read, naming the column.
* An ``ENOSPC`` between the ``.npy`` and ``.json`` renames leaves the old pair, which still reads.
* ``serve`` with one damaged method serves the others; error replies are one bounded line; a stalled
  request gets its ``408`` and a half-closed short body a ``400``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.app.forms import MAX_ERROR_CHARS, bounded
from cbir.app.server import load_engines
from cbir.app.wsgi import BoundedServer
from cbir.cli import main
from cbir.config import load_params
from cbir.data import local
from cbir.data.curate import curate
from cbir.data.images import MAX_ASPECT_RATIO, check_images
from cbir.data.local import CopyLimits, copy_bounded
from cbir.data.manifest import MANIFEST_COLUMNS, changed_columns, column_digests, manifest_digest
from cbir.data.sources import fetch
from cbir.errors import CbirError
from cbir.features.store import integrity_record, read_features
from cbir.fileio import TMP_DIR, WriteError, atomic_group, sha256_file
from methods_helpers import from_conf
from test_query import build_pipeline_state

LIMITS = CopyLimits.from_params({"download": from_conf("download/default")})


def png(path: Path, size: tuple[int, int], value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository (its marker ``params.yaml``) whose raw folder sources copy into."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "params.yaml").write_text("{}\n")
    return root


@pytest.fixture
def images(tmp_path) -> Path:
    """Two class folders of three small PNGs each, a text file and a FIFO beside them."""
    folder = tmp_path / "images"
    for label in ("a", "b"):
        for i in range(3):
            png(folder / label / f"{i}.png", (40, 30), 40 * i + (label == "b") * 120)
    (folder / "a" / "notes.txt").write_text("not an image\n")
    os.mkfifo(folder / "b" / "pipe.png")
    return folder


def folder_cfg(folder) -> dict:
    return from_conf("dataset/folder", folder=str(folder))


def nothing_written(repo: Path) -> bool:
    raw = repo / "data" / "raw"
    return not (raw.exists() and any(raw.iterdir())) and not any((repo / TMP_DIR).glob("*"))


def one_line_error(call) -> str:
    with pytest.raises(CbirError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


# ---------------------------------------------------------------- what a folder source copies


def test_a_folder_on_proc_is_refused_by_its_file_system_with_nothing_written(repo):
    raw = repo / "data/raw/p"
    for folder, kind in (("/proc", "proc"), ("/proc/self", "proc"), ("/sys", "sysfs")):
        if not Path(folder).is_dir():
            continue
        message = one_line_error(lambda: fetch(folder_cfg(folder), raw, limits=LIMITS))
        assert message.startswith(f"dataset.folder={folder} lies on the virtual file system {kind}, whose files are "
                                  "not images: set dataset.folder")
    assert nothing_written(repo)


def test_a_pseudo_file_reading_more_than_its_size_is_refused(tmp_path):
    status = Path("/proc/self/status")  # size 0 by stat, about 1.4 kB by read
    assert os.stat(status).st_size == 0
    message = one_line_error(lambda: copy_bounded(status, tmp_path / "copy", 0, "dataset.folder=/x"))
    assert message == ("dataset.folder=/x: /proc/self/status reads more bytes than the 0 its size says (a pseudo-file, "
                       "or a file still being written): copy only regular image files and try again")


def test_a_folder_file_whose_size_lies_is_refused_with_nothing_written(repo, images, monkeypatch):
    liar = images / "a" / "1.png"
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # what /proc/<pid>/pagemap does: size 0, gigabytes to read
        found = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(liar):
            values = list(found)
            values[6] = 0  # st_size
            return os.stat_result(values)
        return found

    monkeypatch.setattr(local.os, "stat", stat)
    message = one_line_error(lambda: fetch(folder_cfg(images), repo / "data/raw/p", limits=LIMITS))
    assert message.startswith(f"dataset.folder={images}: {liar} reads more bytes than the 0 its size says")
    assert nothing_written(repo)


def test_a_folder_holding_the_repository_or_inside_its_outputs_is_refused(repo, tmp_path):
    raw = repo / "data/raw/p"
    png(repo / "data/raw/other/a/0.png", (40, 40))
    for folder, words in ((tmp_path, f"holds the repository {repo}: copying it would copy the repository into "
                                     "itself; set dataset.folder to the folder of the images only"),
                          (repo / "data" / ".." / "..", "holds the repository"),
                          (repo, "holds the repository"),
                          (repo / "data/raw/other", "lies inside the repository's data/ (outputs the pipeline "
                                                    "rewrites): move the images out of it")):
        message = one_line_error(lambda: fetch(folder_cfg(folder), raw, limits=LIMITS))
        assert message.startswith(f"dataset.folder={folder} ") and words in message, message
    assert not raw.exists()


def test_only_regular_image_files_are_copied_and_the_rest_is_reported(repo, images):
    provenance = fetch(folder_cfg(images), repo / "data/raw/p", limits=LIMITS)
    copied = sorted(p.relative_to(repo / "data/raw/p").as_posix() for p in (repo / "data/raw/p").rglob("*.*"))
    assert copied == ["_source.json", "a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png"]
    assert {(d["path"], d["reason"]) for d in provenance["skipped"]} == {("a/notes.txt", "unsupported_extension"),
                                                                         ("b/pipe.png", "fifo")}
    expected = sum(p.stat().st_size for p in images.rglob("*.png") if p.is_file() and p.name != "pipe.png")
    assert provenance["bytes"] == expected


def test_the_byte_budget_and_the_free_space_are_checked_before_copying(repo, images):
    total = sum(p.stat().st_size for p in images.rglob("*.png") if p.is_file() and p.name != "pipe.png")
    raw = repo / "data/raw/p"
    assert total < 1000  # six small PNGs
    message = one_line_error(lambda: fetch(folder_cfg(images), raw, limits=CopyLimits(total - 1, 0)))
    assert message == (f"dataset.folder={images} holds {total} bytes ({total} bytes) to copy, over "
                       f"download.max_bytes={total - 1} ({total - 1} bytes): raise download.max_bytes "
                       "(conf/download/default.yaml, or -S download.max_bytes=N) or use a smaller folder")
    message = one_line_error(lambda: fetch(folder_cfg(images), raw, limits=CopyLimits(total, 2 ** 62)))
    assert f"holds {total} bytes" in message and f"download.min_free_bytes={2 ** 62} must stay free" in message
    assert nothing_written(repo)
    assert fetch(folder_cfg(images), raw, limits=CopyLimits(total, 0))["bytes"] == total  # exactly the budget


def test_the_default_budget_is_twenty_gigabytes_and_sizes_read_in_words():
    assert (LIMITS.max_bytes, LIMITS.min_free_bytes) == (20 * 10 ** 9, 10 ** 9)
    assert [local.human_bytes(n) for n in (999, 1000, 66 * 10 ** 9 + 4 * 10 ** 8, 2 * 10 ** 12)] == [
        "999 bytes", "1.0 kB", "66.4 GB", "2.0 TB"]


def test_a_newline_in_the_folder_setting_stays_one_line(repo, tmp_path):
    message = one_line_error(lambda: fetch(folder_cfg(tmp_path / "two\nlines"), repo / "data/raw/p", limits=LIMITS))
    assert message.startswith(f"dataset.folder={tmp_path}/two\\nlines does not exist")


# ---------------------------------------------------------------- what curation and extraction admit


@pytest.fixture(scope="module")
def strip(tmp_path_factory) -> Path:
    """The issue's 1,250,000 x 32 PNG: 40 M pixels (exactly curate.max_pixels), about 40 kB on disk."""
    return png(tmp_path_factory.mktemp("strip") / "strip.png", (1_250_000, 32))


def test_curation_drops_the_strip_as_bad_aspect(tmp_path, strip):
    raw = tmp_path / "raw"
    for i in range(3):
        png(raw / "a" / f"{i}.png", (64, 48), 30 * i)
    (raw / "a" / "strip.png").write_bytes(strip.read_bytes())
    png(raw / "a" / "panorama.png", (50 * 32, 32), 200)  # 50:1 exactly: admitted
    settings = from_conf("curate/default", min_per_class=1)
    assert settings["max_pixels"] >= 1_250_000 * 32  # the pixel budget alone admits it
    manifest, report = curate(raw, from_conf("dataset/folder", name="s"), settings,
                              from_conf("split/leave_one_out"), tmp_path)
    assert sorted(manifest["image_id"]) == ["a/0", "a/1", "a/2", "a/panorama"]
    assert report["drop_counts"] == {"bad_aspect": 1}
    [dropped] = report["dropped"]
    assert (dropped["path"], dropped["image_id"]) == ("raw/a/strip.png", "a/strip")
    assert dropped["detail"] == f"1250000x32 is a strip (3.906e+04:1), wider than {MAX_ASPECT_RATIO}:1"


def test_extraction_refuses_what_curation_drops_from_a_hand_made_manifest(tmp_path, strip):
    normal = [png(tmp_path / f"{i}.png", (64, 48)) for i in range(2)]
    check_images(normal, 40_000_000, 224)  # admitted: nothing raised
    message = one_line_error(lambda: check_images([*normal, strip], 40_000_000, 224))
    assert message.startswith(f"cannot use image {strip}: bad_aspect (1250000x32 is a strip")
    assert message.endswith("the manifest lists an image that curation drops; rerun the curate stage (or remove "
                            "that row), then extract")
    wide = png(tmp_path / "wide.png", (1000, 100))  # 10:1; at 224 px on its short side: 224 x 2240
    check_images([wide], 500_000, None)
    check_images([wide], 501_760, 224)
    message = one_line_error(lambda: check_images([wide], 500_000, 224))
    assert "too_large (1000x100 resized to 224 px on its shorter side makes 501760 pixels > max_pixels 500000)" \
        in message
    big = png(tmp_path / "big.png", (900, 800))
    assert "too_large (900x800 = 720000 pixels > max_pixels 700000)" in one_line_error(
        lambda: check_images([big], 700_000, None))


# ---------------------------------------------------------------- the manifest hash covers every column


@pytest.fixture
def extracted(tmp_path):
    """A manifest of 6 rows and a features file computed from it (the sidecar as extract writes it)."""
    manifest = pd.DataFrame({
        "image_id": [f"{c}/{i}" for c in "ab" for i in range(3)],
        "path": [f"data/raw/t/{c}/{i}.png" for c in "ab" for i in range(3)],
        "label": [c for c in "ab" for _ in range(3)],
        "split": ["query", "database", "database"] * 2, "width": [40] * 6, "height": [30] * 6,
        "sha256": [f"{i:064x}" for i in range(6)], "protocol": ["holdout"] * 6})[MANIFEST_COLUMNS]
    path = tmp_path / "data/features/t/m.npy"
    path.parent.mkdir(parents=True)
    np.save(path, np.eye(6, 4, dtype=np.float32))
    path.with_suffix(".json").write_text(json.dumps(integrity_record(path, manifest)))
    return path, manifest


def test_the_manifest_digest_is_one_hash_over_every_column(extracted):
    _, manifest = extracted
    columns = column_digests(manifest)
    assert list(columns) == MANIFEST_COLUMNS
    import hashlib  # an independent computation of the documented definition
    label = hashlib.sha256(b"a\na\na\nb\nb\nb\n").hexdigest()
    assert columns["label"] == label
    text = "".join(f"{c}\t{columns[c]}\n" for c in MANIFEST_COLUMNS)
    assert manifest_digest(manifest) == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("column, edit", [
    ("split", lambda m: m.assign(split=["query", "query", "database", "query", "database", "database"])),
    ("label", lambda m: m.assign(label=["a", "a", "b", "b", "b", "b"])),
    ("path", lambda m: m.assign(path=[*m["path"][:5], "data/raw/t/b/elsewhere.png"])),
    ("width", lambda m: m.assign(width=[40] * 5 + [41])),
])
def test_an_edit_of_any_column_is_refused_on_read_naming_it(extracted, column, edit):
    path, manifest = extracted
    assert read_features(path, "m", manifest).shape == (6, 4)
    edited = edit(manifest.copy())
    assert changed_columns(column_digests(manifest), edited) == [column]
    message = one_line_error(lambda: read_features(path, "m", edited))
    assert message == (f"{path} was computed from another manifest than the one now there (column(s) {column} "
                       "changed since extract: lines swapped, moved between splits or edited): run `dvc repro "
                       "extract@t` (add -f -s if DVC sees no change)")


# ---------------------------------------------------------------- pairs replaced together


def test_enospc_between_the_npy_and_json_renames_leaves_the_old_pair(extracted, monkeypatch):
    path, manifest = extracted
    (path.parents[3] / "params.yaml").write_text("{}\n")  # the repository root: temporary files in .cbir-tmp
    old_npy, old_json = path.read_bytes(), path.with_suffix(".json").read_bytes()
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst) == str(path.with_suffix(".json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError) as info:
        with atomic_group([path, path.with_suffix(".json")]) as (npy, sidecar):
            np.save(npy, np.ones((6, 4), dtype=np.float32))
            sidecar.write_text(json.dumps(integrity_record(npy, manifest)))
    monkeypatch.setattr(os, "replace", real_replace)
    assert str(info.value) == f"cannot write {path}: No space left on device: free space on that disk and rerun"
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == (old_npy, old_json)
    np.testing.assert_array_equal(read_features(path, "m", manifest), np.eye(6, 4, dtype=np.float32))
    assert not any((path.parents[3] / TMP_DIR).iterdir())


def test_a_first_file_without_an_old_one_is_removed_again(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("{}\n")
    new, kept = tmp_path / "out/new.npy", tmp_path / "out/kept.json"
    kept.parent.mkdir()
    kept.write_text("old")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d, *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
                        if os.fspath(d) == str(kept) else real_replace(s, d, *a, **k))
    with pytest.raises(WriteError):
        with atomic_group([new, kept]) as (a, b):
            a.write_text("new")
            b.write_text("new")
    assert not new.exists() and kept.read_text() == "old"


# ---------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def state(tmp_path_factory, random_mobilenet_file) -> dict:
    """Three colour classes of six PNGs, their manifest, and two methods' features (:func:`build_pipeline_state`)."""
    root = tmp_path_factory.mktemp("served")
    return {"root": root, "params": build_pipeline_state(root, random_mobilenet_file)}


def test_serve_skips_a_damaged_method_and_serves_the_others(state, tmp_path, caplog):
    root = Path(shutil.copytree(state["root"], tmp_path / "served"))
    params = state["params"]
    features = root / "data/features/toy/hsv_hist.npy"
    data = bytearray(features.read_bytes())
    data[-8:] = b"\x00\x00\xc0\x7f" * 2  # two NaNs in the last row
    features.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="cbir"):
        engines = load_engines(params, root)
    assert list(engines) == ["mobilenet_v2-gap"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith(f"serve: skipped method hsv_hist: {features} does not match hsv_hist.json")
    assert warnings[-1] == "serve: serving 1 method(s) (mobilenet_v2-gap); skipped hsv_hist"
    (root / "data/features/toy/mobilenet_v2-gap.npy").unlink()
    message = one_line_error(lambda: load_engines(params, root, ["hsv_hist", "mobilenet_v2-gap"]))
    assert message.startswith(f"no method can be served: hsv_hist: {features} does not match hsv_hist.json")
    assert message.endswith("(and 1 other method(s) skipped)")


def test_error_replies_are_one_bounded_line():
    relevant = ",".join(f"class/{i}" for i in range(8000))  # a 63 kB form value echoed by an error
    line = bounded(f"unknown image ids in relevant={relevant}: pick ids of the dataset\nsecond line")
    assert len(line) == MAX_ERROR_CHARS and "\n" not in line
    assert line.startswith("unknown image ids in relevant=class/0,class/1,") and " ... " in line
    assert line.endswith("class/7999: pick ids of the dataset second line")
    assert bounded("short: do this") == "short: do this"


@pytest.fixture
def echo_server():
    """The bounded WSGI server around an app that echoes the body, with a 2 s request deadline."""
    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    server = BoundedServer(app, "127.0.0.1", 0, 2.0, 1 << 20)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def exchange(port: int, data: bytes, half_close: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(65536):  # the server closes after its reply (20 s without one would raise)
            reply += chunk
    return reply


SHORT_BODY = b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"


def test_a_stalled_request_gets_its_408_and_a_half_closed_one_a_400(echo_server):
    head, _, body = exchange(echo_server, SHORT_BODY, half_close=False).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout") and b"Connection: close" in head
    assert json.loads(body) == {"error": "the request did not arrive within the 2 s limit (serve.request_timeout_s): "
                                         "send it again, faster"}
    head, _, body = exchange(echo_server, SHORT_BODY, half_close=True).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"Connection: close" in head
    assert json.loads(body)["error"].startswith("the request ended before all of it arrived")
    whole = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    assert exchange(echo_server, whole, half_close=True).endswith(b"\r\n\r\nabc")


# ---------------------------------------------------------------- -q silences extract's bars

BARS = r'''
import sys
from pathlib import Path
import numpy as np
from cbir.features.handcrafted import describe_files, descriptor_node
paths = [Path(p) for p in sys.argv[1:]]
out = np.empty((len(paths), 9), dtype=np.float32)
describe_files(descriptor_node("color_moments", {}), paths, out, 1_000_000, num_workers=0, progress=True,
               label="color_moments")
'''


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_the_extract_bars(tmp_path, quiet):
    paths = [str(png(tmp_path / f"{i}.png", (40, 40), 50 * i)) for i in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    if quiet:
        env["TQDM_DISABLE"] = "1"  # what `python -m cbir -q` sets before any stage imports tqdm
    done = subprocess.run([sys.executable, "-c", BARS, *paths], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("color_moments: 100%" in done.stderr) is not quiet, done.stderr


# ---------------------------------------------------------------- params.yaml: a key named twice


@pytest.mark.parametrize("text, words", [
    ("seed: 0\ndevice: cpu\nseed: 1\n", "key 'seed' appears twice (lines 1 and 3)"),
    ("seed: 0\ncurate:\n  min_side: 8\n  dedupe: true\n  min_side: 16\n", "key 'min_side' appears twice (lines 3 and 5)"),
])
def test_params_with_a_key_named_twice_are_refused(tmp_path, text, words):
    (tmp_path / "params.yaml").write_text(text)
    message = one_line_error(lambda: load_params(tmp_path))
    assert message == f"{tmp_path}/params.yaml: {words}: remove one (or regenerate it with `python -m cbir params`)"
    (tmp_path / "params.yaml").write_text("seed: 0\ncurate:\n  min_side: 8\n")
    assert load_params(tmp_path) == {"seed": 0, "curate": {"min_side": 8}}


# ---------------------------------------------------------------- cbir query: --json, --out, --figure


def query(state, capsys, *args) -> tuple[int, str, str]:
    code = main(["--root", str(state["root"]), "-q", "query", *map(str, args), "--method", "hsv_hist"])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_prints_one_compact_line_per_query(state, capsys):
    folder = state["root"] / "data/raw/toy/red"
    code, out, _ = query(state, capsys, folder, "--json", "--k", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(list(folder.glob("*.png"))) == 6
    answers = [json.loads(line) for line in lines]
    assert [a["query"]["source"] for a in answers] == [str(p) for p in sorted(folder.glob("*.png"))]
    assert all(len(a["results"]) == 3 for a in answers)
    code, out, _ = query(state, capsys, folder / "0.png", "--json")
    assert code == 0 and out.count("\n") == 1 and json.loads(out)["query"]["image_id"] == "red/0"


@pytest.mark.parametrize("option, name, words", [
    ("--figure", "f.svg", "give a .png or .pdf file (the figure is saved as PNG and PDF)"),
    ("--out", "r.txt", "give a .csv or .json file (CSV rows or the JSON answers)"),
    ("--figure", "missing/x/f.png", "the folder {folder}/missing/x does not exist: create it, or pick an existing folder"),
    ("--out", "missing/x/r.csv", "the folder {folder}/missing/x does not exist: create it, or pick an existing folder"),
])
def test_out_and_figure_honour_their_name_or_refuse_it(state, tmp_path, capsys, option, name, words):
    code, out, err = query(state, capsys, state["root"] / "data/raw/toy/red/0.png", option, tmp_path / name)
    assert code == 2 and out == ""
    assert err == f"error: {option} {tmp_path / name}: {words.format(folder=tmp_path)}\n"
    assert list(tmp_path.iterdir()) == []


def test_figure_named_pdf_writes_the_pair(state, tmp_path, capsys):
    code, out, _ = query(state, capsys, state["root"] / "data/raw/toy/red/0.png", "--figure", tmp_path / "f.pdf")
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-" and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_api_refine_with_a_huge_relevant_value_answers_one_bounded_line(state):
    from cbir.app.server import create_app

    client = create_app(state["params"], state["root"], methods=["hsv_hist"]).test_client()
    relevant = ",".join(f"nope/{i}" for i in range(8000))  # 63 kB of ids the dataset does not have
    response = client.get("/api/refine", query_string={"id": "red/0", "method": "hsv_hist", "relevant": relevant})
    error = response.get_json()["error"]
    assert response.status_code == 400 and len(relevant) > 60_000
    assert len(error) <= MAX_ERROR_CHARS and "\n" not in error and " ... " in error
