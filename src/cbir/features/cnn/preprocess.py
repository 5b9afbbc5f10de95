"""ImageNet evaluation preprocessing with Pillow and NumPy: shorter side to ``image_size`` (Pillow's
anti-aliased bilinear filter), centre crop, scale to [0, 1], normalise by the ImageNet mean and std.

This is the classic torchvision recipe (``Resize`` + ``CenterCrop`` on a PIL image, then ``ToTensor``
and ``Normalize``), without importing torchvision: an extract stage that runs a cached OpenVINO
model needs only Pillow, NumPy and torch (tested against torchvision's own transforms).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side scaled to ``size`` (the longer truncated, as torchvision)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def imagenet_input(image: Image.Image, size: int) -> np.ndarray:
    """float32 ``[3, size, size]``: an RGB image resized, centre-cropped and normalised for an ImageNet CNN."""
    width, height = resized_size(*image.size, size)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / np.float32(255)
    return ((pixels - _MEAN) / _STD).transpose(2, 0, 1)
