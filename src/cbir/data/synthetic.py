"""A seeded, labelled, generated image collection (for tests, demos and smoke runs).

Class ``c`` of ``n`` has its own hue (``c / n`` of the colour wheel), its own shape
and its own texture (shapes and textures cycle through :data:`SHAPES` and
:data:`TEXTURES`), so both a colour histogram and a shape/texture descriptor
(or a CNN) can tell the classes apart. Every image is jittered independently:
object position, size and rotation, hue/saturation/brightness, a low-saturation
background of random brightness, and Gaussian pixel noise. Image ``i`` of class
``c`` depends only on ``(seed, c, i)``, never on how many images are generated.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.errors import CbirError
from cbir.fileio import atomic_dir, write_json
from cbir.settings import need

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
TEXTURES = ("solid", "stripes", "checker", "dots")
FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "jpg": ("JPEG", ".jpg")}


def class_style(class_index: int, n_classes: int) -> tuple[float, str, str]:
    """``(hue in [0, 1), shape, texture)`` of a class."""
    shape = SHAPES[class_index % len(SHAPES)]
    texture = TEXTURES[(class_index // len(SHAPES) + class_index) % len(TEXTURES)]
    return class_index / n_classes, shape, texture


def class_names(n_classes: int) -> list[str]:
    """Folder names, sortable and descriptive: ``c00_disc_solid``, ``c01_square_stripes``, …"""
    width = max(2, len(str(n_classes - 1)))
    return [f"c{c:0{width}d}_{class_style(c, n_classes)[1]}_{class_style(c, n_classes)[2]}" for c in range(n_classes)]


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-size shape on normalised, rotated coordinates ``u`` (right) and ``v`` (down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        return (v <= 0.7) & (v >= 1.7 * au - 1.0)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "diamond":
        return au + av <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def texture_gain(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness factor in ``[0.45, 1]`` drawing the texture on the object."""
    if texture == "solid":
        return np.ones_like(u)
    if texture == "stripes":
        on = np.floor(u * 3.0) % 2 == 0
    elif texture == "checker":
        on = (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0
    elif texture == "dots":
        fu, fv = u * 2.5 - np.floor(u * 2.5) - 0.5, v * 2.5 - np.floor(v * 2.5) - 0.5
        on = fu * fu + fv * fv > 0.09
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(on, 1.0, 0.45)


def synthetic_image(class_index: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One jittered image of class ``class_index`` as ``uint8 [size, size, 3]``."""
    hue, shape, texture = class_style(class_index, n_classes)
    hue = (hue + rng.uniform(-0.2, 0.2) / n_classes) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 0.95), rng.uniform(0.75, 1.0)))
    bg_level = rng.uniform(0.3, 0.7)
    background = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.08), bg_level))

    radius = size * rng.uniform(0.28, 0.4)
    margin = radius * 0.9
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(-np.pi / 9, np.pi / 9)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy

    mask = shape_mask(shape, u, v)
    gain = texture_gain(texture, u, v)
    image = np.where(mask[..., None], colour * gain[..., None], background)
    image = image + rng.normal(0.0, rng.uniform(0.01, 0.05), size=image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def generate(out_dir: str | os.PathLike, *, n_classes: int, per_class: int, size: int, seed: int, fmt: str,
             quality: int) -> list[str]:
    """Write ``n_classes * per_class`` images as ``<out_dir>/<class>/<i>.<ext>``; return their relative paths
    (every setting named: conf/dataset/synthetic.yaml holds the pipeline's values)."""
    if n_classes < 1 or per_class < 1 or size < 8:
        raise CbirError(f"synthetic dataset needs n_classes >= 1, per_class >= 1 and size >= 8 "
                        f"(got {n_classes}, {per_class}, {size}); fix dataset.* in params")
    if fmt.lower() not in FORMATS:
        raise CbirError(f"synthetic dataset: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    pil_format, ext = FORMATS[fmt.lower()]
    out_dir = Path(out_dir)
    written = []
    width = max(4, len(str(per_class - 1)))
    for c, name in enumerate(class_names(n_classes)):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = synthetic_image(c, n_classes, size, np.random.default_rng([seed, c, i]))
            rel = f"{name}/{i:0{width}d}{ext}"
            options = {"quality": int(quality)} if pil_format == "JPEG" else {}
            Image.fromarray(pixels, mode="RGB").save(out_dir / rel, format=pil_format, **options)
            written.append(rel)
    return written


def fetch_synthetic(dataset_cfg: dict, raw_dir: str | os.PathLike) -> dict:
    """Generate the collection described by ``dataset_cfg`` into ``raw_dir`` (atomically); return provenance."""
    name = need(dataset_cfg, "name", "dataset")
    settings = {
        "n_classes": int(need(dataset_cfg, "n_classes", "dataset")),
        "per_class": int(need(dataset_cfg, "per_class", "dataset")),
        "size": int(need(dataset_cfg, "size", "dataset")),
        "seed": int(need(dataset_cfg, "seed", "dataset")),
        "fmt": str(need(dataset_cfg, "format", "dataset")),
        "quality": int(need(dataset_cfg, "quality", "dataset")),
    }
    with atomic_dir(raw_dir) as tmp:
        files = generate(tmp, **settings)
        provenance = {
            "source": "synthetic",
            "name": name,
            "generator": "cbir.data.synthetic",
            "settings": settings,
            "classes": class_names(settings["n_classes"]),
            "n_files": len(files),
            "bytes": sum((tmp / f).stat().st_size for f in files),
        }
        write_json(tmp / "_source.json", provenance)
    return provenance
