"""Statistics over per-query scores: percentile bootstrap intervals of means, the paired sign-flip
permutation test (with Wilcoxon's signed-rank test beside it) and Holm's step-down correction.

Pure numpy/scipy on arrays of per-query values; nothing here knows what the values measure.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd


def bootstrap_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the (NaN-skipping) mean of each column of ``values``.

    Queries are resampled jointly for all columns (``scipy.stats.bootstrap``, seeded).
    Fewer than two finite values in a column, or ``n_bootstrap < 1``: NaN bounds.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    nan = np.full(m, np.nan)
    if n_bootstrap < 1 or n < 2:
        return nan, nan.copy()

    def nanmean(x: np.ndarray, axis: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(x, axis=axis)

    from scipy import stats  # imported where used: over a second that most importers never need

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap((values,), nanmean, n_resamples=int(n_bootstrap), axis=0,
                              vectorized=True, method="percentile", confidence_level=level,
                              batch=max(1, (1 << 22) // max(1, n * m)),
                              rng=np.random.default_rng(seed))
    lo = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=np.float64))
    hi = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=np.float64))
    few = np.isfinite(values).sum(axis=0) < 2
    lo[few] = np.nan
    hi[few] = np.nan
    return lo, hi


def paired_test(ap_a: Sequence[float], ap_b: Sequence[float], n_permutations: int = 10000,
                seed: int = 0) -> dict:
    """Paired comparison of per-query scores of two methods on the same queries.

    Returns ``n`` (pairs with both values finite), ``mean_diff`` (mean of a − b), the
    two-sided paired sign-flip permutation p-value ``p_permutation`` (exact enumeration
    when 2**n ≤ n_permutations, else ``n_permutations`` seeded random flips, with the
    +1 correction) and scipy's Wilcoxon signed-rank ``p_wilcoxon``. All differences
    zero gives p = 1 for both; no pairs gives NaN.
    """
    a = np.asarray(ap_a, dtype=np.float64)
    b = np.asarray(ap_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D arrays of the same length, got {a.shape}, {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    result = {"n": n, "mean_diff": float(d.mean()) if n else float("nan"),
              "p_permutation": float("nan"), "p_wilcoxon": float("nan")}
    if n == 0:
        return result
    if np.all(d == 0):
        result.update(p_permutation=1.0, p_wilcoxon=1.0)
        return result
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    if n <= 20 and 2 ** n <= n_permutations:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        null = np.abs(signs @ d) / n
        result["p_permutation"] = float(np.mean(null >= observed - tol))
    else:
        rng = np.random.default_rng(seed)
        count, done = 0, 0
        chunk = max(1, (1 << 22) // n)
        while done < n_permutations:
            size = min(chunk, n_permutations - done)
            signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
            count += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
            done += size
        result["p_permutation"] = float((count + 1) / (n_permutations + 1))
    from scipy import stats

    result["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return result


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), NaN kept as NaN and left out of the family.

    Sorted ascending, the i-th of m p-values becomes ``max_{j<=i} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def all_pairs_tests(ap: Mapping[str, pd.Series], n_permutations: int = 10000, seed: int = 0) -> pd.DataFrame:
    """:func:`paired_test` of every pair of methods (``a`` listed before ``b``) on their common queries,
    with Holm-adjusted permutation p-values over the whole family (``p_holm``).

    ``ap`` maps method -> per-query AP indexed by query id. Columns: ``a, b, n, mean_diff_ap`` (a − b),
    ``p_permutation, p_wilcoxon, p_holm``.
    """
    names = list(ap)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            left = ap[a]
            right = ap[b].reindex(left.index)
            test = paired_test(left.to_numpy(), right.to_numpy(), n_permutations, seed)
            rows.append({"a": a, "b": b, "n": test["n"], "mean_diff_ap": test["mean_diff"],
                         "p_permutation": test["p_permutation"], "p_wilcoxon": test["p_wilcoxon"]})
    frame = pd.DataFrame(rows, columns=["a", "b", "n", "mean_diff_ap", "p_permutation", "p_wilcoxon"])
    frame["p_holm"] = holm(frame["p_permutation"].to_numpy()) if len(frame) else []
    return frame
