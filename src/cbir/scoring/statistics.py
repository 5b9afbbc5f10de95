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

    Queries are resampled jointly for all columns, exactly as ``scipy.stats.bootstrap`` (percentile method,
    ``rng=np.random.default_rng(seed)``, ``batch = 2**22 // (n * m)``) resamples them: the same index matrix,
    drawn batch by batch from the same stream, the same NaN-skipping means summed in the same order, and
    scipy's own quantiles of them, so the bounds are scipy's bit for bit (``tests/test_statistics_fast.py``).
    The NaNs are zeroed once rather than in every resample, and the finite counts are only summed where a
    column has NaNs. Fewer than two finite values in a column, or
    ``n_bootstrap < 1``: NaN bounds.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    nan = np.full(m, np.nan)
    if n_bootstrap < 1 or n < 2:
        return nan, nan.copy()
    from scipy import stats  # imported where used: over a second that most importers never need

    finite = ~np.isnan(values)
    zeroed = np.where(finite, values, 0.0)  # NaNs zeroed once, not in every resample
    counted = None if finite.all() else finite.astype(np.intp)
    rng = np.random.default_rng(seed)
    batch = max(1, (1 << 22) // max(1, n * m))
    theta = np.empty((m, int(n_bootstrap)))
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, int(n_bootstrap), batch):
            size = min(batch, int(n_bootstrap) - start)
            index = rng.integers(0, n, (size, n))  # scipy's rng_integers(rng, 0, n, (size, n))
            # [size, n, m] summed over n in order: scipy's nanmean of its [m, size, n] view adds the same way
            total = np.sum(zeroed[index], axis=1)
            count = n if counted is None else np.sum(counted[index], axis=1)
            theta[:, start:start + size] = np.true_divide(total, count).T
    alpha = np.asarray((1 - level) / 2, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.quantile(theta, np.stack((alpha, 1 - alpha), axis=-1), axis=-1)
    lo = np.atleast_1d(np.asarray(ci[..., 0], dtype=np.float64)).copy()
    hi = np.atleast_1d(np.asarray(ci[..., 1], dtype=np.float64)).copy()
    few = finite.sum(axis=0) < 2
    lo[few] = np.nan
    hi[few] = np.nan
    return lo, hi


def _differences(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D arrays of the same length, got {a.shape}, {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep] - b[keep]


def _flip_counts(diffs: Sequence[np.ndarray], n_permutations: int, seed: int) -> list[int]:
    """For differences of one length ``n``: how many of ``n_permutations`` seeded random sign flips reach each
    one's observed ``|mean|``. The flips are drawn once, chunk by chunk, and shared: each ``d`` meets exactly
    the signs a call of its own draws (the stream is seeded per call), in the same products."""
    n = diffs[0].size
    observed = [abs(d.mean()) for d in diffs]
    tols = [1e-12 * max(1.0, o) for o in observed]
    rng = np.random.default_rng(seed)
    counts, done = [0] * len(diffs), 0
    chunk = max(1, (1 << 22) // n)
    while done < n_permutations:
        size = min(chunk, n_permutations - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        for i, d in enumerate(diffs):
            counts[i] += int(np.sum(np.abs(signs @ d) / n >= observed[i] - tols[i]))
        done += size
    return counts


def paired_tests(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], n_permutations: int = 10000,
                 seed: int = 0) -> list[dict]:
    """:func:`paired_test` of each ``(a, b)`` pair, every one as if called alone (same seed, same numbers bit
    for bit), with the random sign flips drawn once for all pairs of the same length instead of once per pair."""
    diffs = [_differences(a, b) for a, b in pairs]
    results, pending = [], {}
    for i, d in enumerate(diffs):
        n = int(d.size)
        result = {"n": n, "mean_diff": float(d.mean()) if n else float("nan"),
                  "p_permutation": float("nan"), "p_wilcoxon": float("nan")}
        results.append(result)
        if n == 0:
            continue
        if np.all(d == 0):
            result.update(p_permutation=1.0, p_wilcoxon=1.0)
            continue
        if n <= 20 and 2 ** n <= n_permutations:
            observed = abs(d.mean())
            signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
            null = np.abs(signs @ d) / n
            result["p_permutation"] = float(np.mean(null >= observed - 1e-12 * max(1.0, observed)))
        else:
            pending.setdefault(n, []).append(i)
    for members in pending.values():
        for i, count in zip(members, _flip_counts([diffs[i] for i in members], n_permutations, seed)):
            results[i]["p_permutation"] = float((count + 1) / (n_permutations + 1))
    if any(r["n"] and np.isnan(r["p_wilcoxon"]) for r in results):
        from scipy import stats

        for d, result in zip(diffs, results):
            if result["n"] and np.isnan(result["p_wilcoxon"]):
                result["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return results


def paired_test(ap_a: Sequence[float], ap_b: Sequence[float], n_permutations: int = 10000,
                seed: int = 0) -> dict:
    """Paired comparison of per-query scores of two methods on the same queries.

    Returns ``n`` (pairs with both values finite), ``mean_diff`` (mean of a − b), the
    two-sided paired sign-flip permutation p-value ``p_permutation`` (exact enumeration
    when 2**n ≤ n_permutations, else ``n_permutations`` seeded random flips, with the
    +1 correction) and scipy's Wilcoxon signed-rank ``p_wilcoxon``. All differences
    zero gives p = 1 for both; no pairs gives NaN. Many pairs: :func:`paired_tests`.
    """
    return paired_tests([(ap_a, ap_b)], n_permutations, seed)[0]


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
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    tests = paired_tests([(ap[a].to_numpy(), ap[b].reindex(ap[a].index).to_numpy()) for a, b in pairs],
                         n_permutations, seed)
    rows = [{"a": a, "b": b, "n": test["n"], "mean_diff_ap": test["mean_diff"],
             "p_permutation": test["p_permutation"], "p_wilcoxon": test["p_wilcoxon"]}
            for (a, b), test in zip(pairs, tests)]
    frame = pd.DataFrame(rows, columns=["a", "b", "n", "mean_diff_ap", "p_permutation", "p_wilcoxon"])
    frame["p_holm"] = holm(frame["p_permutation"].to_numpy()) if len(frame) else []
    return frame
