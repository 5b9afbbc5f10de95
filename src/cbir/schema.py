"""The one schema of ``params.yaml``: every key's type and range, checked in one place.

:func:`validate` runs when ``conf/`` is composed (:func:`cbir.config.write_params`) and whenever a
stage reads ``params.yaml`` (:func:`cbir.config.load_params`), so no value reaches numpy, pandas
or a stage unchecked. Sections and keys may be missing (stages apply the defaults in ``conf/``);
a key that is present must have the right type and range, and an unknown key is refused (a typo
would otherwise be ignored silently). Adding a key is one line in :data:`SCHEMA`, :data:`METHOD`
or :data:`BACKBONE`. ``params`` / ``pooling_params`` / ``search`` / ``rerank`` / ``whiten`` inside a
method are free-form mappings (checked by the code that reads them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cbir.errors import CbirError

FIX = "fix conf/ (or the -S override) and regenerate params.yaml with `python -m cbir params`"


@dataclass(frozen=True)
class Rule:
    """A check for one value: ``test(value)`` is true when it is acceptable; ``expected`` says what is."""

    expected: str
    test: Callable[[Any], bool]
    nullable: bool = False

    def __call__(self, value: Any) -> bool:
        return (value is None and self.nullable) or (value is not None and self.test(value))

    @property
    def or_null(self) -> "Rule":
        return Rule(f"{self.expected} or null", self.test, True)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    span = (f" from {lo} to {hi}" if lo is not None and hi is not None else
            f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
    return Rule(f"an integer{span}", lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi))


def number(lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> Rule:
    low = "" if lo is None else (f" > {lo}" if open_lo else f" >= {lo}")
    high = "" if hi is None else f" <= {hi}"
    return Rule(f"a number{low}{' and' if low and high else ''}{high}",
                lambda v: _is_num(v) and (lo is None or (v > lo if open_lo else v >= lo)) and (hi is None or v <= hi))


def one_of(*choices: Any) -> Rule:
    return Rule("one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices),
                lambda v: any(v == c and type(v) is type(c) for c in choices))


def text(pattern: str | None = None, what: str = "a string") -> Rule:
    rx = re.compile(pattern) if pattern else None
    return Rule(what, lambda v: isinstance(v, str) and bool(v) and (rx is None or rx.fullmatch(v) is not None))


def list_of(rule: Rule, min_len: int = 0, unique: bool = False) -> Rule:
    what = (f"a list of at least {min_len}" if min_len else "a list") + (
        " distinct" if unique else "") + f" values, each {rule.expected}"
    return Rule(what, lambda v: isinstance(v, list) and len(v) >= min_len and all(rule(x) for x in v)
                and (not unique or len(set(map(repr, v))) == len(v)))


BOOL = Rule("true or false", lambda v: isinstance(v, bool))
ANY_MAPPING = Rule("a mapping", lambda v: isinstance(v, Mapping))
SEED = integer(0, 2 ** 32 - 1)
STRING = text()
SHA256 = text(r"[0-9a-fA-F]{64}", "a sha256 (64 hex digits)")
NAME = text(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}", "a name of letters, digits, '_', '.', '+' or '-'")
POSITIVE = integer(1)
COUNT = integer(0)

DOWNLOAD = {"max_bytes": integer(1, 2 ** 62), "min_free_bytes": integer(0, 2 ** 62)}
CURATE = {"min_side": POSITIVE, "max_pixels": integer(1, 2 ** 31), "min_per_class": POSITIVE, "dedupe": BOOL}
DATASET = {
    "name": NAME, "source": one_of("tuxpaint", "corel1k", "fashion_mnist", "folder", "synthetic", "neardup",
                                   "roxford5k", "rparis6k", "holidays", "ukbench", "copydays", "caltech101"),
    "root": STRING.or_null, "debian_package": STRING.or_null, "urls": list_of(STRING).or_null,
    # benchmarks (cbir.data.benchmarks): sha256 maps each file name to its hash, archive may be a list
    "sha256": Rule("a sha256 (64 hex digits), or a mapping of file name to sha256", lambda v: SHA256(v) or (
        isinstance(v, Mapping) and all(x is None or SHA256(x) for x in v.values()))).or_null,
    "archive": Rule("a path, or a list of paths", lambda v: STRING(v) or list_of(STRING)(v)).or_null,
    "folder": STRING.or_null, "license": STRING.or_null, "crop_queries": BOOL, "keep_background": BOOL,
    "rotated": one_of("as_distributed", "manually_rotated"), "n_originals": POSITIVE, "n_distractors": COUNT,
    "n_queries": POSITIVE, "n_absent": COUNT,
    "per_class": POSITIVE.or_null, "parts": list_of(one_of("train", "test"), 1, True).or_null,
    "curate": CURATE, "n_classes": POSITIVE, "size": integer(8, 4096), "seed": SEED,
    "format": one_of("png", "jpeg", "jpg"), "quality": integer(1, 100), "drop_variants": BOOL,
}
SPLIT = {"protocol": one_of("holdout", "leave_one_out", "predefined"), "queries_per_class": POSITIVE.or_null,
         "query_fraction": number(0, 1, open_lo=True).or_null, "seed": SEED}
#: ``datasets.<name>``: a dataset of the experiment (its key is its name), optionally with its own split
DATASET_ENTRY = {**DATASET, "split": SPLIT}
FAISS = {"nlist": POSITIVE.or_null, "nprobe": POSITIVE.or_null, "m": POSITIVE.or_null, "nbits": integer(1, 16).or_null,
         "M": POSITIVE.or_null, "efSearch": POSITIVE.or_null, "efConstruction": POSITIVE.or_null,
         "refine": POSITIVE.or_null, "gpu": BOOL}
INDEX = one_of("exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw", "flat", "ivf", "ivfpq", "hnsw")
#: a method's own search settings (``retrieval.per_method.<method>``), over the global ones
SEARCH = {"rerank": ANY_MAPPING.or_null, "index": INDEX, "faiss": FAISS}
RETRIEVAL = {"k": integer(1, 100_000), "block_size": integer(1, 1_000_000), "index": INDEX, "faiss": FAISS,
             "per_method": ("named", SEARCH)}
EVALUATION = {"ks": list_of(integer(1, 100_000), 1, True), "n_bootstrap": integer(0, 1_000_000),
              "n_permutations": integer(0, 10_000_000), "seed": SEED, "baseline": NAME.or_null,
              "curve_k": integer(1, 100_000).or_null}
FIGURES = {"n_queries": POSITIVE, "seed": SEED, "thumb_size": integer(16, 2048), "dpi": integer(10, 1200),
           "n_pairs": POSITIVE, "n_examples": POSITIVE, "pca_dims": integer(2, 4096), "tsne_max_points": POSITIVE,
           "tsne_iterations": integer(250, 100_000),  # t-SNE's own minimum
           "tsne_perplexity": number(0, open_lo=True), "methods": list_of(NAME, 1).or_null,
           "width": number(1, 40).or_null, "font_size": number(4, 30).or_null}  # inches; points
FEEDBACK = {"rounds": integer(0, 100), "top_k": integer(1, 10_000),
            "methods": list_of(one_of("rocchio", "svm"), 1, True), "alpha": number(0), "beta": number(0),
            "gamma": number(0), "svm_c": number(0, open_lo=True), "seed": SEED,
            "max_queries": integer(1, 10_000_000)}
SERVE = {"max_upload_mb": number(0, 1024, open_lo=True), "thumb_size": integer(16, 2048),
         "max_query_pixels": integer(1, 2 ** 31), "max_concurrent": integer(1, 64),
         "queue_timeout_s": number(0, 600), "request_timeout_s": number(0, 3600, open_lo=True)}
EXTRACT = {"engine": one_of("local", "ray"), "num_workers": integer(0, 256).or_null,
           "compile": Rule("auto, true or false", lambda v: v == "auto" or isinstance(v, bool)),
           "runtime": one_of("auto", "torch", "openvino"), "precision": one_of("auto", "fp32", "bf16", "int8"),
           "calibration": {"size": integer(1, 100_000), "seed": SEED},
           "ray": {"num_actors": POSITIVE.or_null, "batch_size": POSITIVE, "object_store_memory": POSITIVE.or_null,
                   "address": STRING.or_null, "images_url": STRING.or_null}}
BACKBONE = {"arch": STRING, "source": STRING, "package": STRING.or_null, "version": STRING.or_null,
            "member": STRING.or_null, "sha256": SHA256.or_null, "file": STRING.or_null, "url": STRING.or_null,
            "image_size": integer(16, 4096), "batch_size": integer(1, 4096), "allow_unverified": BOOL,
            "weights": STRING.or_null, "format": one_of("torch", "flax_vgg16")}
REQUIRES = Rule("a path or a list of paths",
                lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)), True)
#: a Hydra node: ``_target_`` (dotted, as ``hydra.utils.instantiate`` imports it) and its arguments beside it
NODE = Rule("a mapping {_target_: package.module.function, <argument>: <value>, ...}",
            lambda v: isinstance(v, Mapping) and isinstance(v.get("_target_"), str)
            and re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", v["_target_"]) is not None)
METHOD = {"kind": one_of("deep", "handcrafted", "precomputed"), "backbone": NAME, "pooling": STRING,
          "pooling_params": ANY_MAPPING, "descriptor": NODE, "trunk": NODE, "file": STRING, "requires": {"code": REQUIRES, "data": REQUIRES}, "search": ANY_MAPPING,
          "rerank": ANY_MAPPING.or_null, "whiten": Rule("a mapping, true, false or null",
                                                       lambda v: isinstance(v, (Mapping, bool)), True),
          "scales": list_of(number(0, open_lo=True), 1).or_null, "image_size": integer(16, 4096),
          "batch_size": integer(1, 4096)}
UPDATE = "see docs/methods.md"


def old_method_form(entry: Mapping) -> str | None:
    """How to rewrite a method in the old form (``None``: it is in the current form)."""
    from_name = entry.get("descriptor")
    if isinstance(from_name, str) or ("params" in entry and entry.get("kind") != "deep"):
        name = from_name if isinstance(from_name, str) else entry.get("_target_", "<name>")
        target = {"fusion": "cbir.features.handcrafted.fusion"}.get(name, str(name).replace(":", "."))
        return (f"uses the old form (descriptor: {name} with params:): write descriptor: {{_target_: "
                f"{target if '.' in target else 'package.module.' + target}, <argument>: <value>}}, the "
                f"arguments beside _target_ (built-ins: cbir.features.handcrafted.<module>.<function>; {UPDATE})")
    if "_target_" in entry:
        key = "trunk" if entry.get("kind") == "deep" else "descriptor"
        return (f"uses the old form (_target_ beside kind): move it into {key}: {{_target_: "
                f"{str(entry['_target_']).replace(':', '.')}, <argument>: <value>}} ({UPDATE})")
    return None


SCHEMA: dict = {
    "seed": SEED, "device": text(r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda, cuda:<n> or mps"),
    "dataset": DATASET, "datasets": ("named", DATASET_ENTRY), "download": DOWNLOAD, "curate": CURATE, "split": SPLIT, "retrieval": RETRIEVAL, "evaluation": EVALUATION,
    "feedback": FEEDBACK, "figures": FIGURES, "serve": SERVE, "extract": EXTRACT,
    "backbones": ("named", BACKBONE), "methods": ("named", METHOD),
}


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def problems(params: Any, schema: Mapping = SCHEMA, where: str = "") -> list[str]:
    """Every problem in ``params`` as ``key=value: expected ...`` (empty when it is valid)."""
    found: list[str] = []
    if not isinstance(params, Mapping):
        return [f"{where or 'the file'}={_show(params)}: expected a mapping"]
    for key, value in params.items():
        path = f"{where}.{key}" if where else str(key)
        rule = schema.get(key) if isinstance(key, str) else None
        if rule is None:
            known = ", ".join(sorted(schema))
            found.append(f"{path} is not a known key (known here: {known})")
        elif isinstance(rule, tuple):  # ("named", entry schema): a mapping of name -> entry
            if not isinstance(value, Mapping):
                found.append(f"{path}={_show(value)}: expected a mapping of name -> settings")
                continue
            for name, entry in value.items():
                if not (isinstance(name, str) and NAME(name)):
                    found.append(f"{path}: {_show(name)} is not a valid name ({NAME.expected})")
                elif not isinstance(entry, Mapping):
                    found.append(f"{path}.{name}={_show(entry)}: expected a mapping of settings")
                elif rule[1] is METHOD and old_method_form(entry):
                    found.append(f"{path}.{name} {old_method_form(entry)}")
                else:
                    found += problems(entry, rule[1], f"{path}.{name}")
        elif isinstance(rule, Mapping):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                found.append(f"{path}={_show(value)}: expected a mapping")
                continue
            found += problems(value, rule, path)
        elif not rule(value):
            found.append(f"{path}={_show(value)}: expected {rule.expected}")
    return found


def validate(params: Any, source: str = "params.yaml", advice: str = FIX) -> None:
    """Raise one :class:`CbirError` line naming the first bad key, its value and what is expected."""
    found = problems(params)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise CbirError(f"{source}: {found[0]}{more}; {advice}")
