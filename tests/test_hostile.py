"""Hostile input, generated at test time: every entry is kept, converted or refused with a reason, never a traceback.

One corpus of odd images, odd names, links and special files goes through the folder source and
curation (every entry kept or counted with its expected reason), the query decoder (each image an
RGB image or one :class:`ImageError` line) and the web API (200 or a one-line 400, never a 500).
A Hypothesis property feeds random bytes under random names to curation.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, TiffImagePlugin

from cbir.app.decode import DRAFT_SIDE, decode_image_bytes, draft_size, open_query_image
from cbir.app.server import create_app, make_server, upload_name
from cbir.data.curate import curate
from cbir.data.images import ImageError
from cbir.data.manifest import read_manifest
from cbir.data.sources import display_name, fetch
from cbir.errors import CbirError
from cbir.stages.curate import run as run_curate
from cbir.stages.extract import run as run_extract
from cbir.features.handcrafted import descriptor_node
from methods_helpers import from_conf, with_defaults

B = os.fsdecode  # a file name from raw bytes (not UTF-8 ones survive as surrogates)


# ---------------------------------------------------------------- the generated corpus

def noise(seed: int, size=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_bomb(side: int = 6300) -> bytes:
    """A flat PNG declaring ``side x side`` pixels in a few hundred KB at most."""
    return encoded(Image.new("L", (side, side), 7), "PNG", optimize=True)


#: what the query decoder says where curation's reason differs (it has no minimum side and ignores extensions)
QUERY_OUTCOME = {"tiny.png": "kept", "notes.txt": "not_an_image"}


def odd_images() -> dict[str, tuple[bytes, str]]:
    """``name -> (bytes, outcome)``: outcome at curation, ``kept:<conversion or ->`` or the drop reason."""
    rgb = Image.fromarray(noise(1))
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff = io.BytesIO()
    Image.fromarray(noise(7)).save(tiff, format="TIFF", save_all=True, append_images=[Image.fromarray(noise(8))])
    palette = Image.fromarray(noise(3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [Image.fromarray(noise(s)).convert("P") for s in (10, 11, 12)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good_png = encoded(Image.fromarray(noise(2)), "PNG")
    return {
        "plain.png": (encoded(rgb, "PNG"), "kept:-"),
        "cmyk.jpg": (encoded(Image.fromarray(noise(4)).convert("CMYK"), "JPEG"), "kept:cmyk"),
        "sixteen.png": (encoded(Image.fromarray((noise(5)[..., 0].astype(np.uint16) * 257)), "PNG"), "kept:16bit"),
        "palette_alpha.png": (encoded(palette, "PNG"), "kept:palette"),
        "animated.gif": (gif.getvalue(), "kept:palette"),
        "multipage.tif": (tiff.getvalue(), "kept:-"),
        "rotated.jpg": (encoded(Image.fromarray(noise(6)), "JPEG", exif=exif.tobytes()), "kept:exif"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated"),
        "zero.png": (b"", "empty"),
        "text.png": (b"this is not an image\n" * 20, "not_an_image"),
        "bomb.png": (png_bomb(), "too_large"),
        "tiny.png": (encoded(Image.fromarray(noise(9, (4, 4))), "PNG"), "too_small"),
        "notes.txt": (b"hello", "unsupported_extension"),
    }


def build_folder(folder) -> dict[str, str]:
    """Write the hostile dataset folder; return ``{display path: expected outcome}`` ("kept" or a reason)."""
    expected: dict[str, str] = {}

    def write(rel: str, data: bytes, outcome: str) -> None:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[display_name(rel)] = outcome

    for i in range(4):  # a clean class, so that curation keeps something
        write(f"good/{i}.png", encoded(Image.fromarray(noise(100 + i)), "PNG"), "kept")
    for name, (data, outcome) in odd_images().items():
        write(f"odd/{name}", data, "kept" if outcome.startswith("kept") else outcome)
    names = {
        B(b"names/caf\xe9.png"): "undecodable_name",             # Latin-1 name from an old camera
        B(b"names/\xff\xfe.png"): "undecodable_name",
        "names/new\nline.png": "control_character_name",
        "names/tab\there.png": "control_character_name",
        "names/-rf.png": "kept",                                  # leading dash: an ordinary name
        "names/ünïcødé 雪.png": "kept",
        "names/" + "l" * 251 + ".png": "kept",                   # 255 bytes: the longest name allowed
        "names/x.png": "kept", "names/x.jpg": "kept",             # ids differ by extension
        "names/x.jpg.png": "kept",                                # stem x.jpg clashes with the full path above
    }
    for k, (rel, outcome) in enumerate(names.items()):
        image = Image.fromarray(noise(200 + k))
        write(rel, encoded(image, "JPEG" if rel.endswith(".jpg") else "PNG"), outcome)
    write(B(b"bad\xe9class/0.png"), encoded(Image.fromarray(noise(300)), "PNG"), "undecodable_name")
    write("top_level.png", encoded(Image.fromarray(noise(301)), "PNG"), "no_class_folder")
    write("good/.hidden.png", b"x", "hidden")
    write(".git/config", b"x", "hidden")
    expected.pop(".git/config")
    expected[".git"] = "hidden"
    (folder / "empty_class").mkdir()
    expected["empty_class"] = "empty_class_folder"
    links = {"links/passwd.png": ("/etc/passwd", "outside_dataset"), "links/up.png": ("../../outside.png",
                                                                                      "outside_dataset"),
             "links/dangling.png": ("nowhere.png", "dangling_link"), "links/loop.png": ("loop.png", "link_loop"),
             "links/inside.png": ("../good/0.png", "kept"), "links/folder": ("../good", "linked_folder")}
    (folder / "links").mkdir()
    (folder.parent / "outside.png").write_bytes(encoded(Image.fromarray(noise(302)), "PNG"))
    for rel, (target, outcome) in links.items():
        os.symlink(target, folder / rel)
        expected[rel] = outcome
    os.symlink("/etc", folder / "etc")
    expected["etc"] = "outside_dataset"
    os.mkfifo(folder / "links" / "fifo.png")
    expected["links/fifo.png"] = "fifo"
    try:
        os.mknod(folder / "links" / "null.png", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected["links/null.png"] = "device"
    except (PermissionError, OSError):
        pass
    return expected


def outcomes(report: dict, manifest: pd.DataFrame, prefix: str) -> dict[str, str]:
    """``{path under the dataset: "kept" or the drop reason}`` from a curation's report and manifest."""
    seen = {d["path"].removeprefix(prefix): d["reason"] for d in report["dropped"]}
    for path in manifest["path"]:
        seen[path.removeprefix(prefix)] = "kept"
    return seen


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    folder = base / "dataset"
    folder.mkdir()
    expected = build_folder(folder)
    root = base / "repo"
    params = {"dataset": {"name": "hostile", "source": "folder", "folder": str(folder), "drop_variants": False},
              "curate": {"min_side": 8, "max_pixels": 20_000_000, "min_per_class": 1, "dedupe": False},
              "split": from_conf("split/holdout", queries_per_class=1)}
    fetch(params["dataset"], root / "data/raw/hostile")
    manifest, report = run_curate(params, root)
    return {"root": root, "folder": folder, "expected": expected, "params": params,
            "manifest": manifest, "report": report}


