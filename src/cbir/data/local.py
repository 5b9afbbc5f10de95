"""Local files: scanning a tree for usable files, copying it within a byte budget, the installed Debian
package versions; shared by every dataset source (:mod:`cbir.data.sources`, :mod:`cbir.data.benchmarks`,
:mod:`cbir.data.neardup`).

Copying is bounded: a source folder on a virtual file system (``/proc``, ``/sys``: recognised by the file
system's type, not its name), one holding the repository, or one inside the repository's outputs is
refused (:func:`check_source_folder`); the bytes to copy are summed from ``stat`` and checked against
``download.max_bytes`` and the free disk space (``download.min_free_bytes`` kept free) before copying, and
every file is read up to the size ``stat`` gave and no further (a pseudo-file that reports size 0 but
reads gigabytes is refused, not copied) (:func:`copy_tree`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cbir.errors import CbirError
from cbir.fileio import TMP_DIR, is_write_error, project_root
from cbir.settings import mapping, need

TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
VECTOR_EXTENSIONS = frozenset({".svg", ".svgz"})


def display_name(name: str) -> str:
    """``name`` as printable UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _special_kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special_file"


@dataclass
class TreeScan:
    """What :func:`scan_tree` found: regular files to use and every entry skipped, with its reason."""

    files: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, rel: str, reason: str, detail: str) -> None:
        self.skipped.append({"path": display_name(rel), "reason": reason, "detail": detail})


