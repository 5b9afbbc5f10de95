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

    def __init__(self, method: str, cfg: dict, trunk=None, pool=None, transform=None, device=None):
        self.method, self.cfg = method, cfg
        self.trunk, self.pool, self.transform = trunk, pool, transform
        self.device = device or torch.device("cpu")

    @classmethod
    def from_params(cls, params: dict, method: str, root: Path) -> "Embedder":
        from cbir.features.deep import make_transform, resolve_device
        from cbir.features.extract import load_backbone, make_pool

        cfg = method_config(params, method)
        if cfg.get("kind") == "handcrafted":
            return cls(method, cfg)
        if cfg.get("kind") != "deep":
            raise CbirError(f"method {method} has kind {cfg.get('kind')!r}: use deep or handcrafted")
        trunk, bcfg = load_backbone(params, cfg["backbone"], root)
        device = resolve_device(params.get("device", "auto"))
        size = int(cfg.get("image_size") or bcfg.get("image_size", 224))
        trunk = trunk.to(device).to(memory_format=torch.channels_last).eval()
        return cls(method, cfg, trunk, make_pool(cfg), make_transform(size), device)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            raise CbirError("no images to embed")
        if self.trunk is None:
            from cbir.features.handcrafted import describe

            rows = [np.asarray(describe(self.cfg["descriptor"], np.asarray(im.convert("RGB")),
                                        dict(self.cfg.get("params") or {})), dtype=np.float32) for im in images]
            out = np.stack(rows)
        else:
            batch = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                enabled=self.device.type == "cuda"):
                fmap = self.trunk(batch)
            out = self.pool(fmap.float()).flatten(1).cpu().numpy().astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)
