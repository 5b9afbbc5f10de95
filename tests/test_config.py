"""params.yaml is exactly the Hydra composition of conf/, and every config group composes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cbir.config import compose_yaml, load_params, method_config, write_params
from cbir.errors import CbirError
from cbir.features.handcrafted import FUSION_TARGET, builtin_name, descriptor_module


def test_params_yaml_matches_conf(repo_root):
    committed = yaml.safe_load((repo_root / "params.yaml").read_text())
    composed = yaml.safe_load(compose_yaml(repo_root / "conf"))
    assert committed == composed, "params.yaml drifted from conf/: run `python -m cbir params`"


def _options(repo_root: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (repo_root / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "split", "retrieval", "evaluation", "figures", "curate", "experiment"])
def test_every_option_of_every_group_composes(repo_root, group):
    default = yaml.safe_load(compose_yaml(repo_root / "conf"))
    for option in _options(repo_root, group):
        override = f"+dataset@datasets.{option}={option}" if group == "dataset" else f"{group}={option}"
        cfg = yaml.safe_load(compose_yaml(repo_root / "conf", [] if option in default["datasets"] and
                                          group == "dataset" else [override]))
        assert cfg["datasets"] and "dataset" not in cfg
        if group == "dataset":
            assert option in cfg["datasets"]
        assert cfg["methods"], f"{group}={option} leaves no method"
        for name, method in cfg["methods"].items():
            assert method["kind"] in {"deep", "handcrafted"}, name
            if method["kind"] == "deep":
                assert method["backbone"] in cfg["backbones"], f"{name} uses an undefined backbone"
                assert method["requires"] == {"code": "src/cbir/features/cnn", "data": f"models/{method['backbone']}.pt"}


def test_every_method_file_composes_and_names_its_dependency(repo_root):
    """Adding a method is adding a config file: each one composes into an experiment with `+method@...`;
    a deep method's requires comes from conf/method_base/deep.yaml, its weights by interpolation."""
    backbones = set(_options(repo_root, "backbone"))
    paper = yaml.safe_load(compose_yaml(repo_root / "conf", ["experiment=paper"]))
    for option in _options(repo_root, "method"):
        method = yaml.safe_load((repo_root / "conf" / "method" / f"{option}.yaml").read_text())
        method.pop("defaults", None)  # a Hydra defaults list (e.g. the method's search settings), not a key
        overrides = ["experiment=paper"]
        if option not in paper["methods"]:
            overrides.append(f"+method@methods.{option}={option}")
        if method["kind"] == "deep":
            assert method["backbone"] in backbones, f"{option}: no conf/backbone/{method['backbone']}.yaml"
            assert "requires" not in method, f"{option}: requires comes from conf/method_base/deep.yaml"
            method["requires"] = {"code": "src/cbir/features/cnn", "data": f"models/{method['backbone']}.pt"}
            if method["backbone"] not in paper["backbones"]:
                overrides.append(f"+backbone@backbones.{method['backbone']}={method['backbone']}")
        elif method["descriptor"]["_target_"] == FUSION_TARGET:
            assert method["requires"]["code"] == "src/cbir/features/handcrafted"
        else:  # the descriptor's own module, so editing it reruns only its stages
            name = builtin_name(method["descriptor"]["_target_"])
            assert method["requires"]["code"] == descriptor_module(name)
            assert (repo_root / method["requires"]["code"]).is_file()
        cfg = yaml.safe_load(compose_yaml(repo_root / "conf", overrides))
        assert cfg["methods"][option] == method
        # its own search settings entry (empty by default): retrieve of this method depends on it alone
        assert option in cfg["retrieval"]["per_method"], f"{option}: no retrieval.per_method.{option} default"


def test_a_deep_methods_weights_follow_its_backbone_by_interpolation(repo_root):
    cfg = yaml.safe_load(compose_yaml(repo_root / "conf", ["methods.mobilenet_v2-gap.backbone=efficientnet_lite0"]))
    assert cfg["methods"]["mobilenet_v2-gap"]["requires"] == {"code": "src/cbir/features/cnn",
                                                              "data": "models/efficientnet_lite0.pt"}
    committed = load_params(repo_root)
    deep = {n: m for n, m in committed["methods"].items() if m["kind"] == "deep"}
    assert deep and all(m["requires"]["data"] == f"models/{m['backbone']}.pt" for m in deep.values())