def scan_tree(root: str | os.PathLike, extensions: frozenset[str] | None = None,
              empty_folders: bool = False) -> TreeScan:
    """Walk ``root`` without ever leaving it; sorted relative POSIX paths of the regular files, plus skips.

    Skip reasons: ``hidden`` (a name starting with a dot), ``dangling_link``, ``link_loop``,
    ``outside_dataset`` (a link whose target lies outside ``root``), ``linked_folder`` (a link to a
    folder inside ``root``: its files are found there), ``device``, ``fifo``, ``socket``,
    ``unreadable`` (no permission), ``virtual_filesystem`` (a folder that is a mount of ``proc``, ``sysfs``,
    ...: :data:`VIRTUAL_FILESYSTEMS`), and with ``empty_folders`` ``empty_class_folder`` (a top-level
    folder holding no usable file). A link to a file inside ``root`` is used (its target is read).
    Files whose extension is not in ``extensions`` are left out silently (a source's own filter).
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    root_dev = os.stat(real_root).st_dev
    scan = TreeScan()

    def inside(target: str) -> bool:
        return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)

    def walk(folder: Path, prefix: str) -> int:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            scan.skip(prefix.rstrip("/") or ".", "unreadable", exc.strerror or str(exc))
            return 0
        used = 0
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                scan.skip(rel, "hidden", "hidden file or folder (name starts with a dot)")
                continue
            try:
                info = os.lstat(entry.path)
                if stat.S_ISLNK(info.st_mode):
                    target = os.path.realpath(entry.path)
                    if not inside(target):
                        scan.skip(rel, "outside_dataset", "link to a path outside the dataset folder")
                        continue
                    info = os.stat(entry.path)
                    if stat.S_ISDIR(info.st_mode):
                        scan.skip(rel, "linked_folder", "link to a folder inside the dataset (its files count there)")
                        continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    scan.skip(rel, "link_loop", "symbolic link loop")
                elif exc.errno == errno.ENOENT:
                    scan.skip(rel, "dangling_link", "symbolic link to nothing")
                else:
                    scan.skip(rel, "unreadable", exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                kind = virtual_filesystem(entry.path) if info.st_dev != root_dev else None
                if kind is not None:
                    scan.skip(rel, "virtual_filesystem", f"a mount of the virtual file system {kind}")
                    continue
                found = walk(Path(entry.path), rel + "/")
                if empty_folders and not prefix and not found:
                    scan.skip(rel, "empty_class_folder", "class folder holds no file")
                used += found
            elif stat.S_ISREG(info.st_mode):
                if extensions is not None and Path(entry.name).suffix.lower() not in extensions:
                    continue
                if not os.access(entry.path, os.R_OK):
                    scan.skip(rel, "unreadable", "permission denied")
                    continue
                scan.files.append(rel)
                used += 1
            else:
                scan.skip(rel, _special_kind(info.st_mode), "not a regular file")
        return used

    walk(root, "")
    scan.files.sort()
    return scan


def list_files(root: str | os.PathLike, extensions: frozenset[str] | None = None) -> list[str]:
    """Sorted relative POSIX paths of the usable regular files under ``root`` (see :func:`scan_tree`)."""
    return scan_tree(root, extensions).files


#: ``statfs`` magic numbers of virtual file systems whose files are not data (``linux/magic.h``)
VIRTUAL_FILESYSTEMS = {
    0x9FA0: "proc", 0x62656572: "sysfs", 0x1CD1: "devpts", 0x64626720: "debugfs", 0x74726163: "tracefs",
    0x73636673: "securityfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2", 0xCAFE4A11: "bpf",
    0x62656570: "configfs", 0x6165676C: "pstore", 0xDE5E81E4: "efivarfs", 0xF97CFF8C: "selinuxfs",
    0x42494E4D: "binfmt_misc", 0x19800202: "mqueue", 0x65735546: "fusectl", 0x958458F6: "hugetlbfs",
    0x6E736673: "nsfs",
}
#: the repository's folders that hold outputs (and its own bookkeeping): never a source
OUTPUT_FOLDERS = ("data", "models", "metrics", "reports", TMP_DIR, ".dvc", ".git")
_COPY_CHUNK = 1 << 20


def shown(path: str | os.PathLike) -> str:
    """A path for a one-line message: undecodable bytes and control characters (a newline) escaped."""
    text = display_name(os.fspath(path))
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def filesystem_type(path: str | os.PathLike) -> int | None:
    """The ``statfs`` magic number of the file system holding ``path`` (``None`` where it cannot be read)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buffer = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field (a long)
        if libc.statfs(os.fsencode(path), buffer) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def virtual_filesystem(path: str | os.PathLike) -> str | None:
    """The name of the virtual file system (``proc``, ``sysfs``, ...) ``path`` lies on, else ``None``."""
    return VIRTUAL_FILESYSTEMS.get(filesystem_type(path) or 0)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_source_folder(folder: str | os.PathLike, target: str | os.PathLike, key: str) -> None:
    """Refuse, in one line naming ``key``, a source folder that is no dataset: one on a virtual file system,
    one that holds the repository ``target`` is in (copying it would copy the repository into itself), or one
    inside the repository's outputs (:data:`OUTPUT_FOLDERS`)."""
    real = os.path.realpath(folder)
    name = f"{key}={shown(folder)}"
    kind = virtual_filesystem(real)
    if kind is not None:
        raise CbirError(f"{name} lies on the virtual file system {kind}, whose files are not images: "
                        f"set {key} to a folder of image files")
    repo = project_root(Path(target).parent)
    if repo is None:
        return
    repo = Path(os.path.realpath(repo))
    if _within(str(repo), real):
        raise CbirError(f"{name} holds the repository {shown(repo)}: copying it would copy the repository "
                        f"into itself; set {key} to the folder of the images only")
    for sub in OUTPUT_FOLDERS:
        if _within(real, str(repo / sub)):
            raise CbirError(f"{name} lies inside the repository's {sub}/ (outputs the pipeline rewrites): "
                            f"move the images out of it and set {key} there")


@dataclass(frozen=True)
class CopyLimits:
    """What a source may copy: ``max_bytes`` in all, leaving ``min_free_bytes`` free on the disk."""

    max_bytes: int
    min_free_bytes: int

    @classmethod
    def from_params(cls, params: Mapping) -> "CopyLimits":
        download = mapping(params, "download")
        return cls(max_bytes=int(need(download, "max_bytes", "download")),
                   min_free_bytes=int(need(download, "min_free_bytes", "download")))


