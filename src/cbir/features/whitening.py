"""PCA-whitening of global descriptors, learned on the database rows only.

``fit_whitening(db, dim)`` learns a mean, principal directions and their variances with
scikit-learn's ``PCA(whiten=True)``; ``apply_whitening(fitted, x)`` projects any rows (database
or query) and L2-normalises them. Queries never enter the fit: ``fit_whitening`` sees only the
array it is given, and ``whiten_features`` picks the database rows itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from cbir.errors import CbirError
from cbir.fileio import atomic_path

log = logging.getLogger(__name__)

# components whose variance is below this fraction of the largest carry only rounding noise
_REL_TOL = 1e-10


@dataclass(frozen=True)
class Whitening:
    """A learned whitening: ``((x - mean) @ components.T) / sqrt(variances)``.

    ``mean`` is ``[D]``, ``components`` ``[d, D]`` (orthonormal rows, by decreasing variance),
    ``variances`` ``[d]`` (the database variance along each component, ddof = 1).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])


def _check_rows(x: object, where: str, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise CbirError(f"{where}: {what} must be a numeric [N, D] array, got shape {arr.shape} "
                        f"({arr.dtype}); pass one feature row per image")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise CbirError(f"{where}: {what} contains NaN or infinite values; re-extract the features")
    return arr


def fit_whitening(db: np.ndarray, dim: int | None = None) -> Whitening:
    """Learn PCA-whitening to ``dim`` dimensions from the database rows ``db: [N, D]``.

    ``dim=None`` keeps every usable component. ``dim`` is clipped, with a logged warning, to
    ``min(N - 1, D)`` (centred data has rank at most ``N - 1``) and to the numerical rank, since a
    zero-variance direction cannot be whitened.
    """
    where = "fit_whitening"
    x = _check_rows(db, where, "the database features")
    n, d = x.shape
    if n < 2:
        raise CbirError(f"{where}: need at least 2 database rows to learn a whitening, got {n}; "
                        "use a larger database or turn whitening off")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
        raise CbirError(f"{where}: 'dim' must be an integer >= 1 or null, got {dim!r}; "
                        "check the whitening dim in params.yaml")
    if np.all(x == x[0]):
        raise CbirError(f"{where}: the {n} database rows are all identical, nothing to whiten; "
                        "check the extracted features")
    limit = min(n - 1, d)
    want = limit if dim is None else int(dim)
    if want > limit:
        log.warning("whitening dim %d exceeds min(N - 1, D) = min(%d, %d) for %d x %d database features; "
                    "using %d", want, n - 1, d, n, d, limit)
        want = limit
    # exact solvers only (deterministic); the covariance route is far cheaper when N >> D
    solver = "covariance_eigh" if n >= d else "full"
    # imported here: seconds that only a whitening method needs
    from sklearn.decomposition import PCA

    pca = PCA(n_components=want, whiten=True, svd_solver=solver).fit(x)
    variances = pca.explained_variance_
    keep = int(np.sum(variances > _REL_TOL * max(variances[0], np.finfo(np.float64).tiny)))
    if keep < want:
        log.warning("whitening dim %d exceeds the rank %d of the database features; using %d", want, keep, keep)
    return Whitening(mean=pca.mean_.copy(), components=pca.components_[:keep].copy(),
                     variances=variances[:keep].copy())


def apply_whitening(fitted: Whitening, x: np.ndarray, *, l2_normalize: bool = True) -> np.ndarray:
    """Whiten rows ``x: [M, D]`` with ``fitted`` -> float32 ``[M, d]``, unit rows by default.

    Each row is transformed on its own, so whitening queries never affects the database.
    """
    arr = _check_rows(x, "apply_whitening", "the features")
    if arr.shape[1] != fitted.input_dim:
        raise CbirError(f"apply_whitening: features have {arr.shape[1]} dimensions but the whitening was "
                        f"learned on {fitted.input_dim}; learn it on the same method's features")
    out = ((arr - fitted.mean) @ fitted.components.T) / np.sqrt(fitted.variances)
    if l2_normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return out.astype(np.float32)


def whiten_features(features: np.ndarray, is_database: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Fit on the rows where ``is_database`` is true, apply to all rows: float32 ``[N, d]``, unit rows.

    Under leave-one-out every row is a database row; under holdout the queries are excluded.
    """
    x = _check_rows(features, "whiten_features", "the features")
    mask = np.asarray(is_database)
    if mask.dtype != bool or mask.shape != (x.shape[0],):
        raise CbirError(f"whiten_features: is_database must be a boolean array of length {x.shape[0]}, got "
                        f"{mask.dtype} {mask.shape}; build it as manifest.split == 'database'")
    return apply_whitening(fit_whitening(x[mask], dim), x)


def save_whitening(fitted: Whitening, path: str | os.PathLike) -> None:
    """Write the learned arrays to an ``.npz`` file (atomically)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, mean=fitted.mean, components=fitted.components, variances=fitted.variances)


def load_whitening(path: str | os.PathLike) -> Whitening:
    """Read a whitening written by ``save_whitening``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            mean, comps, var = data["mean"], data["components"], data["variances"]
    except (OSError, KeyError, ValueError) as exc:
        raise CbirError(f"load_whitening: cannot read a whitening from {path} ({exc}); "
                        "re-run the stage that learns it") from None
    if mean.ndim != 1 or comps.ndim != 2 or var.shape != (comps.shape[0],) or comps.shape[1] != mean.shape[0] \
            or not np.all(var > 0):
        raise CbirError(f"load_whitening: {path} holds inconsistent arrays (mean {mean.shape}, components "
                        f"{comps.shape}, variances {var.shape}); re-run the stage that learns it")
    return Whitening(mean=mean, components=comps, variances=var)
