"""The typed view of ``params.yaml``: frozen dataclasses built once from the validated mapping.

``params.yaml`` is always composed from ``conf/`` (:mod:`cbir.config`), so every key ``conf/`` sets is
present: a builder here reads ``mapping[key]``, never ``mapping.get(key, default)``, and a missing key
is one line (a hand-edited or stale file).  Keys whose absence means "not used" (a method's
``whiten``, ``scales``, ``pooling_params``, ``image_size``, ``batch_size``; ``extract.ray``'s
``address`` and ``object_store_memory``) are ``None`` when absent.  The schema (:mod:`cbir.schema`)
has already checked every value's type and range; each stage passes a builder only its own section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cbir.errors import CbirError

REGENERATE = "regenerate params.yaml with `python -m cbir params` (conf/ sets every key)"


def need(section: Mapping, key: str, where: str = "") -> Any:
    """``section[key]`` (``where``: the section's own path); a missing key is one line naming it."""
    if key not in section:
        raise CbirError(f"params.yaml: {where + '.' if where else ''}{key} is missing: {REGENERATE}")
    return section[key]


def mapping(section: Mapping, key: str, where: str = "") -> Mapping:
    """``section[key]``, which must be a mapping; missing or anything else is one line."""
    value = need(section, key, where)
    if not isinstance(value, Mapping):
        raise CbirError(f"params.yaml: {where + '.' if where else ''}{key} must be a mapping, got {value!r}: "
                        f"{REGENERATE}")
    return value


def statistics_settings(params: Mapping) -> dict[str, int]:
    """What evaluate and feedback resample with: ``evaluation.{n_bootstrap, n_permutations, seed}`` and the
    search's ``retrieval.block_size``."""
    evaluation, retrieval = mapping(params, "evaluation"), mapping(params, "retrieval")
    stats = {key: int(need(evaluation, key, "evaluation")) for key in ("n_bootstrap", "n_permutations", "seed")}
    stats["block_size"] = int(need(retrieval, "block_size", "retrieval"))
    return stats


@dataclass(frozen=True)
class Calibration:
    """The int8 calibration sample: ``size`` database images drawn with ``seed``."""

    size: int
    seed: int


@dataclass(frozen=True)
class Extract:
    """``extract``: the engine, workers, runtime, precision and compile policy of the extract stage."""

    engine: str
    num_workers: int | None
    runtime: str
    precision: str
    compile: str | bool
    calibration: Calibration
    ray: Mapping

    @classmethod
    def from_params(cls, params: Mapping) -> "Extract":
        cfg = mapping(params, "extract")
        calibration = mapping(cfg, "calibration", "extract")
        return cls(engine=need(cfg, "engine", "extract"), num_workers=need(cfg, "num_workers", "extract"),
                   runtime=need(cfg, "runtime", "extract"), precision=need(cfg, "precision", "extract"),
                   compile=need(cfg, "compile", "extract"),
                   calibration=Calibration(int(need(calibration, "size", "extract.calibration")),
                                           int(need(calibration, "seed", "extract.calibration"))),
                   ray=dict(mapping(cfg, "ray", "extract")))


@dataclass(frozen=True)
class Backbone:
    """``backbones.<name>``: the architecture and its default input size and batch size (the rest is
    the weights stage's: :mod:`cbir.features.weights` reads the mapping itself)."""

    name: str
    arch: str
    image_size: int
    batch_size: int

    @classmethod
    def from_params(cls, params: Mapping, name: str) -> "Backbone":
        backbones = mapping(params, "backbones")
        if name not in backbones:
            raise CbirError(f"backbone {name!r} is used by a method but not defined under backbones: in params.yaml")
        cfg, where = backbones[name], f"backbones.{name}"
        return cls(name=name, arch=need(cfg, "arch", where), image_size=int(need(cfg, "image_size", where)),
                   batch_size=int(need(cfg, "batch_size", where)))


#: a method's keys for each kind (beyond ``kind``, ``requires`` and the optional ones)
KIND_KEYS = {"deep": ("pooling",), "handcrafted": ("descriptor",), "precomputed": ("file",)}


def method_mapping(params: Mapping, name: str) -> Mapping:
    """``params['methods'][name]``; an unknown name lists the known ones."""
    methods = params.get("methods") or {}
    if not isinstance(methods, Mapping):
        raise CbirError(f"params.yaml: methods must be a mapping of name -> method config, got {methods!r}: "
                        f"{REGENERATE}")
    if name not in methods:
        known = ", ".join(sorted(methods)) or "none"
        raise CbirError(f"method {name!r} is not in params.yaml (known: {known})")
    cfg = methods[name]
    if not isinstance(cfg, Mapping):
        raise CbirError(f"params.yaml: methods.{name} must be a mapping (kind, ...), got {cfg!r}")
    return cfg


@dataclass(frozen=True)
class Method:
    """``methods.<name>``: what one method computes.  ``descriptor`` (handcrafted) and ``trunk`` (a deep
    method's own factory) are Hydra nodes: ``_target_`` with its arguments beside it."""

    name: str
    kind: str
    raw: Mapping
    backbone: str | None = None
    trunk: Mapping | None = None
    pooling: str | None = None
    pooling_params: Mapping | None = None
    scales: tuple[float, ...] | None = None
    image_size: int | None = None
    batch_size: int | None = None
    descriptor: Mapping | None = None
    file: str | None = None
    whiten: Mapping | bool | None = None

    @classmethod
    def from_params(cls, params: Mapping, name: str) -> "Method":
        return cls.from_mapping(name, method_mapping(params, name))

    @classmethod
    def from_mapping(cls, name: str, cfg: Mapping) -> "Method":
        where = f"methods.{name}"
        kind = need(cfg, "kind", where)
        if kind not in KIND_KEYS:
            raise CbirError(f"method {name} has kind {kind!r}: use one of {', '.join(KIND_KEYS)}")
        if kind == "deep" and not (cfg.get("backbone") or cfg.get("trunk")):
            raise CbirError(f"{where}: a deep method needs backbone: <name under backbones> or "
                            "trunk: {_target_: module.function}")
        if kind == "precomputed" and not cfg.get("file"):
            raise CbirError(f"method {name} has kind precomputed but no file: set {where}.file=/path/x.npy")
        for key in KIND_KEYS[kind]:
            need(cfg, key, where)
        scales = cfg.get("scales")
        return cls(name=name, kind=kind, raw=dict(cfg), backbone=cfg.get("backbone"), trunk=cfg.get("trunk"),
                   pooling=cfg.get("pooling"), pooling_params=cfg.get("pooling_params"),
                   scales=None if scales is None else tuple(float(s) for s in scales),
                   image_size=cfg.get("image_size"), batch_size=cfg.get("batch_size"),
                   descriptor=cfg.get("descriptor"), file=cfg.get("file"), whiten=cfg.get("whiten"))


@dataclass(frozen=True)
class MethodRun:
    """Everything building one method reads: its own config, its backbone's (a deep method on a configured
    backbone), the extract settings and the device (a deep method; a traditional one runs on the CPU), and
    the decoding pixel budget."""

    method: Method
    backbone: Backbone | None
    extract: Extract | None
    device: str
    max_pixels: int

    @classmethod
    def from_params(cls, params: Mapping, name: str, device: str | None = None) -> "MethodRun":
        method = Method.from_params(params, name)
        backbone = Backbone.from_params(params, method.backbone) if method.kind == "deep" and method.backbone \
            and not method.trunk else None
        return cls(method=method, backbone=backbone,
                   extract=Extract.from_params(params) if method.kind == "deep" else None,
                   device=(device or need(params, "device")) if method.kind == "deep" else "cpu",
                   max_pixels=max_pixels(params))


def max_pixels(params: Mapping) -> int:
    """The decoding pixel budget (``curate.max_pixels``) every method decodes images under."""
    return int(need(mapping(params, "curate"), "max_pixels", "curate"))
