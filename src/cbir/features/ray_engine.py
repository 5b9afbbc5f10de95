"""The ``ray`` engine of the extract stage: the same descriptors, computed by Ray Data actors on any cluster.

Nothing on the worker nodes needs the repository, a shared file system or the project installed:

* **images travel as bytes**: the driver reads the manifest's files (``ray.data.from_items`` of
  ``{"row", "name", "bytes"}``), or, with ``extract.ray.images_url`` (an ``fsspec`` URL prefix such as
  ``s3://bucket/project``, ``gs://...`` or ``file:///...``), Ray tasks fetch ``<images_url>/<manifest
  path>`` themselves, so the driver never holds the collection;
* **weights travel through the object store** (``ray.put`` of the weight file's bytes); each actor writes
  them to a private temporary folder and builds the method there with
  :func:`cbir.features.methods.build`, the builder the ``local`` engine uses, so the rows are the same;
* **code travels in a runtime environment** (``py_modules``: the ``cbir`` package directory);
* **actors receive their typed settings** (:class:`cbir.settings.MethodRun`), never ``params`` nor a
  path: no actor opens a file of the repository.

Each actor decodes bytes with :func:`cbir.data.images.open_rgb` and preprocesses with
:func:`cbir.features.cnn.runtime.make_transform`. Deep methods on GPUs decode in separate one-CPU tasks.
Progress is Ray Data's own.  ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` (or
``extract.ray.address``) and otherwise starts a private instance on this machine, shut down afterwards;
a caller that starts Ray itself passes ``runtime_env=runtime_env()`` to ``ray.init``.

Params: ``extract.ray.num_actors`` (null: one per GPU, else one per CPU), ``extract.ray.batch_size``
(images per actor call), optionally ``extract.ray.address``, ``extract.ray.object_store_memory`` (bytes,
for a private instance) and ``extract.ray.images_url``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

import cbir
from cbir.data.images import ImageError, load_rgb, open_rgb
from cbir.errors import CbirError
from cbir.features.cnn.method import own_or_backbone
from cbir.features.cnn.runtime import make_transform
from cbir.features.methods import build
from cbir.layout import weights_file
from cbir.settings import Extract, MethodRun

log = logging.getLogger("cbir")

INSTALL_HINT = "pip install -e '.[ray]'"


def import_ray():
    """``ray`` with Ray Data, or one clear error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data ships in the ray[data] extra)
    except ImportError:
        raise CbirError(f"extract.engine=ray needs Ray Data, which is not installed: {INSTALL_HINT} "
                        "(or set extract.engine=local)") from None
    return ray


def plan_actors(kind: str, device: str, cluster: Mapping[str, float],
                num_actors: int | None = None) -> dict:
    """How the work is laid out: ``{"num_actors", "num_gpus", "num_cpus", "device", "decode_tasks"}``.

    Deep methods on a cluster with GPUs (unless ``device`` is ``cpu``): one GPU per actor
    (default: one actor per GPU), and images are decoded and preprocessed by separate one-CPU
    Ray tasks (``decode_tasks``) so the GPUs never wait on a single decoding core. Otherwise
    (CPU): each actor decodes and describes its own batches with one CPU and one thread
    (default: one actor per CPU of the cluster). ``device=cuda`` without a GPU is an error.
    """
    if device not in (None, "auto", "cpu", "cuda"):
        raise CbirError(f"device is {device!r}: use auto, cpu or cuda")
    if num_actors is not None and (isinstance(num_actors, bool) or not isinstance(num_actors, int)
                                   or num_actors < 1):
        raise CbirError(f"extract.ray.num_actors must be a positive integer or null, got {num_actors!r}")
    gpus = int(cluster.get("GPU", 0) or 0)
    cpus = max(1, int(cluster.get("CPU", 1) or 1))
    if device == "cuda" and gpus == 0:
        raise CbirError("device=cuda was asked for but the Ray cluster has no GPU: use device=auto or device=cpu")
    if kind == "deep" and device != "cpu" and gpus > 0:
        n = int(num_actors) if num_actors is not None else gpus
        return {"num_actors": n, "num_gpus": 1, "num_cpus": 1, "device": "cuda", "decode_tasks": True}
    n = int(num_actors) if num_actors is not None else cpus
    return {"num_actors": n, "num_gpus": 0, "num_cpus": 1, "device": "cpu", "decode_tasks": False}


