"""Import a researcher's own callable named in a config: ``module:function`` or ``package.module.function``
(Hydra's ``_target_`` convention)."""

from __future__ import annotations

import importlib
from typing import Callable

from cbir.errors import CbirError


def resolve_callable(target: str, what: str = "callable") -> Callable:
    """The object named by ``target``; a name that cannot be imported is one clear error."""
    if not isinstance(target, str) or not target.strip():
        raise CbirError(f"{what} must be named as module:function or package.module.function, got {target!r}")
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise CbirError(f"{what} {target!r} must be named as module:function or package.module.function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CbirError(f"{what} {target!r}: cannot import module {module_name!r} ({exc}); run from the "
                        "repository root, or install the package that holds it") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise CbirError(f"{what} {target!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise CbirError(f"{what} {target!r} is not callable")
    return obj
