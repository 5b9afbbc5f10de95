"""The small project the Ray and benchmark-script tests extract from: eleven (or ``n_images``) generated images of several sizes and modes,
their manifest, the random MobileNetV2's weights stage output and the params of a deep and a handcrafted method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from methods_helpers import with_defaults
from PIL import Image

from cbir.features.handcrafted import descriptor_node
from cbir.fileio import sha256_file
from cbir.stages.weights import run as run_weights

DEEP = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gem", "pooling_params": {"p": 3.0}}
HOG = {"kind": "handcrafted", "descriptor": descriptor_node("hog_descriptor", {"size": 32, "pixels_per_cell": 8})}


def make_workspace(root: Path, weights: Path, n_images: int = 11) -> tuple[Path, dict, list[Path]]:
    """``(root, params, image paths)`` of the toy project built under ``root`` (two query images, the rest the
    database)."""
    rng = np.random.default_rng(3)
    folder = root / "data" / "raw" / "toy"
    folder.mkdir(parents=True)
    rows = []
    for i in range(n_images):
        h, w = 36 + 7 * i, 90 - 4 * i
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        pixels[: h // 2] //= 1 + i % 3  # some structure, so descriptors differ
        image = Image.fromarray(pixels).convert("L" if i % 4 == 0 else "RGB")
        path = folder / f"{i:02d}.png"
        image.save(path)
        rows.append({"image_id": f"{i:02d}", "path": path.relative_to(root).as_posix(), "label": str(i % 2),
                     "split": "query" if i < 2 else "database", "width": w, "height": h,
                     "sha256": sha256_file(path), "protocol": "holdout"})
    curated = root / "data" / "curated" / "toy"
    curated.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(curated / "manifest.csv", index=False)
    params = with_defaults({
        "device": "cpu",
        "dataset": {"name": "toy"},
        "curate": {"max_pixels": 1_000_000},
        "backbones": {"mobilenet_v2": {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(weights),
                                       "allow_unverified": True,  # a random network: nothing to verify
                                       "image_size": 64, "batch_size": 4}},
        "methods": {"mnv2-gem": DEEP, "hog": HOG},
        "extract": {"engine": "ray", "compile": False, "ray": {"num_actors": None, "batch_size": 3}},
    })
    run_weights(params, "mobilenet_v2", root)
    return root, params, [root / r["path"] for r in rows]
