"""Resumable, checksummed downloads and archive extraction that cannot escape its folder.

``download`` streams to ``<dest>.part`` (the URL it belongs to is kept in
``<dest>.part.url``), resumes that file with an HTTP ``Range`` request, checks the
sha256 and only then renames the file onto ``dest``.

``safe_extract`` validates every member of a tar / tar.gz / tar.bz2 / tar.xz / zip
archive before anything is written: it refuses absolute paths, ``..`` components,
**every** symbolic or hard link (even one that would stay inside the folder: an
image collection never needs them, and refusing them all leaves no path
resolution to get wrong), device and FIFO members, more than ``max_members``
members and a declared total size over ``max_bytes``. Extraction goes into a
temporary folder that is renamed onto ``dest`` only when complete.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cbir.errors import CbirError
from cbir.fileio import atomic_dir, sha256_file

log = logging.getLogger("cbir")

DEFAULT_MAX_BYTES = 8 << 30  # 8 GiB
DEFAULT_MAX_MEMBERS = 500_000
_SCHEMES = ("http", "https", "file")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(CbirError):
    """A download that failed; ``url`` and ``reason`` let callers summarise several failures."""

    def __init__(self, url: str, reason: str, advice: str = ""):
        self.url = url
        self.reason = " ".join(str(reason).split())
        super().__init__(f"download failed: {url}: {self.reason}" + (f"; {advice}" if advice else ""))


def _part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.url")


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            path.unlink()


def _forget_empty(part: Path, marker: Path) -> None:
    """After a failure, drop the partial file and its URL marker unless some bytes are worth resuming."""
    if not part.exists() or part.stat().st_size == 0:
        _remove(part, marker)


def _resume_offset(part: Path, marker: Path, url: str) -> int:
    """Bytes already fetched for ``url`` (0 when the partial file belongs to another URL)."""
    if part.exists() and marker.exists() and marker.read_text(encoding="utf-8") == url:
        return part.stat().st_size
    _remove(part, marker)
    return 0


def _stream(url: str, part: Path, offset: int, timeout: float, chunk: int) -> hashlib._Hash:
    """Fetch ``url`` into ``part`` (appending from ``offset`` when the server honours Range); return the digest."""
    headers = {"User-Agent": "cbir-pipeline"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = response.getcode() or 200
        appending = False
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            appending = bool(match) and int(match.group(1)) == offset
            if not appending:
                raise DownloadError(url, f"server answered Range {offset}- with Content-Range "
                                         f"{response.headers.get('Content-Range')!r}")
        digest = hashlib.sha256()
        if appending:
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(chunk), b""):
                    digest.update(block)
            log.info("resuming %s at byte %d", url, offset)
        else:
            offset = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        received = 0
        with open(part, "ab" if appending else "wb") as handle, tqdm(
            total=(expected + offset) if expected is not None else None, initial=offset, unit="B",
            unit_scale=True, desc=Path(urllib.parse.urlparse(url).path).name or url, disable=None, leave=False,
        ) as bar:
            for block in iter(lambda: response.read(chunk), b""):
                handle.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        if expected is not None and received != expected:
            raise DownloadError(url, f"connection closed after {received} of {expected} bytes",
                                f"run again to resume from {part}")
    return digest


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60,
             chunk: int = 1 << 20) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``sha256`` if given; return the sha256.

    An existing ``dest`` whose hash matches ``sha256`` is kept without any network access.
    On a checksum mismatch nothing is kept and the error shows both hashes.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise DownloadError(url, f"unsupported URL scheme {scheme!r}", f"use one of {', '.join(_SCHEMES)}")
    want = sha256.lower().strip() if sha256 else None
    if want and dest.is_file() and sha256_file(dest) == want:
        log.info("%s already present with the pinned sha256, not downloading", dest)
        return want
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, marker = _part_paths(dest)
    offset = _resume_offset(part, marker, url)
    marker.write_text(url, encoding="utf-8")
    try:
        try:
            digest = _stream(url, part, offset, timeout, chunk)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:
                raise
            log.info("server refused to resume %s (HTTP 416), downloading it again", url)
            _remove(part)
            digest = _stream(url, part, 0, timeout, chunk)
    except DownloadError:
        _forget_empty(part, marker)
        raise
    except urllib.error.HTTPError as exc:
        _forget_empty(part, marker)
        raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        _forget_empty(part, marker)
        raise DownloadError(url, exc.reason, "check the URL and the network") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        _forget_empty(part, marker)
        raise DownloadError(url, f"{type(exc).__name__}: {exc}",
                            f"run again to resume from {part}" if part.exists() else "") from None
    actual = digest.hexdigest()
    if want and actual != want:
        _remove(part, marker)
        raise DownloadError(url, f"sha256 mismatch: expected {want}, got {actual}",
                            "the file was deleted; check the URL or the pinned sha256")
    os.replace(part, dest)
    _remove(marker)
    log.info("downloaded %s -> %s (sha256 %s)", url, dest, actual)
    return actual


def fetch_first(urls: list[str], dest: str | os.PathLike, sha256: str | None = None,
                timeout: float = 60) -> tuple[str, str]:
    """Try ``urls`` in order; return ``(url, sha256)`` of the first that works.

    When all fail, one :class:`DownloadError`-style message lists every URL with its reason.
    """
    urls = [str(u) for u in (urls or [])]
    if not urls:
        raise CbirError(f"no URL given to download {Path(dest).name}")
    failures = []
    for url in urls:
        try:
            return url, download(url, dest, sha256=sha256, timeout=timeout)
        except DownloadError as exc:
            log.warning("mirror failed: %s: %s", url, exc.reason)
            failures.append(f"{url} ({exc.reason})")
    raise CbirError(f"could not download {Path(dest).name} from any of {len(urls)} URL(s): " + "; ".join(failures))


# ---------------------------------------------------------------- archives

def _check_name(archive: Path, name: str) -> None:
    """Refuse empty, absolute, drive-letter and ``..`` member names."""
    posix = name.replace("\\", "/")
    if not posix.strip("/") or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise CbirError(f"unsafe archive {archive}: member {name!r} has an absolute or empty path; refusing to extract")
    if ".." in PurePosixPath(posix).parts:
        raise CbirError(f"unsafe archive {archive}: member {name!r} points outside the target folder (..); "
                        "refusing to extract")


def _check_totals(archive: Path, n_members: int, total: int, max_members: int, max_bytes: int) -> None:
    if n_members > max_members:
        raise CbirError(f"unsafe archive {archive}: {n_members} members > max_members {max_members}; "
                        "refusing to extract (raise the limit if the archive is trusted)")
    if total > max_bytes:
        raise CbirError(f"unsafe archive {archive}: declared size {total} bytes > max_bytes {max_bytes}; "
                        "refusing to extract (raise the limit if the archive is trusted)")


def _check_tar(archive: Path, members: list[tarfile.TarInfo], max_members: int, max_bytes: int) -> None:
    for member in members:
        _check_name(archive, member.name)
        if member.issym() or member.islnk():
            raise CbirError(f"unsafe archive {archive}: member {member.name!r} is a link (to {member.linkname!r}); "
                            "links are refused")
        if member.isdev():
            raise CbirError(f"unsafe archive {archive}: member {member.name!r} is a device or FIFO; refusing to extract")
        if not (member.isreg() or member.isdir()):
            raise CbirError(f"unsafe archive {archive}: member {member.name!r} has unsupported type {member.type!r}")
    _check_totals(archive, len(members), sum(m.size for m in members if m.isreg()), max_members, max_bytes)


def _check_zip(archive: Path, infos: list[zipfile.ZipInfo], max_members: int, max_bytes: int) -> None:
    for info in infos:
        _check_name(archive, info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise CbirError(f"unsafe archive {archive}: member {info.filename!r} is a link; links are refused")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise CbirError(f"unsafe archive {archive}: member {info.filename!r} is a device or FIFO; "
                            "refusing to extract")
    _check_totals(archive, len(infos), sum(i.file_size for i in infos), max_members, max_bytes)


def archive_kind(archive: str | os.PathLike) -> str:
    """``"tar"`` or ``"zip"``, sniffed from the content (not the extension)."""
    archive = Path(archive)
    if not archive.is_file():
        raise CbirError(f"archive not found: {archive}")
    if tarfile.is_tarfile(archive):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    raise CbirError(f"{archive} is not a tar or zip archive; give a .tar, .tar.gz or .zip file")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> list[str]:
    """Extract ``archive`` into ``dest`` (replacing it) after validating every member; return the member names."""
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    try:
        if kind == "tar":
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                _check_tar(archive, members, max_members, max_bytes)
                with atomic_dir(dest) as tmp:
                    tar.extractall(tmp, members=members, filter="data")
                return [m.name for m in members]
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_zip(archive, infos, max_members, max_bytes)
            with atomic_dir(dest) as tmp:
                for info in infos:
                    zf.extract(info, tmp)
            return [i.filename for i in infos]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CbirError(f"cannot extract {archive}: {type(exc).__name__}: {exc}; the archive is damaged or "
                        "incomplete, download it again") from None
