"""Shared by every kind of method: unit-length rows."""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """One vector ``[D]``, or each row of ``[N, D]``, as ``dtype`` scaled to unit L2 norm.

    A vector or row of norm 0 (all zero) comes back as it is, and so does one with a NaN, so a later
    finiteness check still sees it.  numpy takes a single vector's norm as a dot product and the rows'
    norms as sums of squares; the two can round differently in the last bit, and each is what the
    features of its callers have always been computed with.
    """
    vectors = np.asarray(vectors, dtype=dtype)
    norms = np.linalg.norm(vectors) if vectors.ndim == 1 else np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
