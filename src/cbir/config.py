"""Hydra composition of ``conf/`` into ``params.yaml`` (what DVC and every stage read).

Both directions are checked against the one schema (:mod:`cbir.schema`): composing refuses a
wrongly typed key before writing, and :func:`load_params` refuses a hand-edited or stale file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import yaml

from cbir.errors import CbirError
from cbir.fileio import write_text
from cbir.schema import validate
from cbir.settings import method_mapping

CONF_DIR = "conf"
PARAMS_FILE = "params.yaml"
HEADER = (
    "# Generated from conf/ by `python -m cbir params` (Hydra). Do not edit by hand:\n"
    "# change conf/ and regenerate, or swap a group with `dvc exp run -S group=option`.\n"
)


def compose_yaml(conf_dir: str | Path, overrides: list[str] | None = None) -> str:
    """Compose ``conf_dir/config.yaml`` with Hydra overrides into resolved YAML text.

    Same composition as DVC's Hydra integration (``dvc exp run -S``): compose, resolve, dump.
    """
    # only composing needs Hydra, not every stage
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir).resolve()
    try:
        with initialize_config_dir(str(conf_dir), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides or []))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CbirError(f"cannot compose {conf_dir}: {first}") from exc
    text = OmegaConf.to_yaml(cfg)
    validate(yaml.safe_load(text), source=f"composing {conf_dir}",
             advice="fix that key in conf/ or in the override, then compose again")
    return text


def write_params(root: str | Path, overrides: list[str] | None = None) -> Path:
    """Regenerate ``root/params.yaml`` from ``root/conf`` (atomically)."""
    root = Path(root)
    target = root / PARAMS_FILE
    write_text(target, HEADER + compose_yaml(root / CONF_DIR, overrides))
    return target


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where installed
    """YAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKey(f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class DuplicateKey(yaml.YAMLError):
    """A mapping in params.yaml names a key twice."""


def load_params(root: str | Path = ".") -> dict:
    """Read ``params.yaml``; a missing or malformed file is one clear error."""
    path = Path(root) / PARAMS_FILE
    if not path.exists():
        raise CbirError(f"{path} not found: run `python -m cbir params` to compose it from conf/")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except DuplicateKey as exc:
        raise CbirError(f"{path}: {exc}: remove one (or regenerate it with `python -m cbir params`)") from None
    except UnicodeDecodeError:
        raise CbirError(f"{path} is not UTF-8 text: regenerate it with `python -m cbir params`") from None
    except OSError as exc:
        raise CbirError(f"cannot read {path} ({exc.strerror or exc}): check it, or regenerate it with "
                        "`python -m cbir params`") from None
    except yaml.YAMLError as exc:
        raise CbirError(f"{path} is not valid YAML ({exc.__class__.__name__}): regenerate it with "
                        "`python -m cbir params`") from None
    if not isinstance(data, dict):
        raise CbirError(f"{path} does not hold a mapping: regenerate it with `python -m cbir params`")
    validate(data, source=str(path))
    return data


def section(params: Mapping, name: str) -> Mapping:
    """``params[name]`` as a mapping (missing = empty); anything else is one clear error."""
    value = params.get(name) or {}
    if not isinstance(value, Mapping):
        raise CbirError(f"params.yaml: '{name}' must be a mapping, got {value!r}: regenerate params.yaml "
                        "with `python -m cbir params`")
    return value


def dataset_names(params: Mapping) -> list[str]:
    """The experiment's datasets: the keys of ``datasets`` (or the one legacy ``dataset.name``)."""
    datasets = params.get("datasets")
    if isinstance(datasets, Mapping) and datasets:
        return list(datasets)
    legacy = params.get("dataset")
    return [legacy["name"]] if isinstance(legacy, Mapping) and legacy.get("name") else []


def select_dataset(params: Mapping, name: str | None = None) -> dict:
    """``params`` seen by one dataset's stages: ``dataset`` = ``datasets.<name>`` (its key is its name),
    with the dataset's own ``split`` over the shared one.  ``name=None`` picks the only dataset; with
    several, the error lists them (``--dataset NAME``)."""
    names = dataset_names(params)
    if not names:
        raise CbirError("params.yaml names no dataset (datasets: {NAME: ...}): pick one of conf/dataset/*.yaml "
                        "and regenerate params.yaml with `python -m cbir params`")
    if name is None:
        if len(names) > 1:
            raise CbirError(f"this experiment has {len(names)} datasets ({', '.join(names)}): "
                            "choose one with --dataset NAME")
        name = names[0]
    if name not in names:
        raise CbirError(f"dataset {name!r} is not in params.yaml (datasets: {', '.join(names)})")
    view = dict(params)
    datasets = params.get("datasets")
    if isinstance(datasets, Mapping) and datasets:
        entry = dict(datasets[name] or {})
        entry["name"] = name
        own_split = entry.pop("split", None) or {}
        if own_split:
            view["split"] = {**dict(section(params, "split")), **own_split}
        view["dataset"] = entry
    return view


def dataset_config(params: Mapping) -> dict:
    """The ``dataset`` section, with ``name`` and ``source`` required."""
    dataset = dict(section(params, "dataset"))
    if not dataset.get("name") or not dataset.get("source"):
        raise CbirError("params.yaml: dataset.name and dataset.source are required (pick one of conf/dataset/*.yaml)")
    return dataset


def method_config(params: Mapping, name: str) -> dict:
    """``params['methods'][name]`` as a dict (the typed view is :class:`cbir.settings.Method`)."""
    return dict(method_mapping(params, name))