# ---------------------------------------------------------------- curation

def test_every_hostile_entry_is_kept_or_counted_with_its_reason(hostile):
    report, manifest = hostile["report"], hostile["manifest"]
    seen = outcomes(report, manifest, "data/raw/hostile/")
    expected = dict(hostile["expected"])
    # the inside link reads its target; files are compared by what curation saw
    assert seen == expected
    assert report["n_candidates"] == report["n_kept"] + report["n_dropped"]
    assert sum(report["drop_counts"].values()) == report["n_dropped"]
    assert not (hostile["root"] / "data/raw/hostile/links/passwd.png").exists()


def test_conversions_of_exotic_modes_are_counted(hostile):
    conversions = hostile["report"]["conversions"]
    for name in ("cmyk", "16bit", "palette", "alpha", "exif"):
        assert conversions[name] >= 1, name


def test_manifest_and_curation_json_round_trip_odd_ids(hostile):
    root = hostile["root"]
    manifest = read_manifest(root / "data/curated/hostile/manifest.csv")
    assert manifest["image_id"].tolist() == hostile["manifest"]["image_id"].tolist()
    ids = set(manifest["image_id"])
    assert {"names/-rf", "names/ünïcødé 雪", "names/" + "l" * 251, "names/x.png", "names/x.jpg",
            "names/x.jpg.png"} <= ids
    assert manifest["image_id"].is_unique
    report = json.loads((root / "data/curated/hostile/curation.json").read_text(encoding="utf-8"))
    assert "names/caf\\xe9.png" in {d["path"].removeprefix("data/raw/hostile/") for d in report["dropped"]}
    provenance = json.loads((root / "data/raw/hostile/_source.json").read_text(encoding="utf-8"))
    assert {s["reason"] for s in provenance["skipped"]} >= {"outside_dataset", "dangling_link", "link_loop"}


def test_curating_twice_is_byte_identical(hostile, tmp_path):
    root = hostile["root"]
    before = [(root / f"data/curated/hostile/{n}").read_bytes() for n in ("manifest.csv", "curation.json")]
    run_curate(hostile["params"], root)
    assert before == [(root / f"data/curated/hostile/{n}").read_bytes() for n in ("manifest.csv", "curation.json")]