def runtime_env() -> dict:
    """The code every task and actor of the job runs: this ``cbir`` package, shipped by Ray (``py_modules``;
    Ray uploads a local folder only for a whole job: ``ray.init(runtime_env=...)``)."""
    return {"py_modules": [str(Path(cbir.__file__).parent)], "excludes": ["__pycache__", "*.pyc"]}


# ---------------------------------------------------------------- inputs (driver side)


def image_items(paths: Sequence[Path], root: Path, images_url: str | None) -> list[dict]:
    """The rows Ray Data starts from: ``{"row", "name", "bytes"}``, the files read here (the driver), or
    ``{"row", "name", "url"}`` with ``url`` = ``<images_url>/<path relative to root>``, fetched by Ray tasks."""
    if images_url:
        prefix = images_url.rstrip("/")
        return [{"row": i, "name": str(p), "url": f"{prefix}/{relative_name(p, root)}"} for i, p in enumerate(paths)]
    items = []
    for i, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CbirError(str(ImageError(path, "unreadable", exc.strerror or exc))) from None
        items.append({"row": i, "name": str(path), "bytes": data})
    return items


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (the manifest's own path), in URL form; a path outside ``root`` is
    one line."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        raise CbirError(f"image {path} is outside the project {root}: extract.ray.images_url names files "
                        "by their manifest path") from None


