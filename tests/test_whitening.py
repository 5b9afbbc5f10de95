"""PCA-whitening: learned on database rows only, identity covariance, clipping, save/load round-trip."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
from sklearn.decomposition import PCA

from cbir.errors import CbirError
from cbir.features.whitening import (
    Whitening,
    apply_whitening,
    fit_whitening,
    load_whitening,
    save_whitening,
    whiten_features,
)


@pytest.fixture
def db() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 3.0).astype(np.float32)


def test_output_dimension_dtype_and_unit_rows(db):
    fitted = fit_whitening(db, dim=5)
    assert (fitted.dim, fitted.input_dim) == (5, 12)
    out = apply_whitening(fitted, db[:7])
    assert out.shape == (7, 5) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_whitened_database_has_identity_covariance(db):
    for dim in (4, 12, None):
        raw = apply_whitening(fit_whitening(db, dim), db, l2_normalize=False).astype(np.float64)
        np.testing.assert_allclose(raw.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.cov(raw, rowvar=False), np.eye(raw.shape[1]), atol=1e-4)


def test_matches_sklearn_pca_whiten_transform(db):
    fitted = fit_whitening(db, dim=6)
    pca = PCA(n_components=6, whiten=True, svd_solver="full").fit(db.astype(np.float64))
    queries = np.random.default_rng(1).normal(size=(9, 12)) * 2
    expected = pca.transform(queries)
    # principal directions are defined up to sign: align them before comparing
    signs = np.sign(np.sum(fitted.components * pca.components_, axis=1))
    got = apply_whitening(fitted, queries, l2_normalize=False) * signs
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(apply_whitening(fitted, queries) * signs, unit, atol=1e-5)


def test_dim_is_clipped_with_a_warning(caplog):
    rng = np.random.default_rng(2)
    few = rng.normal(size=(6, 20))
    with caplog.at_level(logging.WARNING, logger="cbir.features.whitening"):
        fitted = fit_whitening(few, dim=64)
    assert fitted.dim == 5  # centred 6-row data spans at most 5 dimensions
    assert "whitening dim 64 exceeds min(N - 1, D) = min(5, 20)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cbir.features.whitening"):
        assert fit_whitening(rng.normal(size=(50, 8)), dim=30).dim == 8
    assert "using 8" in caplog.text
    caplog.clear()
    low_rank = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 10))
    with caplog.at_level(logging.WARNING, logger="cbir.features.whitening"):
        assert fit_whitening(low_rank, dim=10).dim == 3
    assert "exceeds the rank 3" in caplog.text


def test_no_warning_when_dim_fits(db, caplog):
    with caplog.at_level(logging.WARNING, logger="cbir.features.whitening"):
        fit_whitening(db, dim=12)
    assert caplog.text == ""


def test_fit_sees_only_the_database():
    assert list(inspect.signature(fit_whitening).parameters) == ["db", "dim"]
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(40, 6))
    is_db = np.arange(40) % 4 != 0
    out = whiten_features(feats, is_db, dim=4)
    fitted = fit_whitening(feats[is_db], dim=4)
    np.testing.assert_array_equal(out, apply_whitening(fitted, feats))
    # wildly different queries change neither the learned whitening nor any database row
    moved = feats.copy()
    moved[~is_db] = rng.normal(size=((~is_db).sum(), 6)) * 100 + 50
    out2 = whiten_features(moved, is_db, dim=4)
    np.testing.assert_array_equal(out2[is_db], out[is_db])
    np.testing.assert_array_equal(out2[~is_db], apply_whitening(fitted, moved[~is_db]))


def test_rows_are_whitened_independently(db):
    fitted = fit_whitening(db, dim=8)
    batch = apply_whitening(fitted, db[:5])
    one_by_one = np.vstack([apply_whitening(fitted, row[None]) for row in db[:5]])
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-6, atol=1e-7)


def test_save_load_round_trip(db, tmp_path):
    fitted = fit_whitening(db, dim=7)
    path = tmp_path / "white" / "method.npz"
    save_whitening(fitted, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["method.npz"]  # no temporary left over
    with np.load(path) as data:
        assert sorted(data.files) == ["components", "mean", "variances"]
    loaded = load_whitening(path)
    assert isinstance(loaded, Whitening) and loaded.dim == 7
    np.testing.assert_array_equal(loaded.mean, fitted.mean)
    np.testing.assert_array_equal(loaded.components, fitted.components)
    np.testing.assert_array_equal(apply_whitening(loaded, db), apply_whitening(fitted, db))


def test_load_errors(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(CbirError, match=r"load_whitening: cannot read a whitening from .*nope.npz"):
        load_whitening(missing)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mean=np.zeros(3))
    with pytest.raises(CbirError, match=r"cannot read a whitening from .*wrong.npz"):
        load_whitening(wrong)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=np.zeros(3), components=np.zeros((2, 4)), variances=np.ones(2))
    with pytest.raises(CbirError, match=r"holds inconsistent arrays \(mean \(3,\), components \(2, 4\)"):
        load_whitening(bad)


@pytest.mark.parametrize(("db", "dim", "match"), [
    (np.zeros(5), 2, r"the database features must be a numeric \[N, D\] array, got shape \(5,\)"),
    (np.ones((1, 4)), 2, r"need at least 2 database rows"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, r"contains NaN or infinite values"),
    (np.array([["a", "b"], ["c", "d"]]), 1, r"must be a numeric \[N, D\] array"),
    (np.ones((5, 3)), 0, r"'dim' must be an integer >= 1 or null, got 0"),
    (np.ones((5, 3)), 2.5, r"'dim' must be an integer >= 1 or null, got 2.5"),
    (np.ones((5, 3)), 2, r"the 5 database rows are all identical"),
])
def test_fit_errors(db, dim, match):
    with pytest.raises(CbirError, match=match):
        fit_whitening(db, dim)


def test_apply_errors(db):
    fitted = fit_whitening(db, dim=3)
    with pytest.raises(CbirError, match=r"features have 5 dimensions but the whitening was learned on 12"):
        apply_whitening(fitted, np.ones((2, 5)))
    with pytest.raises(CbirError, match=r"is_database must be a boolean array of length 300"):
        whiten_features(db, np.ones(300), dim=3)