def test_archive_members_with_undecodable_names_are_dropped_not_fatal(tmp_path):
    archive = tmp_path / "test1.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for name, seed in (("image.orig/1.jpg", 1), ("image.orig/2.jpg", 2), (B(b"image.orig/\xe9t\xe9.jpg"), 3)):
            data = encoded(Image.fromarray(noise(seed)), "JPEG")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = tmp_path / "raw"
    fetch({"source": "corel1k", "name": "corel1k", "archive": str(archive)}, raw)
    manifest, report = curate(raw, {"source": "corel1k", "name": "corel1k", "drop_variants": False}, from_conf("curate/default", min_side=8, min_per_class=1),
                              from_conf("split/leave_one_out"), tmp_path)
    assert sorted(manifest["image_id"]) == ["image.orig/1", "image.orig/2"]
    assert report["drop_counts"] == {"undecodable_name": 1}
    assert report["dropped"][0]["path"] == "raw/image.orig/\\xe9t\\xe9.jpg"


@pytest.mark.parametrize("kind", ["archive_is_folder", "folder_is_file"])
def test_path_of_the_wrong_kind_says_so(tmp_path, kind):
    (tmp_path / "afile").write_bytes(b"x")
    cfg = ({"source": "corel1k", "archive": str(tmp_path)} if kind == "archive_is_folder"
           else {"source": "folder", "folder": str(tmp_path / "afile")})
    with pytest.raises(CbirError, match="is a folder, not an archive" if kind == "archive_is_folder"
                       else "is a file, not a folder"):
        fetch(cfg, tmp_path / "raw")


# ---------------------------------------------------------------- the query decoder

@pytest.mark.parametrize("name", sorted(odd_images()))
def test_query_decoder_returns_rgb_or_one_clear_line(name, tmp_path):
    data, outcome = odd_images()[name]
    path = tmp_path / name
    path.write_bytes(data)
    outcome = QUERY_OUTCOME.get(name, outcome)
    for decode in (lambda: decode_image_bytes(data, name, max_pixels=12_000_000),
                   lambda: open_query_image(path, max_pixels=12_000_000)):
        if outcome.startswith("kept"):
            image = decode()
            assert image.mode == "RGB" and image.size[0] >= 1
        else:
            with pytest.raises(ImageError) as info:
                decode()
            assert info.value.reason == outcome and "\n" not in str(info.value) and name in str(info.value)


def test_large_jpeg_is_decoded_at_reduced_size_and_the_budget_is_read_from_the_header(tmp_path):
    data = encoded(Image.new("RGB", (5000, 3000), (90, 120, 30)), "JPEG", quality=70)
    image = decode_image_bytes(data, "big.jpg", max_pixels=4_000_000)  # 15 MP declared, 2500x1500 decoded
    assert image.size == draft_size((5000, 3000)) == (2500, 1500)  # scale 1/2: the short side stays >= 1024
    assert min(image.size) >= DRAFT_SIDE and image.getpixel((10, 10)) == pytest.approx((90, 120, 30), abs=3)
    wide = encoded(Image.new("RGB", (6000, 5800), (5, 5, 5)), "JPEG", quality=50)  # 34.8 MP declared
    assert decode_image_bytes(wide, "wide.jpg", max_pixels=4_000_000).size == draft_size((6000, 5800)) == (1500, 1450)
    huge = encoded(Image.new("RGB", (9000, 8300), (5, 5, 5)), "JPEG", quality=50)  # over the 40 MP header limit
    with pytest.raises(ImageError, match=r"too_large \(9000x8300 = 74700000 pixels > max_pixels 40000000\)"):
        decode_image_bytes(huge, "huge.jpg", max_pixels=4_000_000)
    with pytest.raises(ImageError, match=r"big.jpg: too_large \(5000x3000 decodes to 2500x1500 = 3750000 pixels"):
        decode_image_bytes(data, "big.jpg", max_pixels=3_000_000)
    with pytest.raises(ImageError, match=r"bomb.png: too_large \(6300x6300 = 39690000 pixels > max_pixels"):
        decode_image_bytes(png_bomb(), "bomb.png", max_pixels=12_000_000)


# ---------------------------------------------------------------- the web API

