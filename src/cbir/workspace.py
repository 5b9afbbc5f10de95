"""``cbir clean``: remove what the current pipeline does not produce, the way back from an experiment.

After ``git checkout -- .`` and ``dvc checkout --force`` every tracked file is main's again, but an experiment
that added a dataset or a method leaves files neither restores: another dataset's ``data/``, ``metrics/`` and
``reports/`` folders, a removed backbone's weights, an added method's figures.  A file under ``data/``,
``models/``, ``metrics/`` or ``reports/`` is kept when git tracks it or when it lies inside a cached output of
the current ``dvc.yaml`` (which ``dvc checkout`` restores); every other file there is removed.  The download
cache (``data/downloads/``) and placeholders (``.gitkeep``) stay.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Iterable

from cbir.errors import CbirError

log = logging.getLogger("cbir")

#: the folders the pipeline writes into
TREES = ("data", "models", "metrics", "reports")
#: kept whatever the pipeline: the resumable download cache and the folders' placeholders
ALWAYS_KEPT = ("data/downloads/",)


def leftovers(files: Iterable[str], tracked: set[str], cached_outs: Iterable[str]) -> list[str]:
    """The files (paths relative to the root, ``/``-separated) neither tracked by git nor inside a cached
    output of the pipeline, in sorted order."""
    outs = tuple(o.rstrip("/") for o in cached_outs)
    kept = lambda f: (f in tracked or f.endswith("/.gitkeep") or f.startswith(ALWAYS_KEPT)  # noqa: E731
                      or any(f == o or f.startswith(o + "/") for o in outs))
    return sorted(f for f in files if not kept(f))


def _git_tracked(root: Path) -> set[str]:
    proc = subprocess.run(["git", "ls-files", "-z", *TREES], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CbirError(f"{root} is not a git checkout (git ls-files: {proc.stderr.strip()}): run clean in the "
                        "repository")
    return {p for p in proc.stdout.split("\0") if p}


def _cached_outs(root: Path) -> list[str]:
    from dvc.repo import Repo  # DVC itself resolves dvc.yaml: its foreach stages and params

    with Repo(str(root)) as repo:
        return [Path(out.fs_path).relative_to(root.resolve()).as_posix()
                for stage in repo.index.stages for out in stage.outs if out.use_cache]


def clean(root: str | Path, dry_run: bool = False) -> list[str]:
    """Remove (or with ``dry_run`` only list) the leftovers under ``root``; returns them."""
    root = Path(root).resolve()
    files = [p.relative_to(root).as_posix() for tree in TREES if (root / tree).is_dir()
             for p in (root / tree).rglob("*") if p.is_file() or p.is_symlink()]
    found = leftovers(files, _git_tracked(root), _cached_outs(root))
    if not dry_run:
        for name in found:
            (root / name).unlink()
        for tree in TREES:  # folders left empty, deepest first
            for folder in sorted((root / tree).rglob("*"), key=lambda p: -len(p.parts)) if (root / tree).is_dir() else []:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    for tree in TREES:
        n = sum(1 for f in found if f.startswith(tree + "/"))
        if n:
            log.info("clean: %s %d file(s) under %s/", "would remove" if dry_run else "removed", n, tree)
    return found
