"""αQE and DBA on a hand-built 2-D example, and the shared config entry point."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.search.rerank import (
    alpha_query_expansion,
    apply_rerank,
    database_augmentation,
    rerank_config,
)

S3 = np.sqrt(3.0)
# d0 = (1, 0), d1 = (0, 1), d2 = (cos 30°, sin 30°): cos(d0, d2) = √3/2, cos(d1, d2) = 1/2
DB = np.array([[1.0, 0.0], [0.0, 1.0], [S3 / 2, 0.5]], dtype=np.float32)
Q = np.array([[1.0, 0.0]], dtype=np.float32)


def normalised(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_alpha_query_expansion_hand_example():
    # top-2 of q: d0 (sim 1) then d2 (sim √3/2); alpha = 1: q + 1·d0 + (√3/2)·d2
    out = alpha_query_expansion(Q, DB, n=2, alpha=1.0)
    np.testing.assert_allclose(out, normalised([[2.75, S3 / 4]]), atol=1e-6)
    # alpha = 3 weighs d2 by (√3/2)^3
    w = (S3 / 2) ** 3
    out = alpha_query_expansion(Q, DB, n=2, alpha=3.0)
    np.testing.assert_allclose(out, normalised([[2 + w * S3 / 2, w / 2]]), atol=1e-6)


def test_average_query_expansion_is_alpha_zero():
    out = alpha_query_expansion(Q, DB, n=2, alpha=0.0)
    np.testing.assert_allclose(out, normalised([[2 + S3 / 2, 0.5]]), atol=1e-6)


def test_negative_neighbours_get_zero_weight():
    db = np.array([[-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    out = alpha_query_expansion(np.array([[1.0, 0.0]]), db, n=2, alpha=3.0)
    np.testing.assert_allclose(out, [[1.0, 0.0]], atol=1e-7)


def test_query_expansion_respects_leave_one_out_exclusion():
    # query = database row 0, excluded: its single neighbour is d2, not itself
    out = alpha_query_expansion(DB[:1], DB, n=1, alpha=1.0, exclude=np.array([0]))
    np.testing.assert_allclose(out, normalised([[1 + 0.75, S3 / 4]]), atol=1e-6)


def test_database_augmentation_hand_example():
    # nearest other row: d0 -> d2 (√3/2), d1 -> d2 (1/2), d2 -> d0 (√3/2); alpha = 1
    out = database_augmentation(DB, n=1, alpha=1.0)
    expected = normalised([[1.75, S3 / 4], [S3 / 4, 1.25], [S3, 0.5]])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


def test_apply_rerank_kinds():
    q, db = apply_rerank(Q, DB, None)
    np.testing.assert_allclose(q, Q)
    np.testing.assert_allclose(db, DB, atol=1e-7)
    cfg = {"kind": "aqe", "n": 2, "alpha": 1.0}
    q, db = apply_rerank(Q, DB, cfg)
    np.testing.assert_allclose(q, alpha_query_expansion(Q, DB, 2, 1.0))
    np.testing.assert_allclose(db, DB, atol=1e-7)
    q, db = apply_rerank(Q, DB, {"kind": "dba", "n": 1, "alpha": 1.0})
    np.testing.assert_allclose(db, database_augmentation(DB, 1, 1.0))
    np.testing.assert_allclose(q, Q)
    q, db = apply_rerank(Q, DB, {"kind": "dba+aqe", "n": 1, "alpha": 1.0})
    augmented = database_augmentation(DB, 1, 1.0)
    np.testing.assert_allclose(db, augmented)
    np.testing.assert_allclose(q, alpha_query_expansion(Q, augmented, 1, 1.0))


@pytest.mark.parametrize("config, message", [
    ({"kind": "diffusion"}, "unknown rerank kind 'diffusion'"),
    ({"kind": "aqe", "n": 0}, "n >= 1"),
    ({"kind": "aqe", "alpha": -1}, "alpha >= 0"),
    ({"kind": "aqe", "n": "many"}, "n must be an integer"),
    ("aqe", "must be a mapping"),
])
def test_rerank_config_errors(config, message):
    with pytest.raises(CbirError, match=message):
        rerank_config(config)


def test_rerank_config_defaults():
    assert rerank_config({"kind": "AQE"}) == {"kind": "aqe", "n": 3, "alpha": 3.0}
    assert rerank_config({"kind": "none"}) is None
    assert rerank_config(None) is None
