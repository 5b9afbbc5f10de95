"""Atomic writes and checksums: no stage ever leaves a half-written output, or debris.

Temporary files live in ``<root>/.cbir-tmp/`` (``root``: the nearest folder above the target holding
``dvc.yaml``, ``.dvc`` or ``params.yaml``), outside every DVC output and ignored by git and DVC, on
the target's file system so that the final rename is atomic; outside a project (the cache, a
``query --out`` file elsewhere) they sit beside the target.  Every entry is named after the process
that owns it, so :func:`clean_stale_temp` (run at the start of every command) removes what a killed
process left and completes a :func:`atomic_group` that was committed but not yet renamed.

A write that fails for a reason the user can fix (full disk, read-only or forbidden folder) is a
:class:`~cbir.errors.CbirError` naming the target and what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from cbir.errors import CbirError

#: the temporary folder at the project root (git-ignored and in .dvcignore)
TMP_DIR = ".cbir-tmp"
#: what marks a project root
ROOT_MARKERS = ("dvc.yaml", ".dvc", "params.yaml")
#: the commit marker of an :func:`atomic_group`: once it exists the group is replaced, even after a kill
COMMIT = "COMMIT.json"

#: errors of a write the user can fix, and what to do about each
WRITE_HINTS = {
    errno.ENOSPC: "free space on that disk and rerun",
    errno.EDQUOT: "free space within your disk quota and rerun",
    errno.EROFS: "the file system is read-only: run from a writable checkout",
    errno.EACCES: "no permission to write there: fix the folder's permissions or run from a writable checkout",
    errno.EPERM: "no permission to write there: fix the folder's permissions or run from a writable checkout",
    errno.EFBIG: "the file is too large for that file system",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EEXIST: "a file stands where that folder should be: move it away",
    errno.ENOENT: "a folder on that path is missing and cannot be created",
}


def cache_dir() -> Path:
    """Where downloads and converted models are kept across runs (``$CBIR_CACHE`` or ``~/.cache/cbir``)."""
    if os.environ.get("CBIR_CACHE"):
        return Path(os.environ["CBIR_CACHE"])
    try:
        return Path.home() / ".cache" / "cbir"
    except (RuntimeError, KeyError):
        raise CbirError("no home folder to keep the cache in: set CBIR_CACHE to a writable folder") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- write errors


class WriteError(CbirError, OSError):
    """A write that failed for a reason the user can fix; still an ``OSError`` (with the original
    ``errno``, ``strerror`` and ``filename``), so code that treats a failed write as optional (a cache), or
    words it itself, keeps doing so; ``str()`` is the one line."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def write_error(target: str | os.PathLike, exc: OSError) -> WriteError:
    """One line for a failed write of ``target``: what happened, where, and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = WRITE_HINTS.get(exc.errno, "check that folder and rerun")
    error = WriteError(f"cannot write {target}: {reason}: {hint}")
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, exc.filename
    return error


def is_write_error(exc: BaseException, *inside: Path) -> bool:
    """Whether ``exc`` is a user-fixable failure to write (a full disk, a read-only or forbidden folder),
    either path-less (a failed ``write()``) or on a path within ``inside``."""
    if not isinstance(exc, OSError) or exc.errno not in WRITE_HINTS or exc.errno == errno.ENOENT:
        return False
    if exc.filename is None:
        return True
    name = os.path.abspath(os.fsdecode(exc.filename))
    return any(name == str(p) or name.startswith(str(p) + os.sep) for p in inside)


@contextlib.contextmanager
def _writes_to(target: Path, *tmp: Path) -> Iterator[None]:
    """Turn a user-fixable write failure on ``target`` or ``tmp`` into one :class:`CbirError`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        if is_write_error(exc, target.absolute(), *(t.absolute() for t in tmp)):
            raise write_error(target, exc) from None
        raise


def _mkdir(folder: Path, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc) from None


# --------------------------------------------------------------------------- where temporary files go


def project_root(path: str | os.PathLike) -> Path | None:
    """The nearest folder at or above ``path`` that holds ``dvc.yaml``, ``.dvc`` or ``params.yaml``."""
    here = Path(os.path.abspath(path))
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return None


def temp_home(target: Path) -> Path:
    """The folder for ``target``'s temporary files: ``<root>/.cbir-tmp`` when it is on the target's file
    system (so the rename is atomic), else the target's own folder (``target.parent`` must exist)."""
    root = project_root(target.parent)
    if root is not None:
        home = root / TMP_DIR
        try:
            home.mkdir(exist_ok=True)
            if os.stat(home).st_dev == os.stat(target.parent).st_dev:
                return home
        except OSError:
            pass
    return target.parent


