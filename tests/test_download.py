"""download / fetch_first against a local HTTP server; safe_extract against hostile archives."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from cbir.data.download import DownloadError, download, fetch_first, safe_extract
from cbir.errors import CbirError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.ignore_range``."""

    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.requests.append((self.path, self.headers.get("Range")))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and not self.server.ignore_range:
            start = int(ranged.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        end = len(body)
        if self.server.cut_once:  # promise the whole body, send 100 kB, hang up
            self.server.cut_once, end = False, start + 100_000
        self.server.sent += end - start  # counted before writing: the client may return before write() does
        self.wfile.write(body[start:end])

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"/data.bin": PAYLOAD}
    httpd.requests, httpd.sent, httpd.ignore_range, httpd.cut_once = [], 0, False, False
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data.bin"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- download

def test_download_with_checksum(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    assert download(server.base + "/data.bin", dest, sha256=PAYLOAD_SHA, chunk=4096) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["data.bin"]
    # a second call with the pinned hash does not touch the network
    n_requests = len(server.requests)
    assert download(server.base + "/data.bin", dest, sha256=PAYLOAD_SHA) == PAYLOAD_SHA
    assert len(server.requests) == n_requests


def test_download_resumes_with_range(server, tmp_path):
    url = server.base + "/data.bin"
    dest = tmp_path / "data.bin"
    Path(str(dest) + ".part").write_bytes(PAYLOAD[:300_000])
    Path(str(dest) + ".part.url").write_text(url)
    assert download(url, dest, sha256=PAYLOAD_SHA) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=300000-")]
    assert server.sent == len(PAYLOAD) - 300_000
    assert _leftovers(tmp_path) == ["data.bin"]


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    server.ignore_range = True
    url = server.base + "/data.bin"
    dest = tmp_path / "data.bin"
    Path(str(dest) + ".part").write_bytes(b"x" * 1000)  # garbage that must not survive
    Path(str(dest) + ".part.url").write_text(url)
    assert download(url, dest) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.sent == len(PAYLOAD)


def test_download_does_not_resume_a_part_of_another_url(server, tmp_path):
    dest = tmp_path / "data.bin"
    Path(str(dest) + ".part").write_bytes(PAYLOAD[:1000])
    Path(str(dest) + ".part.url").write_text("http://elsewhere.invalid/data.bin")
    assert download(server.base + "/data.bin", dest) == PAYLOAD_SHA
    assert server.requests == [("/data.bin", None)]


def test_download_complete_part_gets_416_then_full_download(server, tmp_path):
    url = server.base + "/data.bin"
    dest = tmp_path / "data.bin"
    Path(str(dest) + ".part").write_bytes(PAYLOAD)
    Path(str(dest) + ".part.url").write_text(url)
    assert download(url, dest, sha256=PAYLOAD_SHA) == PAYLOAD_SHA
    assert [r[1] for r in server.requests] == [f"bytes={len(PAYLOAD)}-", None]


def test_wrong_checksum_keeps_nothing_and_shows_both_hashes(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(CbirError) as info:
        download(server.base + "/data.bin", dest, sha256=wrong)
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA in message and "\n" not in message
    assert _leftovers(tmp_path) == []


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(server.base + "/missing.bin", tmp_path / "x.bin")
    assert "HTTP 404" in str(info.value) and _leftovers(tmp_path) == []


def test_interrupted_download_is_resumed_by_the_next_call(server, tmp_path):
    server.cut_once = True
    url = server.base + "/data.bin"
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(url, dest, sha256=PAYLOAD_SHA, chunk=8192)
    assert Path(str(dest) + ".part").stat().st_size == 100_000 and not dest.exists()
    assert download(url, dest, sha256=PAYLOAD_SHA) == PAYLOAD_SHA
    assert server.requests[-1] == ("/data.bin", "bytes=100000-") and dest.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == ["data.bin"]


def test_unsupported_scheme(tmp_path):
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        download("ftp://example.org/a.tar", tmp_path / "a.tar")


def test_file_url(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    assert download(source.as_uri(), tmp_path / "copy.bin") == PAYLOAD_SHA


def test_fetch_first_tries_mirrors_in_order(server, tmp_path):
    urls = [_closed_port_url(), server.base + "/missing.bin", server.base + "/data.bin"]
    url, sha = fetch_first(urls, tmp_path / "data.bin", PAYLOAD_SHA)
    assert url == urls[2] and sha == PAYLOAD_SHA
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_fetch_first_reports_every_failure_in_one_line(server, tmp_path):
    urls = [_closed_port_url(), server.base + "/missing.bin", server.base + "/data.bin"]
    with pytest.raises(CbirError) as info:
        fetch_first(urls, tmp_path / "data.bin", "f" * 64)
    message = str(info.value)
    assert "\n" not in message and "any of 3 URL(s)" in message
    for url in urls:
        assert url in message
    assert "HTTP 404" in message and "sha256 mismatch" in message
    assert not (tmp_path / "data.bin").exists()


def test_fetch_first_without_urls(tmp_path):
    with pytest.raises(CbirError, match="no URL given"):
        fetch_first([], tmp_path / "a.tar")


# ---------------------------------------------------------------- archives

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"abc") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _assert_refused(archive: Path, dest: Path, pattern: str, **kwargs) -> None:
    with pytest.raises(CbirError, match=pattern) as info:
        safe_extract(archive, dest, **kwargs)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_safe_extract_good_tar_gz(tmp_path):
    archive = tmp_path / "good.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("top/a.txt", b"alpha"), ("top/sub/b.txt", b"beta")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = safe_extract(archive, tmp_path / "out")
    assert names == ["top/a.txt", "top/sub/b.txt"]
    assert (tmp_path / "out/top/a.txt").read_bytes() == b"alpha"
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"beta"
    assert _leftovers(tmp_path) == ["good.tar.gz", "out"]


def test_safe_extract_refuses_parent_path(tmp_path):
    archive = _tar(tmp_path / "evil.tar", [_file("ok.txt"), _file("../evil.txt")])
    _assert_refused(archive, tmp_path / "out", r"'\.\./evil\.txt' points outside")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_absolute_path(tmp_path):
    archive = _tar(tmp_path / "abs.tar", [_file("/tmp/evil.txt")])
    _assert_refused(archive, tmp_path / "out", r"'/tmp/evil\.txt' has an absolute")


@pytest.mark.parametrize("target", ["/etc/passwd", "inside.txt"])
def test_safe_extract_refuses_symlinks(tmp_path, target):
    archive = _tar(tmp_path / "link.tar", [_file("inside.txt"), _link("link", target, tarfile.SYMTYPE)])
    _assert_refused(archive, tmp_path / "out", "is a link")


def test_safe_extract_refuses_hardlinks(tmp_path):
    archive = _tar(tmp_path / "hard.tar", [_file("inside.txt"), _link("hard", "inside.txt", tarfile.LNKTYPE)])
    _assert_refused(archive, tmp_path / "out", "is a link")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_safe_extract_refuses_devices_and_fifos(tmp_path, kind):
    info = tarfile.TarInfo("dev")
    info.type = kind
    archive = _tar(tmp_path / "dev.tar", [(info, None)])
    _assert_refused(archive, tmp_path / "out", "device or FIFO")


def test_safe_extract_refuses_declared_size_over_limit(tmp_path):
    archive = _tar(tmp_path / "big.tar", [_file("a.bin", b"x" * 600), _file("b.bin", b"y" * 600)])
    _assert_refused(archive, tmp_path / "out", "declared size 1200 bytes > max_bytes 1000", max_bytes=1000)
    assert safe_extract(archive, tmp_path / "out", max_bytes=1200) == ["a.bin", "b.bin"]


def test_safe_extract_refuses_too_many_members(tmp_path):
    archive = _tar(tmp_path / "many.tar", [_file(f"{i}.txt") for i in range(5)])
    _assert_refused(archive, tmp_path / "out", "5 members > max_members 4", max_members=4)


def test_safe_extract_zip(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("d/a.txt", b"alpha")
    assert safe_extract(good, tmp_path / "out") == ["d/a.txt"]
    assert (tmp_path / "out/d/a.txt").read_bytes() == b"alpha"

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    _assert_refused(evil, tmp_path / "out2", "points outside")

    linked = tmp_path / "link.zip"
    with zipfile.ZipFile(linked, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    _assert_refused(linked, tmp_path / "out3", "is a link")


def test_safe_extract_replaces_existing_dest_only_on_success(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    evil = _tar(tmp_path / "evil.tar", [_file("../x")])
    with pytest.raises(CbirError):
        safe_extract(evil, dest)
    assert (dest / "old.txt").read_text() == "old"
    good = _tar(tmp_path / "good.tar", [_file("new.txt", b"new")])
    safe_extract(good, dest)
    assert sorted(os.listdir(dest)) == ["new.txt"]


def test_safe_extract_not_an_archive(tmp_path):
    path = tmp_path / "plain.tar"
    path.write_text("hello")
    with pytest.raises(CbirError, match="is not a tar or zip archive"):
        safe_extract(path, tmp_path / "out")


def test_safe_extract_damaged_archive(tmp_path):
    archive = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("a.bin")
        data = os.urandom(200_000)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(archive.read_bytes()[:50_000])
    with pytest.raises(CbirError, match="damaged or incomplete"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