def human_bytes(n: int) -> str:
    """``n`` bytes in words (``1.5 GB``; decimal units, as disks are sold)."""
    for unit, size in (("TB", 10 ** 12), ("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _over_budget(what: str, found: int, limits: CopyLimits, free: int | None) -> str | None:
    """Why copying ``found`` bytes breaks ``limits`` (``free``: bytes free on the target disk), else ``None``."""
    if found > limits.max_bytes:
        return (f"{what} holds {found} bytes ({human_bytes(found)}) to copy, over download.max_bytes="
                f"{limits.max_bytes} ({human_bytes(limits.max_bytes)}): raise download.max_bytes "
                "(conf/download/default.yaml, or -S download.max_bytes=N) or use a smaller folder")
    if free is not None and free - found < limits.min_free_bytes:
        return (f"{what} holds {found} bytes ({human_bytes(found)}) to copy, but the disk has {free} bytes free "
                f"and download.min_free_bytes={limits.min_free_bytes} must stay free: free space on that "
                "disk, lower download.min_free_bytes, or use a smaller folder")
    return None


def copy_bounded(src: Path, target: Path, size: int, what: str) -> int:
    """Copy ``src`` to ``target``, reading no more than the ``size`` bytes ``stat`` gave; returns the bytes.

    A file that turns out to hold more (a pseudo-file of size 0 that reads on and on) is one error naming it;
    one that is no longer a regular file, or shrank, is an ``OSError`` (the caller skips or refuses it).
    """
    with open(src, "rb") as reader:
        info = os.fstat(reader.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file", str(src))
        with open(target, "wb") as writer:
            left = size
            while left > 0:
                block = reader.read(min(_COPY_CHUNK, left))
                if not block:
                    raise OSError(errno.EIO, f"shrank while copied (stat said {size} bytes)", str(src))
                writer.write(block)
                left -= len(block)
        if reader.read(1):
            raise CbirError(f"{what}: {shown(src)} reads more bytes than the {size} its size says (a pseudo-file, "
                            "or a file still being written): copy only regular image files and try again")
    return size


def copy_tree(src: Path, dst: Path, files: list[str], scan: TreeScan | None = None,
              limits: CopyLimits | None = None, what: str | None = None) -> int:
    """Copy ``files`` (relative to ``src``) into ``dst`` keeping the tree; return the bytes copied.

    ``limits``: the sizes ``stat`` reports are summed and checked against them (and the free space of
    ``dst``'s disk) before the first byte is copied; each file is then read up to its reported size only
    (:func:`copy_bounded`), so the total copied never exceeds the checked sum. ``what`` names the source in errors. A file that
    cannot be copied (it vanished, or its path is too long here) is recorded in ``scan.skipped`` as
    ``unreadable`` when ``scan`` is given, and is an error otherwise.
    """
    what = what or shown(src)
    sizes = {}
    for rel in files:
        try:
            sizes[rel] = os.stat(src / rel).st_size
        except OSError:
            sizes[rel] = 0  # vanished: reported when copied
    if limits is not None:
        try:
            free = shutil.disk_usage(dst).free
        except OSError:
            free = None
        problem = _over_budget(what, sum(sizes.values()), limits, free)
        if problem:
            raise CbirError(problem)
    total = 0
    for rel in files:
        target = dst / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            total += copy_bounded(src / rel, target, sizes[rel], what)
        except OSError as exc:
            if is_write_error(exc, dst.absolute()):
                raise  # a full disk: the caller's atomic folder words it, naming its target
            if scan is None:
                raise CbirError(f"cannot copy {shown(src / rel)}: {exc.strerror or exc}; "
                                "check the file and its permissions") from None
            target.unlink(missing_ok=True)
            scan.skip(rel, "unreadable", f"cannot copy: {exc.strerror or exc}")
            continue
    return total


def debian_version(package: str) -> str | None:
    """Installed version of a Debian package, or ``None`` when unknown."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def existing_folder(value, key: str, what: str) -> Path:
    """``value`` as an existing folder; a missing path or a file is one clear error naming ``key``."""
    folder = Path(str(value)).expanduser()
    if folder.is_file():
        raise CbirError(f"{key}={shown(folder)} is a file, not a folder; {what}")
    if not folder.is_dir():
        raise CbirError(f"{key}={shown(folder)} does not exist; {what}")
    return folder