def fetch_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: read each ``url`` with fsspec (``file://``, ``s3://``, ``gs://``, ...) into ``bytes``."""
    import fsspec  # the ray extra's dependency; s3:// and gs:// need s3fs / gcsfs on the nodes

    data = []
    for url in batch["url"]:
        try:
            with fsspec.open(str(url), "rb") as handle:
                data.append(handle.read())
        except (OSError, ValueError, ImportError) as exc:
            raise CbirError(f"cannot read image {url}: {' '.join(str(exc).split())} (check extract.ray.images_url "
                            "and the storage credentials on the Ray nodes)") from None
    return {"row": np.asarray(batch["row"], dtype=np.int64), "name": batch["name"],
            "bytes": np.array(data, dtype=object)}


def weights_bytes(run: MethodRun, root: Path) -> bytes | None:
    """The weight file of a deep method's configured backbone (read by the driver), else ``None``."""
    if run.backbone is None:
        return None
    path = weights_file(root, run.backbone.name)
    if not path.exists():
        raise CbirError(f"weight file {path} is missing: run `dvc repro weights@{run.backbone.name}` first")
    return path.read_bytes()


# ---------------------------------------------------------------- inside tasks and actors


@contextlib.contextmanager
def portable_errors():
    """Inside an actor: re-raise a project error as a plain :class:`CbirError` with the same message.

    Subclasses such as ``ImageError`` take several constructor arguments and cannot be rebuilt
    from a pickle, so Ray would lose them on the way back to the driver.
    """
    try:
        yield
    except CbirError as exc:
        raise CbirError(str(exc)) from None


class ByteImages:
    """Decodes images given as bytes with the project's safe decoder (through one private scratch file),
    naming the image by its manifest name in every error."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="cbir-ray-")
        self._scratch = Path(self._folder.name) / "image"

    def load(self, name: str, data: bytes, reader=open_rgb, **kwargs):
        self._scratch.write_bytes(data)
        try:
            return reader(self._scratch, **kwargs)
        except ImageError as exc:
            raise CbirError(str(ImageError(name, exc.reason, exc.detail))) from None


def preprocess_batch(batch: dict[str, np.ndarray], size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch of image bytes: ``{"row", "image": float32 [B, 3, size, size]}``."""
    transform, images = make_transform(size), ByteImages()
    with portable_errors():
        tensors = [transform(images.load(str(n), bytes(b), max_pixels=max_pixels))
                   for n, b in zip(batch["name"], batch["bytes"])]
    return {"row": np.asarray(batch["row"], dtype=np.int64), "image": torch.stack(tensors).numpy()}


def _no_calibration() -> Path:
    raise CbirError("extract.precision=int8 calibrates on the manifest's images, which Ray actors do not read: "
                    "use extract.engine=local for int8, or fp32/bf16 on Ray")


def remote_method(run: MethodRun, weights: bytes | None, folder: Path):
    """The method of ``run`` built inside an actor: a backbone's ``weights`` (from the object store) are
    written to ``folder/models/`` and the method is built there, as the local engine builds it."""
    if weights is not None:
        target = weights_file(folder, run.backbone.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(weights)
    return build(run, folder, _no_calibration)


class DeepDescriber:
    """Ray Data callable class for deep methods: one instance per actor, holding the method's trunk.

    ``weights``: a one-item list holding the ``ObjectRef`` of the weight file's bytes (empty for a trunk
    factory). A batch holds ``bytes`` (the actor decodes) or ``image`` (preprocessed by
    :func:`preprocess_batch` in Ray tasks); it returns ``{"row", "vector"}``.
    """

    def __init__(self, run: MethodRun, weights: list, num_threads: int = 1):
        import ray

        if run.device == "cpu":
            torch.set_num_threads(max(1, int(num_threads)))
        self._folder = tempfile.TemporaryDirectory(prefix="cbir-ray-")
        with portable_errors():
            self.method = remote_method(run, ray.get(weights[0]) if weights else None, Path(self._folder.name))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "image" not in batch:
            batch = preprocess_batch(batch, self.method.image_size, self.method.max_pixels)
        images = torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32))
        images = images.to(self.method.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return {"row": np.asarray(batch["row"], dtype=np.int64), "vector": self.method.describe_tensors(images)}


class HandcraftedDescriber:
    """Ray Data callable class for traditional descriptors (and their fusion)."""

    def __init__(self, run: MethodRun):
        self._folder = tempfile.TemporaryDirectory(prefix="cbir-ray-")
        with portable_errors():
            self.method = remote_method(run, None, Path(self._folder.name))
        self.images = ByteImages()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.method
        with portable_errors():
            vectors = np.stack([m.describe_array(self.images.load(str(n), bytes(b), reader=load_rgb,
                                                                  max_pixels=m.max_pixels, max_side=m.max_side))
                                for n, b in zip(batch["name"], batch["bytes"])])
        return {"row": np.asarray(batch["row"], dtype=np.int64), "vector": vectors.astype(np.float32)}


# ---------------------------------------------------------------- results (driver side)

#: The last line of a remote traceback that names a project error: ``cbir.errors.CbirError: message``.
_REMOTE_ERROR = re.compile(r"^cbir(?:\.\w+)*\.\w*Error: (.+)$", re.MULTILINE)


def user_error(exc: BaseException) -> CbirError | None:
    """The project error (e.g. an undecodable image) behind a Ray task failure, if there is one.

    Ray re-raises a remote failure wrapped (``RayTaskError``, Ray Data's ``UserCodeException``)
    and keeps the original error only as text, in the remote traceback: its last
    ``cbir...Error: message`` line is the original one-line message.
    """
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        err = todo.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if type(err) is CbirError or type(err).__module__.startswith("cbir."):
            return err
        cause = getattr(err, "cause", None)
        todo += [cause if isinstance(cause, BaseException) else None, err.__cause__, err.__context__]
    found = _REMOTE_ERROR.findall(str(exc))
    return CbirError(found[-1].strip()) if found else None


def collect(batches, out: np.ndarray) -> int:
    """Write ``{"row", "vector"}`` batches into ``out`` by row; every row exactly once. Returns the count."""
    seen = np.zeros(out.shape[0], dtype=bool)
    for batch in batches:
        rows = np.asarray(batch["row"], dtype=np.int64)
        vectors = np.asarray(batch["vector"], dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(rows), out.shape[1]):
            raise CbirError(f"a Ray actor returned vectors of shape {vectors.shape} for {len(rows)} rows; "
                            f"expected [{len(rows)}, {out.shape[1]}]")
        if np.any(seen[rows]):
            raise CbirError("a Ray actor returned a manifest row twice: re-run the extract stage")
        seen[rows] = True
        out[rows] = vectors
    if not seen.all():
        raise CbirError(f"Ray returned {int(seen.sum())} of {out.shape[0]} rows: re-run the extract stage")
    return int(seen.sum())


def describe_dataset(ray, items: list[dict], run: MethodRun, plan: dict, batch_size: int, weights=None):
    """The Ray Data pipeline (lazy): rows ``{"row", "vector"}`` for ``items`` (:func:`image_items`) under
    ``plan``; ``weights``: the ``ObjectRef`` of the weight file's bytes (``None``: none needed)."""
    dataset = ray.data.from_items(items)
    if items and "url" in items[0]:
        dataset = dataset.map_batches(fetch_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1)
    pool = ray.data.ActorPoolStrategy(size=plan["num_actors"])
    run = dataclasses.replace(run, device=plan["device"])
    if run.method.kind == "handcrafted":
        return dataset.map_batches(HandcraftedDescriber, fn_constructor_kwargs={"run": run}, batch_size=batch_size,
                                   batch_format="numpy", compute=pool, num_cpus=plan["num_cpus"])
    if plan["decode_tasks"]:
        dataset = dataset.map_batches(preprocess_batch, fn_kwargs={
            "size": own_or_backbone(run, "image_size"), "max_pixels": run.max_pixels},
            batch_size=batch_size, batch_format="numpy", num_cpus=1)
    return dataset.map_batches(DeepDescriber, fn_constructor_kwargs={
        "run": run, "weights": [] if weights is None else [weights], "num_threads": plan["num_cpus"]},
        batch_size=batch_size, batch_format="numpy", compute=pool, num_gpus=plan["num_gpus"],
        num_cpus=plan["num_cpus"])


def run_pipeline(ray, dataset, out: np.ndarray) -> int:
    """Execute ``dataset`` into ``out``; a project error inside an actor becomes one CbirError line."""
    try:
        return collect(dataset.iter_batches(batch_size=None, batch_format="numpy"), out)
    except CbirError:
        raise
    except Exception as exc:  # a failure inside a Ray task or actor arrives wrapped by Ray
        cause = user_error(exc)
        if cause is not None:
            raise CbirError(str(cause)) from None
        raise


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CbirError(f"extract.ray.batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def extract_on_ray(paths: Sequence[Path], root: Path, run: MethodRun, settings: Extract,
                   out: np.ndarray) -> dict:
    """Fill ``out`` (float32 ``[N, D]``, e.g. a memmap) with the L2-normalised descriptors of the images
    ``paths`` (manifest files under ``root``), row ``i`` for ``paths[i]``, computed by Ray Data actors that
    never open a path of the project. Returns the run info for ``<method>.json``."""
    ray = import_ray()
    kind = run.method.kind
    if kind not in ("deep", "handcrafted"):
        raise CbirError(f"method kind {kind!r} cannot run on Ray: use deep or handcrafted")
    if out.shape[0] != len(paths):
        raise CbirError(f"output has {out.shape[0]} rows for {len(paths)} images")
    cfg = settings.ray
    batch_size = check_batch_size(cfg["batch_size"])
    items = image_items(paths, Path(root), cfg.get("images_url"))
    weights = weights_bytes(run, Path(root)) if kind == "deep" else None
    started = not ray.is_initialized()
    if started:
        init = {"address": cfg.get("address") or None, "include_dashboard": False, "log_to_driver": True,
                "runtime_env": runtime_env()}
        if cfg.get("object_store_memory"):
            init["object_store_memory"] = int(cfg["object_store_memory"])
        ray.init(**init)
    try:
        cluster = ray.cluster_resources()
        plan = plan_actors(kind, run.device, cluster, cfg.get("num_actors"))
        log.info("ray: %d actors (%s, %d CPU / %d GPU each%s) on a cluster of %s CPU / %s GPU, batches of %d",
                 plan["num_actors"], plan["device"], plan["num_cpus"], plan["num_gpus"],
                 ", decoding in tasks" if plan["decode_tasks"] else "", cluster.get("CPU", 0),
                 cluster.get("GPU", 0), batch_size)
        start = time.perf_counter()
        ref = None if weights is None else ray.put(weights)
        n = run_pipeline(ray, describe_dataset(ray, items, run, plan, batch_size, ref), out)
        seconds = time.perf_counter() - start
        info = {"device": plan["device"], "engine": "ray", "num_actors": plan["num_actors"],
                "batch_size": batch_size, "decode_tasks": plan["decode_tasks"]}  # no cluster facts: they go to the log
        if kind == "deep":
            info.update(image_size=own_or_backbone(run, "image_size"), scales=list(run.method.scales or (1.0,)))
        log.info("ray: %d rows in %.1fs on %d nodes", n, seconds, sum(1 for node in ray.nodes() if node.get("Alive")))
        return info
    finally:
        if started:
            ray.shutdown()


def extract_with_ray(paths: Sequence[Path], params: Mapping, method: str, root: Path, out: np.ndarray) -> dict:
    """The extract stage's call: :func:`extract_on_ray` with the typed settings of ``method`` built here,
    on the driver (actors receive only those)."""
    import_ray()
    return extract_on_ray(paths, Path(root), MethodRun.from_params(params, method), Extract.from_params(params),
                          out)