def _owner(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_temp(root: str | os.PathLike) -> list[str]:
    """Remove what dead processes left in ``<root>/.cbir-tmp``, first completing any :func:`atomic_group`
    they had committed; entries of live processes are kept.  Returns the names handled."""
    home = Path(root) / TMP_DIR
    if not home.is_dir():
        return []
    handled = []
    for entry in sorted(home.iterdir()):
        pid = _owner(entry.name)
        if pid is not None and process_alive(pid):
            continue
        if (entry / COMMIT).is_file():
            _finish_group(entry)
        _remove(entry)
        handled.append(entry.name)
    return handled


# --------------------------------------------------------------------------- atomic files and folders


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path for ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched; a full disk or a
    folder that cannot be written is one :class:`CbirError` naming ``target``.  ``suffix`` defaults to
    the target's own suffix, so libraries that pick a format from the extension (numpy, matplotlib)
    still do the right thing.
    """
    target = Path(target)
    _mkdir(target.parent, target)
    home = temp_home(target)
    with _writes_to(target, home):
        fd, tmp = tempfile.mkstemp(prefix=f"{os.getpid()}-{target.name}.",
                                   suffix=suffix if suffix is not None else target.suffix, dir=home)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _writes_to(target, tmp_path):
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
            os.replace(tmp_path, target)
    finally:
        _remove(tmp_path)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: Path, target: Path, trash: Path) -> None:
    """Put folder ``new`` at ``target``: atomically swapped with the old one where the system can
    (the old one ends at ``new`` and is removed), else the old one is moved to ``trash`` first."""
    if target.exists() and target.is_dir() and not target.is_symlink():
        if not _renameat2_exchange(new, target):
            os.replace(target, trash)
            os.replace(new, target)
        _remove(new)
        _remove(trash)
        return
    if target.exists() or target.is_symlink():
        _remove(target)
    os.replace(new, target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder for ``target``; swap it in on success (the old folder is removed)."""
    target = Path(target)
    _mkdir(target.parent, target)
    home = temp_home(target)
    with _writes_to(target, home):
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{target.name}.", dir=home))
    trash = tmp.with_name(tmp.name + ".old")
    try:
        with _writes_to(target, tmp):
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())
            replace_dir(tmp, target, trash)
    finally:
        _remove(tmp)
        _remove(trash)


def _finish_group(folder: Path) -> None:
    """Rename a committed group's files that are still in ``folder`` onto their targets."""
    record = json.loads((folder / COMMIT).read_text(encoding="utf-8"))
    base = folder.parent.parent
    for name, target in record["files"]:
        if (folder / name).exists():
            os.replace(folder / name, base / target)


def _keep_old(folder: Path, targets: list[Path]) -> list[Path | None]:
    """Hard links to the targets that exist now (``None`` where none does), inside the group's ``folder``:
    what :func:`_swap_in` puts back if a rename fails. No data is copied; a failure here changes nothing."""
    backups: list[Path | None] = []
    for i, target in enumerate(targets):
        backup = folder / f"old-{i}"
        try:
            os.link(target, backup, follow_symlinks=False)
        except FileNotFoundError:
            backup = None
        backups.append(backup)
    return backups


def _swap_in(folder: Path, files: list, backups: list[Path | None]) -> None:
    """Rename a committed group's files onto their targets; when one rename fails (a full disk), put back
    the old files of those already renamed (and remove new ones that had no old file), drop the commit
    marker, and re-raise: the targets stay the old group, never half of each."""
    base = folder.parent.parent
    done: list[int] = []
    try:
        for i, (name, target) in enumerate(files):
            os.replace(folder / name, base / target)
            done.append(i)
    except OSError:
        with contextlib.suppress(OSError):
            (folder / COMMIT).unlink()
        for i in reversed(done):
            with contextlib.suppress(OSError):
                if backups[i] is not None:
                    os.replace(backups[i], base / files[i][1])
                else:
                    os.unlink(base / files[i][1])
        raise


@contextlib.contextmanager
def atomic_group(targets: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield one temporary path per target, all in one temporary folder; on success replace every
    target, together: a commit marker is written first, so a process killed between the renames has
    them completed by the next command (:func:`clean_stale_temp`), and one killed before it changes none; a
    rename that fails (a full disk) puts the old files back (:func:`_swap_in`) before the error is raised."""
    targets = [Path(t) for t in targets]
    for target in targets:
        _mkdir(target.parent, target)
    home = temp_home(targets[0])
    what = targets[0]  # errors name the group by its first (main) file: one short line
    with _writes_to(what, home):
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-group.", dir=home))
    names = [f"{i}-{t.name}" for i, t in enumerate(targets)]
    try:
        with _writes_to(what, folder):
            yield [folder / name for name in names]
            base = folder.parent.parent
            files = []
            for name, target in zip(names, targets):
                os.chmod(folder / name, 0o666 & ~_umask())
                absolute = Path(os.path.abspath(target))
                files.append([name, os.path.relpath(absolute, base) if home.name == TMP_DIR else str(absolute)])
            backups = _keep_old(folder, [base / target for _, target in files])
            (folder / (COMMIT + ".tmp")).write_text(json.dumps({"files": files}), encoding="utf-8")
            os.replace(folder / (COMMIT + ".tmp"), folder / COMMIT)  # the commit point
            _swap_in(folder, files, backups)
    finally:
        _remove(folder)


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, data: object) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> object:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
