"""The vectorised bootstrap and the shared sign flips give the old numbers bit for bit: scipy.stats.bootstrap
itself and one paired test per pair drawing its own signs (``tests/evaluation_oracle.py``) are the oracles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from evaluation_oracle import old_bootstrap_ci, old_paired_permutation
from scipy import stats

from cbir.scoring.statistics import all_pairs_tests, bootstrap_ci, paired_test, paired_tests


@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_is_scipys_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 400)), int(rng.integers(1, 14))
    values = rng.random((n, m))
    values[rng.random((n, m)) < 0.2] = np.nan  # NaN-skipping means
    values[:, 0] = np.round(values[:, 0], 1)  # repeated values
    if m > 2:
        values[:, 1] = np.nan  # a column with no value
        values[1:, 2] = np.nan  # and one with a single value
    n_boot = int(rng.choice([1, 7, 1000, 1003]))
    for level in (0.95, 0.9):
        lo, hi = bootstrap_ci(values, n_boot, seed + 11, level)
        old_lo, old_hi = old_bootstrap_ci(values, n_boot, seed + 11, level)
        np.testing.assert_array_equal(lo, old_lo)
        np.testing.assert_array_equal(hi, old_hi)
    one = rng.random(50)
    np.testing.assert_array_equal(bootstrap_ci(one, 300, 3)[0], old_bootstrap_ci(one, 300, 3)[0])


def test_bootstrap_batches_across_the_draws():
    """Many rows and columns: several scipy batches (2**22 // (n m) resamples each), the last one partial."""
    rng = np.random.default_rng(9)
    values = rng.random((3000, 12))
    values[rng.random(values.shape) < 0.05] = np.nan
    for got, want in zip(bootstrap_ci(values, 1000, 0), old_bootstrap_ci(values, 1000, 0)):
        np.testing.assert_array_equal(got, want)


def test_bootstrap_degenerate_inputs():
    assert np.isnan(bootstrap_ci(np.ones((1, 3)), 100, 0)[0]).all()
    assert np.isnan(bootstrap_ci(np.ones((5, 2)), 0, 0)[1]).all()
    lo, hi = bootstrap_ci(np.full((6, 1), 0.25), 50, 0)
    assert lo[0] == hi[0] == 0.25


def one_by_one(a, b, n_permutations, seed):
    """The old paired test of one pair: its own sign draws, then scipy's Wilcoxon."""
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    return old_paired_permutation(d, n_permutations, seed), float(stats.wilcoxon(d).pvalue), float(d.mean())


def test_shared_sign_flips_give_each_pair_its_own_numbers():
    rng = np.random.default_rng(4)
    n = 300
    ap = {f"m{i}": pd.Series(np.clip(rng.normal(0.5 + 0.01 * i, 0.2, n), 0, 1), index=[f"q{j}" for j in range(n)])
          for i in range(5)}
    ap["m3"].iloc[::7] = np.nan  # a shorter pair length: its own draws
    ap["m4"] = ap["m0"].copy()  # all differences zero: p = 1
    frame = all_pairs_tests(ap, n_permutations=2000, seed=5)
    assert len(frame) == 10
    for row in frame.itertuples(index=False):
        a, b = ap[row.a].to_numpy(), ap[row.b].reindex(ap[row.a].index).to_numpy()
        if np.all(np.nan_to_num(a - b) == 0):
            assert row.p_permutation == 1.0 and row.p_wilcoxon == 1.0
            continue
        p_perm, p_wil, diff = one_by_one(a, b, 2000, 5)
        assert (row.p_permutation, row.p_wilcoxon, row.mean_diff_ap) == (p_perm, p_wil, diff)


def test_paired_tests_mixes_exact_random_and_empty_pairs():
    rng = np.random.default_rng(2)
    small = (rng.random(6), rng.random(6))  # 2**6 <= 10000: exact enumeration
    big = (rng.random(40), rng.random(40))
    empty = (np.full(3, np.nan), np.ones(3))
    out = paired_tests([small, big, empty, big], 10000, 1)
    assert out[0] == paired_test(*small, 10000, 1) and out[1] == out[3] == paired_test(*big, 10000, 1)
    assert out[2]["n"] == 0 and np.isnan(out[2]["p_permutation"])
    assert out[1]["p_permutation"] == one_by_one(*big, 10000, 1)[0]
    with pytest.raises(ValueError, match="two 1-D arrays of the same length"):
        paired_tests([(np.ones(3), np.ones(4))])
