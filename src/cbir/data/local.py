"""Local files: scanning a tree for usable files, copying it, the installed Debian package versions,
and where the Tux Paint stamps live; shared by every dataset source (:mod:`cbir.data.sources`,
:mod:`cbir.data.benchmarks`, :mod:`cbir.data.neardup`)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cbir.errors import CbirError

TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"
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
    ``unreadable`` (no permission), and with ``empty_folders`` ``empty_class_folder`` (a top-level
    folder holding no usable file). A link to a file inside ``root`` is used (its target is read).
    Files whose extension is not in ``extensions`` are left out silently (a source's own filter).
    """
    root = Path(root)
    real_root = os.path.realpath(root)
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


def copy_tree(src: Path, dst: Path, files: list[str], scan: TreeScan | None = None) -> int:
    """Copy ``files`` (relative to ``src``) into ``dst`` keeping the tree; return the bytes copied.

    A file that cannot be copied (it vanished, or its path is too long here) is recorded in
    ``scan.skipped`` as ``unreadable`` when ``scan`` is given, and is an error otherwise.
    """
    total = 0
    for rel in files:
        target = dst / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, target)
        except OSError as exc:
            if scan is None:
                raise CbirError(f"cannot copy {display_name(str(src / rel))}: {exc.strerror or exc}; "
                                "check the file and its permissions") from None
            scan.skip(rel, "unreadable", f"cannot copy: {exc.strerror or exc}")
            continue
        total += target.stat().st_size
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
        raise CbirError(f"{key}={display_name(str(folder))} is a file, not a folder; {what}")
    if not folder.is_dir():
        raise CbirError(f"{key}={display_name(str(folder))} does not exist; {what}")
    return folder