def test_default_experiment_has_deep_and_traditional_methods(repo_root):
    cfg = yaml.safe_load(compose_yaml(repo_root / "conf"))
    kinds = [m["kind"] for m in cfg["methods"].values()]
    assert "mobilenet_v2-gap" in cfg["methods"] and kinds.count("handcrafted") >= 4
    assert cfg["evaluation"]["baseline"] in cfg["methods"]


def test_paper_experiment_is_the_papers_setup(repo_root):
    cfg = yaml.safe_load(compose_yaml(repo_root / "conf", ["experiment=paper"]))
    assert list(cfg["datasets"]) == ["corel1k"]
    assert cfg["backbones"]["resnet50"]["arch"] == "resnet50"
    assert cfg["backbones"]["resnet50"]["weights"] == "IMAGENET1K_V1"
    # the paper's row, the baseline of the paired tests
    assert cfg["methods"]["resnet50-gap"] == {"kind": "deep", "backbone": "resnet50", "pooling": "gap",
                                              "requires": {"code": "src/cbir/features/cnn",
                                                           "data": "models/resnet50.pt"}}
    assert cfg["evaluation"]["baseline"] == "resnet50-gap"
    assert cfg["retrieval"]["k"] == 10
    assert cfg["split"]["protocol"] == "holdout" and cfg["datasets"]["corel1k"]["split"]["queries_per_class"] == 10
    # beside it: a ResNet50 ablation, every traditional baseline and the offline backbones
    resnet = [m for m in cfg["methods"] if m.startswith("resnet50")]
    traditional = [m for m, c in cfg["methods"].items() if c["kind"] == "handcrafted"]
    assert len(cfg["methods"]) >= 12 and len(resnet) >= 4 and len(traditional) >= 6
    assert {"mobilenet_v2-gap", "efficientnet_lite0-gem", "fusion", "gabor"} <= set(cfg["methods"])
    loo = yaml.safe_load(compose_yaml(repo_root / "conf", ["experiment=paper_loo"]))
    assert loo["datasets"]["corel1k"]["split"]["protocol"] == "leave_one_out" and loo["methods"] == cfg["methods"]


def test_write_params_roundtrip(tmp_path, repo_root):
    import shutil

    shutil.copytree(repo_root / "conf", tmp_path / "conf")
    write_params(tmp_path, ["+dataset@datasets.synthetic=synthetic", "split=leave_one_out"])
    params = load_params(tmp_path)
    assert params["datasets"]["synthetic"]["source"] == "synthetic"
    assert params["split"]["protocol"] == "leave_one_out"


def test_bad_override_is_one_clear_error(repo_root):
    with pytest.raises(CbirError, match="cannot compose"):
        compose_yaml(repo_root / "conf", ["+dataset@datasets.x=no_such_dataset"])


def test_missing_params_file(tmp_path):
    with pytest.raises(CbirError, match="python -m cbir params"):
        load_params(tmp_path)


def test_unknown_method(repo_root):
    with pytest.raises(CbirError, match="not in params.yaml"):
        method_config(load_params(repo_root), "nope")


def test_every_faiss_option_can_be_set_without_a_plus(repo_root):
    """All retrieval.faiss keys are in conf/, null = the library default, so `-S retrieval.faiss.X=...` works."""
    from cbir.search.prepared import FAISS_PARAM_KEYS
    from cbir.search.prepared import faiss_options as _faiss_params

    base = yaml.safe_load(compose_yaml(repo_root / "conf"))["retrieval"]
    assert set(base["faiss"]) == set(FAISS_PARAM_KEYS)
    assert _faiss_params(base) == {"gpu": False}
    tuned = yaml.safe_load(compose_yaml(repo_root / "conf", ["retrieval.index=ivf", "retrieval.faiss.nprobe=32"]))
    assert _faiss_params(tuned["retrieval"]) == {"nprobe": 32, "gpu": False}


# ---------------------------------------------------------------- the one schema (cbir.schema)

