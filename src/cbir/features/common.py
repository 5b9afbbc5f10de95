"""Shared by every kind of method: the decoding pixel budget and unit-length rows."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def max_pixels(params: Mapping) -> int:
    """The decoding pixel budget (``curate.max_pixels``) every method decodes images under."""
    return int((params.get("curate") or {}).get("max_pixels", 40_000_000))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
