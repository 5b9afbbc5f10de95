"""Import a researcher's own callable named in a config (``module:function`` or ``package.module.function``),
instantiate a Hydra node (``_target_`` with its arguments beside it), and what such a callable must be."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Protocol

import numpy as np

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


class Descriptor(Protocol):
    """What a descriptor ``_target_`` must be: ``fn(image, **arguments) -> vector``, ``image`` an RGB
    ``uint8`` array ``[H, W, 3]``, the vector's length depending only on the arguments."""

    def __call__(self, image: np.ndarray, /, **arguments: Any) -> np.ndarray: ...


class TrunkFactory(Protocol):
    """What a deep method's ``trunk._target_`` must be: ``factory(**arguments) -> torch.nn.Module`` mapping
    ``[B, 3, H, W]`` to a feature map ``[B, C, h, w]``."""

    def __call__(self, **arguments: Any) -> Any: ...


def instantiate_node(node: Mapping, what: str, partial: bool = False) -> Any:
    """``hydra.utils.instantiate`` of a node ``{_target_: package.module.function, <argument>: <value>}``
    (``partial``: a ``functools.partial`` to call later); every failure is one clear line."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not isinstance(target, str) or ":" in target:
        raise CbirError(f"{what} must be a mapping {{_target_: package.module.function, <argument>: <value>}} "
                        f"(Hydra's form, dots only), got {node!r}")
    resolve_callable(target, f"{what}._target_")  # an unimportable name: the one line of resolve_callable
    from hydra.utils import instantiate  # imported only where a node is built

    try:
        return instantiate(dict(node), _partial_=partial, _convert_="all")
    except Exception as exc:  # instantiate wraps every failure (arguments, the call itself)
        cause = exc.__cause__ or exc
        first = " ".join(str(cause).split()) if str(cause).strip() else type(cause).__name__
        raise CbirError(f"{what}: {target!r} failed ({first}): fix its arguments in params.yaml (conf/method/)") \
            from None
