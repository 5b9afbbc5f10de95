"""The typed view of params.yaml (cbir.settings), Hydra's `_target_` nodes, and defaults only in conf/."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from methods_helpers import with_defaults

from cbir import schema
from cbir.config import load_params
from cbir.errors import CbirError
from cbir.features.handcrafted import build_descriptor, descriptor_node
from cbir.features.handcrafted.colour_histogram import hsv_histogram
from cbir.features.methods import build_method
from cbir.settings import Extract, Method, MethodRun

#: values that are not params though a key of theirs shares a schema key's name: module -> the variable
#: (the root of the ``.get`` chain) -> what it holds
NOT_PARAMS = {
    "search/rerank.py": {"config": "a method's rerank mapping, free-form in the schema: n and alpha are "
                                   "its own (feedback.alpha is the schema's alpha)"},
    "report/plots_page.py": {"meta": "a wheel's METADATA (its license field)"},
    "report/readme.py": {"entry": "a metrics.json entry (its n_queries count)"},
    "report/benchmark_tables.py": {"first": "a metrics.json benchmark entry (its per-family n_queries)"},
    "figures/judged.py": {"spec": "a curated judgements.json (crop_queries: written for revisitop layouts only)"},
}


def schema_keys(rules=schema.SCHEMA) -> set[str]:
    keys = set()
    for key, rule in rules.items():
        keys.add(key)
        if isinstance(rule, tuple):
            keys |= schema_keys(rule[1])
        elif isinstance(rule, dict):
            keys |= schema_keys(rule)
    return keys


def chain_root(node: ast.AST) -> str | None:
    """The variable a ``.get`` chain starts from: ``x`` of ``(x.get("a") or {}).get("b", 0)``."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.BoolOp):
            node = node.values[0]
        else:
            return None


def reads_with_a_default(source: str, keys: set[str]) -> list[tuple[int, str, str | None]]:
    """``(line, key, chain root)`` of every ``<x>.get("<key>", <default>)`` with ``key`` in ``keys``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys):
            found.append((node.lineno, node.args[0].value, chain_root(node.func.value)))
    return sorted(found)


def test_the_default_finder_sees_each_form_and_its_receiver():
    source = ('a = cfg.get("alpha", 1.0)\nb = cfg.get("alpha")\nc = (p.get("serve") or {}).get(\n    "thumb_size", 160)\n'
              'd = cfg.get(key, 1)\ne = cfg["x"].get("beta", 0)\nf = cfg.get("nope", 2)\n')
    assert reads_with_a_default(source, {"alpha", "beta", "thumb_size", "serve"}) == [
        (1, "alpha", "cfg"), (3, "thumb_size", "p"), (6, "beta", "cfg")]


def test_no_module_reads_a_schema_key_with_a_default_of_its_own(repo_root):
    """conf/ holds every default: `.get("<schema key>", <default>)` on params would be a second one."""
    src = repo_root / "src" / "cbir"
    keys = schema_keys()
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        for number, key, root in reads_with_a_default(path.read_text(encoding="utf-8"), keys):
            if root not in NOT_PARAMS.get(rel, {}):
                found.append(f"{rel}:{number}: .get({key!r}, ...) on {root}")
    assert found == [], "a default outside conf/:\n" + "\n".join(found)
    assert all((src / rel).is_file() for rel in NOT_PARAMS), "an allow-listed module is gone: drop it"
    for rel, roots in NOT_PARAMS.items():  # each exemption still names a read it excuses
        seen = {root for _, _, root in reads_with_a_default((src / rel).read_text(encoding="utf-8"), keys)}
        assert set(roots) <= seen, f"{rel}: {sorted(set(roots) - seen)} no longer read a schema key's name"


#: ``<schema key read> or <value>`` that is not a second default: module -> key -> why
NOT_DEFAULTS = {
    "report/compare.py": {"name": "a `dvc exp show` node's name, not params"},
    "report/markdown.py": {"protocol": "curation.json's split, '' where a report predates it",
                           "device": "a features sidecar's device, shown as '–' where it has none"},
    "data/sources.py": {"sha256": "an unpinned archive (null in conf/dataset/corel1k.yaml) read as none"},
    "data/curate.py": {"queries_per_class": "null outside the holdout protocol (conf/split/)"},
    "app/engine.py": {"dataset": "the served dataset's name, a field of the loaded database, not params"},
}


def _reads_key(node: ast.AST, keys: set[str]) -> str | None:
    """The schema key ``node`` reads (``x.get("k")``, ``x["k"]``, ``need(x, "k")``, ``int(...)`` of one)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
            and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys:
        return node.args[0].value
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in keys:
        return node.slice.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "need" \
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in keys:
        return node.args[1].value
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:  # int(x.get("k")) and the like
        return _reads_key(node.args[0], keys)
    return None


