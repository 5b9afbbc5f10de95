"""Embed individual images with a pipeline method, model loaded once (for queries and the web page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbir.config import method_config
from cbir.errors import CbirError


class Embedder:
    """``Embedder.from_params(params, method, root).embed([PIL images]) -> float32 [n, D]`` (L2-normalised).

    Uses exactly the preprocessing, weights and pooling of the ``extract`` stage, so a query
    image lands in the same space as the database features.
    """

    def __init__(self, method: str, cfg: dict, trunk=None, pool=None, transform=None, device=None,
                 whitening=None):
        self.method, self.cfg = method, cfg
        self.trunk, self.pool, self.transform = trunk, pool, transform
        self.device = device or torch.device("cpu")
        self.whitening = whitening

    @classmethod
    def from_params(cls, params: dict, method: str, root: Path) -> "Embedder":
        from cbir.features.deep import make_transform, resolve_device
        from cbir.features.extract import load_backbone, make_pool

        from cbir.features.extract import features_path, whitening_path

        cfg = method_config(params, method)
        whitening = None
        if cfg.get("whiten"):
            from cbir.features.whitening import load_whitening

            path = whitening_path(features_path(Path(root), params, method))
            if not path.exists():
                raise CbirError(f"{path} is missing: run `dvc repro extract@{method}` first")
            whitening = load_whitening(path)
        if cfg.get("kind") == "handcrafted":
            return cls(method, cfg, whitening=whitening)
        if cfg.get("kind") != "deep":
            raise CbirError(f"method {method} has kind {cfg.get('kind')!r}: use deep or handcrafted")
        trunk, bcfg = load_backbone(params, cfg["backbone"], root)
        device = resolve_device(params.get("device", "auto"))
        size = int(cfg.get("image_size") or bcfg.get("image_size", 224))
        trunk = trunk.to(device).to(memory_format=torch.channels_last).eval()
        return cls(method, cfg, trunk, make_pool(cfg), make_transform(size), device, whitening)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            raise CbirError("no images to embed")
        if self.trunk is None:
            from cbir.features.extract import describe_image

            out = np.stack([describe_image(self.cfg, np.asarray(im.convert("RGB"))) for im in images])
        else:
            from cbir.features.deep import describe_batch

            batch = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
            scales = [float(x) for x in (self.cfg.get("scales") or [1.0])]
            out = describe_batch(self.trunk, self.pool, batch, scales, self.device.type == "cuda")
            out = out.cpu().numpy().astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1.0)
        if self.whitening is not None:
            from cbir.features.whitening import apply_whitening

            out = apply_whitening(self.whitening, out).astype(np.float32)
        return out