@pytest.fixture(scope="module")
def web(hostile):
    """A server over the curated hostile corpus with one handcrafted method (no weights needed)."""
    root = hostile["root"]
    params = {**with_defaults(hostile["params"]), "device": "cpu", "retrieval": {"k": 5, "block_size": 4, "index": "exact"},
              "methods": {"hsv": {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram", {})}},
              "serve": from_conf("serve/default", max_query_pixels=12_000_000)}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_extract(params, root, method="hsv")
    return create_app(params, root).test_client()


def multipart(filename: bytes, data: bytes) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    body = (b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="image"; filename="' + filename
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data + b"\r\n--" + boundary.encode() + b"--\r\n")
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_web_api_answers_every_hostile_upload_with_results_or_one_line(web, name):
    data, outcome = odd_images()[name]
    body, ctype = multipart(name.encode(), data)
    response = web.post("/api/search", data=body, content_type=ctype)
    outcome = QUERY_OUTCOME.get(name, outcome)
    if outcome.startswith("kept"):
        assert response.status_code == 200 and len(response.get_json()["results"]) == 5
    else:
        assert response.status_code == 400
        error = response.get_json()["error"]
        assert outcome in error and name in error and "\n" not in error


def test_web_upload_names_with_odd_bytes(web):
    body, ctype = multipart("ünï \x01\t.png".encode(), odd_images()["plain.png"][0])
    response = web.post("/api/search", data=body, content_type=ctype)
    assert response.status_code == 200 and response.get_json()["query"]["source"] == "ünï ??.png"
    # werkzeug drops a multipart part whose headers are not UTF-8: say so instead of "no image was chosen"
    body, ctype = multipart(b"caf\xe9.png", odd_images()["plain.png"][0])
    response = web.post("/api/search", data=body, content_type=ctype)
    assert response.status_code == 400 and "file name is not UTF-8" in response.get_json()["error"]
    assert upload_name(B(b"caf\xe9\n.png")) == "caf??.png" and upload_name("../../x.png") == "x.png"


def test_every_id_the_page_shows_can_be_fetched(web, hostile):
    for image_id in hostile["manifest"]["image_id"]:
        page = web.get("/search", query_string={"id": image_id})
        assert page.status_code == 200
        for src in re.findall(r'<img src="([^"]+)"', page.get_data(as_text=True)):
            if src.startswith("/thumb/"):
                thumb = web.get(src.replace("&amp;", "&"))
                assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg", src


def test_thumb_route_routes_an_id_holding_a_newline(web):
    """Manifests written before names with control characters were refused may still hold one."""
    from flask import url_for

    app = web.application
    with app.test_request_context():
        url = url_for("thumb", image_id="a/new\nline")
    assert url == "/thumb/a/new%0Aline"
    assert app.url_map.bind("localhost").match("/thumb/a/new\nline") == ("thumb", {"image_id": "a/new\nline"})
    assert web.get("/thumb/a/new%0Aline").status_code == 404  # routed (then unknown), not a routing miss


def test_port_out_of_range_is_refused(web):
    with pytest.raises(CbirError, match="--port 99999 is not a TCP port"):
        make_server(web.application, "127.0.0.1", 99999)


# ---------------------------------------------------------------- property: random bytes, random names

NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b
                                                       and b not in (b".", b".."))


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.lists(st.tuples(NAME_BYTES, NAME_BYTES, st.one_of(st.binary(max_size=300), st.integers(0, 50))),
                min_size=1, max_size=8, unique_by=lambda t: (t[0], t[1])))
def test_curation_of_random_bytes_under_random_names_never_crashes(tmp_path_factory, entries):
    base = tmp_path_factory.mktemp("prop")
    folder = base / "ds"
    written = set()
    for folder_name, file_name, content in entries:
        data = content if isinstance(content, bytes) else encoded(Image.fromarray(noise(content)), "PNG")
        target = os.path.join(os.fsencode(folder), folder_name, file_name)
        if os.path.isdir(os.path.join(os.fsencode(folder), folder_name, file_name)):
            continue
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
        except (NotADirectoryError, IsADirectoryError, FileExistsError):
            continue
        written.add(display_name(B(folder_name + b"/" + file_name)))
    raw = base / "raw"
    try:
        fetch({"source": "folder", "name": "p", "folder": str(folder)}, raw)
        manifest, report = curate(raw, {"source": "folder", "name": "p", "drop_variants": False}, from_conf("curate/default", min_side=8, min_per_class=1),
                                  from_conf("split/leave_one_out"), base)
    except CbirError as exc:  # nothing usable at all: one line, never a traceback
        assert "\n" not in str(exc)
        return
    seen = outcomes(report, manifest, "raw/")
    assert written <= set(seen) | {p for p in seen if seen[p] == "hidden"} | {
        w for w in written if any(w.startswith(h + "/") for h, r in seen.items() if r == "hidden")}
    assert report["n_candidates"] == report["n_kept"] + report["n_dropped"]
    manifest.to_csv(base / "m.csv", index=False, encoding="utf-8")
    assert pd.read_csv(base / "m.csv", dtype=str, keep_default_na=False)["image_id"].tolist() == \
        manifest["image_id"].tolist()


def test_multipage_tiff_helper_is_really_multipage():
    image = Image.open(io.BytesIO(odd_images()["multipage.tif"][0]))
    assert isinstance(image, TiffImagePlugin.TiffImageFile) and image.n_frames == 2
