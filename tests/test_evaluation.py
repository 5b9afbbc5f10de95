"""Metrics on hand-computed rankings, AP against scikit-learn, bootstrap and paired tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from cbir.scoring.evaluation import (
    RECALL_LEVELS,
    per_class,
    per_query_metrics,
    pk_curve,
    pr_curve,
    ranking_statistics,
    relevance_metrics,
    summarize,
)
from cbir.search.exact import full_order
from cbir.scoring.statistics import bootstrap_ci, paired_test


def metrics(rows, ks=(1, 2, 5, 10), curve_k=0):
    return relevance_metrics(np.array(rows, dtype=bool), ks, curve_k)


def test_hand_computed_ranking():
    cols, _, interp = metrics([[1, 0, 1, 0, 0]], ks=(1, 2, 5, 10))
    assert cols["n_relevant"].tolist() == [2]
    assert [cols[f"p@{k}"][0] for k in (1, 2, 5)] == [1.0, 0.5, 0.4]
    assert "p@10" not in cols and "r@10" not in cols  # only k <= n_database
    assert [cols[f"r@{k}"][0] for k in (1, 2, 5)] == [0.5, 0.5, 1.0]
    assert cols["ap"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert cols["ap@10"][0] == pytest.approx((1 + 2 / 3) / 2)
    # precision at the hits: 1 (recall .5), 2/3 (recall 1)
    np.testing.assert_allclose(interp[0], [1] * 6 + [2 / 3] * 5)


def test_class_with_a_single_relevant_item():
    cols, _, interp = metrics([[0, 0, 1, 0]], ks=(1, 4))
    assert cols["ap"][0] == pytest.approx(1 / 3)
    assert cols["ap@10"][0] == pytest.approx(1 / 3)
    assert cols["r@1"][0] == 0.0 and cols["r@4"][0] == 1.0
    np.testing.assert_allclose(interp[0], [1 / 3] * 11)


def test_query_with_no_relevant_item_is_undefined_and_left_out_of_means():
    cols, _, interp = metrics([[0, 0, 0], [1, 0, 0]], ks=(1, 3))
    assert cols["p@1"].tolist() == [0.0, 1.0]  # precision is defined: 0
    assert np.isnan(cols["ap"][0]) and np.isnan(cols["ap@10"][0]) and np.isnan(cols["r@3"][0])
    assert np.isnan(interp[0]).all()
    frame = pd.DataFrame({"query_id": ["q0", "q1"], "label": ["x", "y"], **cols})
    summary = summarize(frame, n_database=3, n_bootstrap=0)
    assert summary["map"] == 1.0  # mean over the one query that has a relevant item
    assert summary["p@1"] == 0.5
    assert summary["n_queries"] == 2 and summary["n_queries_without_relevant"] == 1


def test_ap_at_10_uses_min_r_10():
    twelve_first = [1] * 12 + [0] * 8
    late = [0] * 10 + [1] * 12
    mixed = [0, 1] + [0] * 12 + [1, 1] + [0] * 4  # R = 3, one hit in the top 10, at rank 2
    cols, _, _ = metrics([twelve_first + [0, 0], late, mixed + [0, 0]], ks=(10,))
    np.testing.assert_allclose(cols["ap@10"], [1.0, 0.0, (1 / 2) / 3])
    assert cols["ap"][2] == pytest.approx((1 / 2 + 2 / 15 + 3 / 16) / 3)


def test_ties_in_scores_break_by_lower_database_row():
    # db rows 0 and 1 tie with the query; row 0 is irrelevant, so P@1 = 0
    db = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    frame = per_query_metrics(np.array([[1, 0]]), db, ["a"], ["b", "a", "a"], ks=(1, 3))
    assert frame.loc[0, "p@1"] == 0.0
    assert frame.loc[0, "ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_leave_one_out_never_counts_the_query_itself():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    frame = per_query_metrics(x, x, ["a", "a", "b"], ["a", "a", "b"], ks=(1, 2),
                              exclude=np.arange(3))
    assert frame["n_relevant"].tolist() == [1, 1, 0]
    assert frame["p@1"].tolist() == [1.0, 1.0, 0.0]
    assert "p@3" not in frame.columns
    assert np.isnan(frame.loc[2, "ap"])


def test_ap_matches_sklearn_on_random_rankings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 80))
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        y[rng.integers(n)] = True
        score = rng.random(n)
        cols, _, _ = relevance_metrics(y[np.argsort(-score)][None, :], ks=(1,))
        assert cols["ap"][0] == pytest.approx(average_precision_score(y, score))


def test_ap_from_features_matches_sklearn():
    rng = np.random.default_rng(1)
    q, db = rng.standard_normal((15, 8)), rng.standard_normal((120, 8))
    q_lab, db_lab = rng.integers(0, 4, 15), rng.integers(0, 4, 120)
    frame = per_query_metrics(q, db, q_lab, db_lab, ks=(10,), block_size=4)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = db / np.linalg.norm(db, axis=1, keepdims=True)
    for i in range(15):
        expected = average_precision_score(db_lab == q_lab[i], dn @ qn[i])
        assert frame.loc[i, "ap"] == pytest.approx(expected, abs=1e-9)


def test_ranking_statistics_curves_and_block_invariance():
    rng = np.random.default_rng(2)
    q, db = rng.standard_normal((9, 6)), rng.standard_normal((30, 6))
    ql, dl = rng.integers(0, 3, 9), rng.integers(0, 3, 30)
    a = ranking_statistics(q, db, ql, dl, ks=(1, 5, 10, 50), curve_k=12, block_size=1)
    b = ranking_statistics(q, db, ql, dl, ks=(1, 5, 10, 50), curve_k=12, block_size=100)
    pd.testing.assert_frame_equal(a.per_query, b.per_query)
    assert a.precision_at.shape == (9, 12)
    np.testing.assert_allclose(a.precision_at[:, [0, 4, 9]], a.per_query[["p@1", "p@5", "p@10"]])
    assert "p@50" not in a.per_query.columns and a.n_database == 30
    curve = pk_curve(a.precision_at)
    assert curve["k"].tolist() == list(range(1, 13))
    np.testing.assert_allclose(curve["precision"], a.precision_at.mean(axis=0))
    pr = pr_curve(a.interpolated)
    assert pr["recall"].tolist() == pytest.approx(list(RECALL_LEVELS))
    assert np.all(np.diff(pr["precision"]) <= 1e-12)  # interpolated precision never rises
    assert pr[["lo", "hi"]].isna().all().all()  # no bootstrap asked for
    banded = pr_curve(np.vstack([a.interpolated, np.full((1, len(RECALL_LEVELS)), np.nan)]), 200, 0)
    np.testing.assert_allclose(banded["precision"], pr["precision"])  # a query with no relevant item is left out
    assert ((banded["lo"] <= banded["precision"] + 1e-12) & (banded["precision"] <= banded["hi"] + 1e-12)).all()


def test_interpolated_precision_hand_example():
    # hits at ranks 2, 3, 6 (R = 3): precision 1/2, 2/3, 1/2 at recall 1/3, 2/3, 1
    _, _, interp = metrics([[0, 1, 1, 0, 0, 1]], ks=(1,))
    np.testing.assert_allclose(interp[0], [2 / 3] * 7 + [1 / 2] * 4)


def test_summarize_schema_bootstrap_and_determinism():
    rng = np.random.default_rng(3)
    n = 200
    frame = pd.DataFrame({"query_id": range(n), "label": rng.integers(0, 5, n),
                          "n_relevant": np.full(n, 10)})
    for k in (1, 5, 10, 20):
        frame[f"p@{k}"] = rng.random(n)
    frame["r@10"] = rng.random(n)
    frame["ap"] = rng.random(n)
    frame["ap@10"] = rng.random(n)
    summary = summarize(frame, n_database=500, n_bootstrap=300, seed=0)
    assert {"p@1", "p@5", "p@10", "p@20", "r@10", "map", "map@10", "n_queries", "n_database",
            "ci95"} <= set(summary)
    assert summary["n_queries"] == 200 and summary["n_database"] == 500
    assert summary["map"] == pytest.approx(frame["ap"].mean(), abs=1e-6)
    for key in ("p@10", "map", "map@10"):
        lo, hi = summary["ci95"][key]
        assert lo < summary[key] < hi
        assert hi - lo < 0.2
    assert summarize(frame, 500, 300, seed=0) == summary
    assert summarize(frame, 500, 300, seed=1)["ci95"] != summary["ci95"]


def test_bootstrap_ci_degenerate_inputs():
    lo, hi = bootstrap_ci(np.ones((10, 2)), 100, 0)
    np.testing.assert_allclose([lo, hi], np.ones((2, 2)))
    lo, hi = bootstrap_ci(np.array([0.5]), 100, 0)
    assert np.isnan(lo).all() and np.isnan(hi).all()
    lo, _ = bootstrap_ci(np.ones((10, 1)), 0, 0)
    assert np.isnan(lo).all()


def test_paired_test_identical_and_clearly_better():
    rng = np.random.default_rng(4)
    base = rng.random(60)
    same = paired_test(base, base.copy(), 2000, 0)
    assert same["p_permutation"] == 1.0 and same["p_wilcoxon"] == 1.0 and same["mean_diff"] == 0
    better = np.clip(base + 0.2 + 0.05 * rng.standard_normal(60), 0, 1)
    result = paired_test(better, base, 2000, 0)
    assert result["mean_diff"] > 0.1
    assert result["p_permutation"] < 0.01 and result["p_wilcoxon"] < 0.01
    assert result["p_permutation"] == pytest.approx(1 / 2001)  # nothing beats the observed
    assert paired_test(better, base, 2000, 0) == result  # seeded


def test_paired_test_exact_enumeration_and_nan_pairs():
    # d = [1, 1, 1]: of the 8 sign patterns only ±(1, 1, 1) reach |mean| = 1 → p = 2/8
    result = paired_test([1.0, 1.0, 1.0, np.nan], [0.0, 0.0, 0.0, 0.5], 1000, 0)
    assert result["n"] == 3
    assert result["p_permutation"] == pytest.approx(0.25)
    assert result["p_wilcoxon"] == pytest.approx(0.25)
    assert np.isnan(paired_test([np.nan], [1.0], 10, 0)["p_permutation"])


def test_per_class_means():
    frame = pd.DataFrame({"query_id": [1, 2, 3], "label": ["b", "a", "b"],
                          "p@10": [0.2, 0.5, 0.4], "ap": [0.1, 0.9, np.nan]})
    out = per_class(frame)
    assert out["label"].tolist() == ["a", "b"]
    assert out["n_queries"].tolist() == [1, 2]
    np.testing.assert_allclose(out["p@10"], [0.5, 0.3])
    np.testing.assert_allclose(out["ap"], [0.9, 0.1])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 6), cols=st.integers(1, 60),
       levels=st.integers(1, 8))
def test_full_order_is_the_stable_descending_order(seed, rows, cols, levels):
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, (rows, cols)) / levels).astype(np.float32)  # many ties
    np.testing.assert_array_equal(full_order(scores), np.argsort(-scores, axis=1, kind="stable"))
