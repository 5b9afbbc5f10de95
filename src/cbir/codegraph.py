"""What code a pipeline stage really runs: the static import closure of its modules, and its digest.

Every ``import``/``from ... import`` of a ``cbir`` module counts, at module level or inside a function (an
optional engine imported on use still runs when it is configured), with the packages' ``__init__.py`` that
Python executes on the way.  ``cli.py`` is the entry: its module-level imports run for every command, and a
stage's own module is ``cbir.stages.<stage>`` (:data:`cbir.stages.STAGES`, the table ``cli`` dispatches
through).  ``tests/test_stage_deps.py`` holds ``dvc.yaml``'s code deps to exactly these files; a stage that
reuses a method's earlier results keys them with :func:`code_digest`, so a code change redoes them.
"""

from __future__ import annotations

import ast
import hashlib
import re
from functools import lru_cache
from pathlib import Path

from cbir.stages import STAGES

#: the folder holding the ``cbir`` package (``src/``)
SRC = Path(__file__).resolve().parents[1]


#: a string naming a ``cbir`` callable as ``module:function``, as tables of built-ins do (imported on use)
TARGET = re.compile(r"^cbir(\.\w+)+:\w+$")


def module_file(name: str, src: Path = SRC) -> Path | None:
    """``src/cbir/a/b.py`` or ``src/cbir/a/b/__init__.py`` for ``cbir.a.b``; None when it is not a module."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package_inits(name: str, src: Path) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i]), src)}


def _imports(tree: ast.AST, package: str, top_level_only: bool = False) -> set[str]:
    """``cbir`` module names imported in ``tree`` (``package``: the module's package, for relative imports)."""
    nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] if top_level_only \
        else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # kept below only if a module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and TARGET.match(node.value):
            # a callable named in a table (``"cbir.features.handcrafted.hog:hog_descriptor"``), imported on use
            names.add(node.value.partition(":")[0])
    return {n for n in names if n == "cbir" or n.startswith("cbir.")}


@lru_cache(maxsize=None)
def direct_imports(name: str, top_level_only: bool = False, src: Path = SRC) -> frozenset[str]:
    """The ``cbir`` modules that module ``name`` imports (existing modules only, with their packages)."""
    path = module_file(name, src)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for candidate in _imports(tree, package, top_level_only):
        if module_file(candidate, src):
            found.add(candidate)
            found |= _package_inits(candidate, src)
    return frozenset(found)


#: modules whose function-level imports belong to other commands: only their module-level imports count
ENTRY = frozenset({"cbir.cli"})


def closure(names: set[str] | list[str], src: Path = SRC) -> set[str]:
    """Every ``cbir`` module that importing ``names`` can run (function-level imports included, but for the
    command line's :data:`ENTRY`, whose functions run other commands)."""
    seen: set[str] = set()
    todo = list(names)
    for name in list(names):
        todo += _package_inits(name, src)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(direct_imports(name, name in ENTRY, src) - seen)
    return seen


def stage_closure(stage: str, src: Path = SRC) -> set[str]:
    """The modules ``python -m cbir <stage>`` runs: ``__main__``, ``cli`` with its module-level imports, and
    the stage's module ``cbir.stages.<stage>`` with everything it imports."""
    if stage not in STAGES:
        raise ValueError(f"{stage!r} is not a pipeline stage ({', '.join(STAGES)})")
    return closure({"cbir.__main__", f"cbir.stages.{stage}"}, src)


def files(modules: set[str], src: Path = SRC) -> set[Path]:
    """The source files of ``modules``, relative to the repository root (``src/cbir/...``)."""
    return {module_file(m, src).relative_to(src.parent) for m in modules}


def code_digest(stage: str, src: Path = SRC) -> str:
    """sha256 over the path and bytes of every file ``stage`` runs: it changes exactly when that code does."""
    return modules_digest(stage_closure(stage, src), src)


def modules_digest(modules: set[str], src: Path = SRC) -> str:
    """sha256 over the path and bytes of the files of ``modules``."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        path = module_file(name, src)
        digest.update(f"{path.relative_to(src).as_posix()}\0".encode())  # the same wherever cbir is installed
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