def code_defaults(source: str, keys: set[str]) -> list[tuple[int, str, str]]:
    """``(line, key, form)`` of every default in code for a schema key: ``<read> or <constant or CONSTANT>``,
    a dataclass field of that name with a default other than ``None``, a ``*DEFAULT*`` dict naming it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            key, fallback = _reads_key(node.values[0], keys), node.values[-1]
            if key and ((isinstance(fallback, ast.Constant) and fallback.value is not None)
                        or (isinstance(fallback, ast.Name) and fallback.id.isupper())):
                found.append((node.lineno, key, "or"))
        elif isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            for field in node.body:
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) \
                        and field.target.id in keys and field.value is not None \
                        and not (isinstance(field.value, ast.Constant) and field.value.value is None):
                    found.append((field.lineno, field.target.id, "dataclass field"))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and "DEFAULT" in t.id for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            for k in node.value.keys:
                if isinstance(k, ast.Constant) and k.value in keys:
                    found.append((node.lineno, k.value, "default dict"))
    return sorted(found)


def test_the_code_default_finder_sees_or_fields_and_dicts():
    source = ('k = int(retrieval.get("k") or DEFAULT_K)\nb = cfg.get("block_size") or 1024\n'
              'c = cfg.get("alpha") or {}\n@dataclass\nclass S:\n    alpha: float = 1.0\n    seed: int | None = None\n'
              'DEFAULT_CURATE = {"min_side": 32}\n')
    assert code_defaults(source, {"k", "block_size", "alpha", "seed", "min_side"}) == [
        (1, "k", "or"), (2, "block_size", "or"), (6, "alpha", "dataclass field"), (8, "min_side", "default dict")]


def test_no_default_in_code_by_or_dataclass_field_or_default_dict(repo_root):
    """conf/ holds every default: no `x.get("k") or 10`, no `alpha: float = 1.0`, no merged default dicts."""
    src = repo_root / "src" / "cbir"
    keys = schema_keys()
    found = [f"{path.relative_to(src).as_posix()}:{line}: {form} default for {key!r}"
             for path in sorted(src.rglob("*.py"))
             for line, key, form in code_defaults(path.read_text(encoding="utf-8"), keys)
             if key not in NOT_DEFAULTS.get(path.relative_to(src).as_posix(), {})]
    assert found == [], "a default outside conf/:\n" + "\n".join(found)


def test_the_typed_view_of_the_committed_params(repo_root):
    params = load_params(repo_root)
    run = MethodRun.from_params(params, "mobilenet_v2-gap")
    assert (run.method.kind, run.method.backbone, run.method.pooling) == ("deep", "mobilenet_v2", "gap")
    assert (run.backbone.arch, run.backbone.image_size, run.backbone.batch_size) == ("mobilenet_v2", 224, 8)
    assert (run.extract.engine, run.extract.runtime, run.extract.precision) == ("local", "auto", "fp32")
    assert run.extract.calibration.size == 300 and run.max_pixels == params["curate"]["max_pixels"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.method.pooling = "gem"
    hsv = Method.from_params(params, "hsv_hist")
    assert hsv.descriptor == {"_target_": "cbir.features.handcrafted.colour_histogram.hsv_histogram",
                              "bins": [8, 4, 4]}
    assert MethodRun.from_params(params, "hsv_hist").extract is None  # a traditional method reads no extract


@pytest.mark.parametrize("drop, needle", [
    (("extract", "runtime"), "params.yaml: extract.runtime is missing"),
    (("extract", "calibration"), "params.yaml: extract.calibration is missing"),
    (("curate", "max_pixels"), "params.yaml: curate.max_pixels is missing"),
    (("backbones", "mobilenet_v2", "image_size"), "params.yaml: backbones.mobilenet_v2.image_size is missing"),
    (("methods", "mobilenet_v2-gap", "pooling"), "params.yaml: methods.mobilenet_v2-gap.pooling is missing"),
])
def test_a_missing_key_is_one_line_naming_it(repo_root, drop, needle):
    params = load_params(repo_root)
    section = params
    for key in drop[:-1]:
        section = section[key]
    del section[drop[-1]]
    with pytest.raises(CbirError) as info:
        MethodRun.from_params(params, "mobilenet_v2-gap")
    assert str(info.value).startswith(needle) and "python -m cbir params" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method, needle", [
    ({"kind": "handcrafted", "descriptor": "hsv_histogram", "params": {"bins": [8, 4, 4]}},
     "methods.m uses the old form (descriptor: hsv_histogram with params:): write descriptor: "
     "{_target_: package.module.hsv_histogram, <argument>: <value>}"),
    ({"kind": "handcrafted", "descriptor": "fusion", "params": {"members": {}}},
     "write descriptor: {_target_: cbir.features.handcrafted.fusion, <argument>: <value>}"),
    ({"kind": "handcrafted", "_target_": "examples.my_descriptor.descriptor:colour_layout", "params": {"grid": 4}},
     "write descriptor: {_target_: examples.my_descriptor.descriptor.colour_layout, <argument>: <value>}"),
    ({"kind": "handcrafted", "_target_": "mine.fn"},
     "methods.m uses the old form (_target_ beside kind): move it into descriptor: {_target_: mine.fn"),
    ({"kind": "deep", "_target_": "mine.trunk", "pooling": "gap"},
     "move it into trunk: {_target_: mine.trunk, <argument>: <value>}"),
    ({"kind": "handcrafted", "descriptor": {"_target_": "mine:fn"}},
     "methods.m.descriptor={'_target_': 'mine:fn'}: expected a mapping {_target_: package.module.function"),
])
def test_an_old_form_method_is_one_line_saying_how_to_write_it(tmp_path, method, needle):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"methods": {"m": method}}))
    with pytest.raises(CbirError) as info:
        load_params(tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_an_old_form_override_is_refused_when_composing(repo_root):
    from cbir.config import compose_yaml

    with pytest.raises(CbirError, match=r"methods\.hsv_hist uses the old form"):
        compose_yaml(repo_root / "conf", ["+methods.hsv_hist.params={bins: [4, 4, 4]}"])


def test_a_descriptor_node_is_instantiated_with_its_arguments_beside_target():
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    node = {"_target_": "cbir.features.handcrafted.colour_histogram.hsv_histogram", "bins": [4, 2, 2]}
    descriptor = build_descriptor(node)
    assert descriptor.name == "hsv_histogram" and descriptor.max_side == 256
    np.testing.assert_array_equal(descriptor(image), hsv_histogram(image, bins=[4, 2, 2]))
    assert descriptor(image).shape == (16,)


@pytest.mark.parametrize("node, needle", [
    ({"_target_": "no_such_package.mod.fn"}, "cannot import module 'no_such_package.mod'"),
    ({"_target_": "cbir.features.handcrafted.colour_histogram.nothing"}, "has no 'nothing'"),
    (descriptor_node("hsv_histogram", {"bins": [4, 2, 2], "colour": 3}), "unknown parameter(s) ['colour']"),
    ({"_target_": "examples.my_descriptor.descriptor.colour_layout", "cells": 2}, "unknown parameter(s) ['cells']"),
    ("hsv_histogram", "must be a mapping {_target_: package.module.function"),
])
def test_a_bad_descriptor_node_is_one_line(node, needle):
    with pytest.raises(CbirError) as info:
        build_descriptor(node)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_trunk_factory_with_arguments_builds_a_deep_method():
    """`trunk: {_target_: torch.nn.Conv2d, ...}`: a 3 -> 8 channel feature map, GAP-pooled to 8 dims."""
    from PIL import Image

    params = with_defaults({"device": "cpu", "extract": {"runtime": "torch", "compile": False}, "methods": {"conv": {
        "kind": "deep", "trunk": {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 8,
                                  "kernel_size": 3}, "pooling": "gap", "image_size": 32, "batch_size": 2}}})
    method = build_method("conv", params, ".")
    assert method.dim == 8 and method.image_size == 32 and method.batch_size == 2
    rows = method.embed([Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 200))])
    assert rows.shape == (2, 8) and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    params["methods"]["conv"]["trunk"]["bad_argument"] = 1
    with pytest.raises(CbirError) as info:
        build_method("conv", params, ".")
    assert "methods.conv.trunk: 'torch.nn.Conv2d' failed (" in str(info.value) and "\n" not in str(info.value)
    del params["methods"]["conv"]["image_size"]
    with pytest.raises(CbirError, match=r"methods\.conv\.image_size is needed for a trunk factory"):
        build_method("conv", params, ".")


def test_every_extract_setting_is_read_from_conf(repo_root):
    conf = yaml.safe_load((repo_root / "conf" / "config.yaml").read_text())["extract"]
    typed = Extract.from_params({"extract": conf})
    assert dataclasses.asdict(typed) == {**{k: v for k, v in conf.items() if k not in ("calibration", "ray")},
                                         "calibration": conf["calibration"], "ray": conf["ray"]}
    assert Path(repo_root / "conf" / "method_base" / "deep.yaml").is_file()


def test_the_plug_in_example_composes_in_the_new_form(repo_root):
    from cbir.config import compose_yaml

    searchpath = (repo_root / "examples" / "my_descriptor" / "conf").as_uri()
    cfg = yaml.safe_load(compose_yaml(repo_root / "conf", [f"hydra.searchpath=[{searchpath}]",
                                                           "+method@methods.colour_layout=colour_layout"]))
    method = cfg["methods"]["colour_layout"]
    assert method["descriptor"] == {"_target_": "examples.my_descriptor.descriptor.colour_layout", "grid": 4}
    assert "params" not in method and "_target_" not in method
    descriptor = build_descriptor(method["descriptor"])
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :4] = 255  # the top-left quarter white: one cell of the 4 x 4 grid... of 2 x 2 pixels each
    vector = descriptor(image)
    assert vector.shape == (48,) and vector[:3].tolist() == [1.0, 1.0, 1.0] and vector[6:9].tolist() == [0.0] * 3