@pytest.mark.parametrize("override, key, expected", [
    ("retrieval.block_size=0", "retrieval.block_size=0", "an integer from 1"),
    ("retrieval.k=-3", "retrieval.k=-3", "an integer from 1"),
    ("split.queries_per_class=abc", "split.queries_per_class='abc'", "an integer >= 1 or null"),
    ("split.query_fraction=1.5", "split.query_fraction=1.5", "a number > 0 and <= 1 or null"),
    ("curate.max_pixels=abc", "curate.max_pixels='abc'", "an integer from 1"),
    ("curate.dedupe=maybe", "curate.dedupe='maybe'", "true or false"),
    ("evaluation.ks=[0,5]", "evaluation.ks=[0, 5]", "a list of at least 1 distinct values"),
    ("evaluation.ks=[5,5]", "evaluation.ks=[5, 5]", "distinct"),
    ("evaluation.n_bootstrap=-1", "evaluation.n_bootstrap=-1", "an integer from 0"),
    ("serve.max_concurrent=0", "serve.max_concurrent=0", "an integer from 1 to 64"),
    ("split.protocol=random", "split.protocol='random'", "one of holdout, leave_one_out, predefined"),
    ("device=gpu", "device='gpu'", "auto, cpu, cuda"),
])
def test_composing_a_wrongly_typed_value_is_one_line_naming_key_value_and_expectation(repo_root, override, key,
                                                                                    expected):
    with pytest.raises(CbirError) as info:
        compose_yaml(repo_root / "conf", [override])
    message = str(info.value)
    assert "\n" not in message and f"{key}: expected" in message and expected in message


def write_raw(tmp_path: Path, text: str | bytes) -> Path:
    target = tmp_path / "params.yaml"
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path


@pytest.mark.parametrize("text, needle", [
    ("dataset: 5\n", "dataset=5: expected a mapping"),
    ("split: hello\n", "split='hello': expected a mapping"),
    ("retrieval: hello\n", "retrieval='hello': expected a mapping"),
    ("methods: hello\n", "methods='hello': expected a mapping of name -> settings"),
    ("methods: {m: 3}\n", "methods.m=3: expected a mapping of settings"),
    ("methods: {m: {kind: magic}}\n", "methods.m.kind='magic': expected one of deep, handcrafted, precomputed"),
    ("backbones: {b: {image_size: big}}\n", "backbones.b.image_size='big'"),
    ("retrieval: {blocksize: 4}\n", "retrieval.blocksize is not a known key (known here: block_size, faiss"),
    ("dataset: {name: ../etc, source: folder}\n", "dataset.name='../etc'"),
    ("evaluation: {ks: [1, 5.5]}\n", "evaluation.ks=[1, 5.5]"),
    ("retrieval: {k: true}\n", "retrieval.k=True: expected an integer"),
    ("[1, 2]\n", "does not hold a mapping"),
    ("a: [\n", "is not valid YAML"),
    (b"\xff\xfe\x00binary\x89PNG\r\n", "is not UTF-8 text"),
])
def test_loading_a_bad_params_file_is_one_clear_line(tmp_path, text, needle):
    with pytest.raises(CbirError) as info:
        load_params(write_raw(tmp_path, text))
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert "python -m cbir params" in str(info.value)


def test_keys_other_parts_add_are_accepted_and_params_stay_free_form(tmp_path):
    params = {
        "extract": {"runtime": "openvino", "precision": "bf16", "compile": "auto", "engine": "local"},
        "figures": {"methods": ["a", "b"], "width": 7.5, "font_size": None},
        "backbones": {"b": {"arch": "resnet50", "source": "file", "file": "x.pt", "allow_unverified": True,
                            "weights": None}},
        "methods": {"mine": {"kind": "handcrafted", "descriptor": {"_target_": "pkg.mod.fn", "anything": [1, {"x": 2}]},
                             "search": {"rerank": "aqe"}, "requires": {"code": "src/x.py", "data": None}},
                    "pre": {"kind": "precomputed", "file": "features.npy"}},
        "serve": {"max_query_pixels": 1000, "max_concurrent": 1, "queue_timeout_s": 0, "request_timeout_s": 2.5},
    }
    loaded = load_params(write_raw(tmp_path, yaml.safe_dump(params)))
    assert loaded == params


def test_unknown_method_with_a_non_mapping_methods_lists_no_letters():
    with pytest.raises(CbirError) as info:
        method_config({"methods": "hello"}, "x")
    assert "e, h, l" not in str(info.value) and "must be a mapping" in str(info.value)
