"""The ``ray`` engine of the extract stage: the same descriptors, computed by Ray Data actors.

``extract.engine: ray`` sends the manifest's image paths through ``ray.data.from_items`` and
``map_batches`` with a callable class that holds the model, one per actor (``num_gpus=1`` per
actor when the cluster has GPUs). Each actor decodes with :func:`cbir.data.images.open_rgb`,
preprocesses with :func:`cbir.features.cnn.runtime.make_transform`, loads the trunk with
:func:`cbir.features.methods.build_method`, exactly as the ``local`` engine does, so the rows
equal the ``local`` engine's.

Where Ray runs: ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` (or
``extract.ray.address``) and otherwise starts a private instance on this machine, which is
shut down afterwards. On a cluster every node needs the project installed and the repository
(images and ``models/``) at the same path, e.g. on shared storage.

Params: ``extract.ray.num_actors`` (null: one per GPU, else one per CPU),
``extract.ray.batch_size`` (images per actor call), optionally ``extract.ray.address`` and
``extract.ray.object_store_memory`` (bytes, for a private instance).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from cbir.data.images import load_rgb, open_rgb
from cbir.errors import CbirError
from cbir.features.cnn.runtime import make_transform
from cbir.features.methods import build_method
from cbir.settings import Extract, Method, MethodRun, max_pixels

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


def preprocess_batch(batch: dict[str, np.ndarray], size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch of paths: ``{"row", "image": float32 [B, 3, size, size]}``."""
    transform = make_transform(size)
    with portable_errors():
        images = torch.stack([transform(open_rgb(p, max_pixels=max_pixels)) for p in batch["path"]])
    return {"row": np.asarray(batch["row"], dtype=np.int64), "image": images.numpy()}


class DeepDescriber:
    """Ray Data callable class for deep methods: one instance per actor, holding the method's trunk.

    A batch holds either ``path`` (the actor decodes) or ``image`` (preprocessed by
    :func:`preprocess_batch` in Ray tasks); it returns ``{"row", "vector"}``.
    """

    def __init__(self, params: dict, method: str, root: str, device: str, num_threads: int = 1):
        if device == "cpu":
            torch.set_num_threads(max(1, int(num_threads)))
        self.method = build_method(method, params, Path(root), device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "image" not in batch:
            batch = preprocess_batch(batch, self.method.image_size, self.method.max_pixels)
        images = torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32))
        images = images.to(self.method.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return {"row": np.asarray(batch["row"], dtype=np.int64), "vector": self.method.describe_tensors(images)}


class HandcraftedDescriber:
    """Ray Data callable class for traditional descriptors (and their fusion)."""

    def __init__(self, params: dict, method: str, root: str):
        self.method = build_method(method, params, Path(root))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with portable_errors():
            vectors = np.stack([self.method.describe_array(
                load_rgb(p, max_pixels=self.method.max_pixels, max_side=self.method.max_side))
                                for p in batch["path"]])
        return {"row": np.asarray(batch["row"], dtype=np.int64), "vector": vectors.astype(np.float32)}


def image_size(params: Mapping, method: str) -> int:
    """The deep method's input size: its own, else its backbone's."""
    from cbir.features.cnn.method import own_or_backbone

    return own_or_backbone(MethodRun.from_params(params, method), "image_size")


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


def describe_dataset(ray, paths: Sequence[Path], params: dict, method: str, root: Path, plan: dict,
                     batch_size: int):
    """The Ray Data pipeline (lazy): rows ``{"row", "vector"}`` for ``paths`` under ``plan``."""
    items = [{"row": i, "path": str(p)} for i, p in enumerate(paths)]
    dataset = ray.data.from_items(items)
    pool = ray.data.ActorPoolStrategy(size=plan["num_actors"])
    if Method.from_params(params, method).kind == "handcrafted":
        return dataset.map_batches(HandcraftedDescriber, fn_constructor_kwargs={
            "params": params, "method": method, "root": str(root)},
            batch_size=batch_size, batch_format="numpy", compute=pool, num_cpus=plan["num_cpus"])
    if plan["decode_tasks"]:
        dataset = dataset.map_batches(preprocess_batch, fn_kwargs={
            "size": image_size(params, method), "max_pixels": max_pixels(params)},
            batch_size=batch_size, batch_format="numpy", num_cpus=1)
    return dataset.map_batches(DeepDescriber, fn_constructor_kwargs={
        "params": params, "method": method, "root": str(root), "device": plan["device"],
        "num_threads": plan["num_cpus"]},
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


def extract_with_ray(paths: Sequence[Path], params: dict, method: str, root: Path,
                     out: np.ndarray) -> dict:
    """Fill ``out`` (float32 ``[N, D]``, e.g. a memmap) with L2-normalised descriptors of ``paths``,
    row ``i`` for ``paths[i]``, computed by Ray Data actors. Returns the run info for ``<method>.json``."""
    ray = import_ray()
    kind = Method.from_params(params, method).kind
    if kind not in ("deep", "handcrafted"):
        raise CbirError(f"method kind {kind!r} cannot run on Ray: use deep or handcrafted")
    if out.shape[0] != len(paths):
        raise CbirError(f"output has {out.shape[0]} rows for {len(paths)} images")
    cfg = Extract.from_params(params).ray
    batch_size = cfg["batch_size"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CbirError(f"extract.ray.batch_size must be a positive integer, got {batch_size!r}")
    started = not ray.is_initialized()
    if started:
        init = {"address": cfg.get("address") or None, "include_dashboard": False, "log_to_driver": True}
        if cfg.get("object_store_memory"):
            init["object_store_memory"] = int(cfg["object_store_memory"])
        ray.init(**init)
    try:
        cluster = ray.cluster_resources()
        plan = plan_actors(kind, params["device"], cluster, cfg.get("num_actors"))
        log.info("ray: %d actors (%s, %d CPU / %d GPU each%s) on a cluster of %s CPU / %s GPU, batches of %d",
                 plan["num_actors"], plan["device"], plan["num_cpus"], plan["num_gpus"],
                 ", decoding in tasks" if plan["decode_tasks"] else "", cluster.get("CPU", 0),
                 cluster.get("GPU", 0), batch_size)
        start = time.perf_counter()
        n = run_pipeline(ray, describe_dataset(ray, paths, params, method, root, plan, batch_size), out)
        seconds = time.perf_counter() - start
        info = {"device": plan["device"], "engine": "ray", "num_actors": plan["num_actors"],
                "batch_size": batch_size, "decode_tasks": plan["decode_tasks"],
                "ray_nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
                "ray_cpus": float(cluster.get("CPU", 0)), "ray_gpus": float(cluster.get("GPU", 0))}
        if kind == "deep":
            info.update(image_size=image_size(params, method),
                        scales=list(Method.from_params(params, method).scales or (1.0,)))
        log.info("ray: %d rows in %.1fs", n, seconds)
        return info
    finally:
        if started:
            ray.shutdown()
