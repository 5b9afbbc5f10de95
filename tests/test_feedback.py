"""Relevance feedback (:mod:`cbir.search.feedback`) and its simulated-user evaluation
(:mod:`cbir.scoring.feedback_eval`): hand-computed answers on 2-D toys, exclusion of marked images,
tie-breaking, the SVM's fallback, determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cbir.scoring import feedback_eval as fe
from cbir.search.exact import exact_topk
from cbir.search.feedback import FeedbackSettings, Marks, direction, rank, rank_one, rocchio


#: the feedback settings of conf/feedback/ (the code has no defaults of its own)
CONF = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "feedback" / "default.yaml").read_text())


def fb(method: str = "rocchio", **changes) -> FeedbackSettings:
    """``conf/feedback/``'s settings for ``method``, with ``changes``."""
    return replace(FeedbackSettings.from_config(CONF, method), **changes)


def test_settings_have_no_defaults_in_code():
    with pytest.raises(TypeError):
        FeedbackSettings("rocchio")  # every value comes from conf/feedback/
    assert fb("svm") == FeedbackSettings("svm", 1.0, 0.75, 0.15, 1.0, 0)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# the database of the 2-D toy: unit vectors at these angles (row i at ANGLES[i] degrees)
ANGLES = [0, 30, 60, 90, 180, 270]
DB = np.array([unit(a) for a in ANGLES], dtype=np.float32)


def test_rocchio_moved_query_by_hand():
    """q = (1, 0); relevant (0, 1); irrelevant (-1, 0); alpha 1, beta 0.75, gamma 0.15:
    q' = (1, 0) + 0.75 (0, 1) - 0.15 (-1, 0) = (1.15, 0.75), norm sqrt(1.885)."""
    moved = rocchio([1, 0], [[0, 1]], [[-1, 0]], 1.0, 0.75, 0.15)
    norm = math.sqrt(1.15 ** 2 + 0.75 ** 2)
    np.testing.assert_allclose(moved, [1.15 / norm, 0.75 / norm], rtol=1e-6)
    assert moved.dtype == np.float32
    # means over several marks: relevant (0, 1) and (1, 0) -> mean (0.5, 0.5); no irrelevant term
    moved = rocchio([1, 0], [[0, 1], [1, 0]], np.zeros((0, 2)), 1.0, 1.0, 0.5)
    np.testing.assert_allclose(moved, np.array([1.5, 0.5]) / math.sqrt(2.5), rtol=1e-6)
    # no marks: the query itself; a zero-length moved query falls back to the query
    np.testing.assert_array_equal(rocchio([0.6, 0.8], [], [], 1.0, 0.75, 0.15), np.float32([0.6, 0.8]))
    np.testing.assert_allclose(rocchio([1, 0], [[-1, 0]], [], alpha=1.0, beta=1.0, gamma=0.0), [1, 0])


def test_rocchio_ranking_by_hand_and_marked_images_left_out():
    """Query at 0 degrees, row 3 (90 deg) relevant, row 4 (180 deg) irrelevant: q' = (1.15, 0.75) points at
    33.1 degrees; the unmarked rows by cosine with it: 30 (3.1 deg away), 60, 0, 270 deg."""
    settings = fb("rocchio", alpha=1.0, beta=0.75, gamma=0.15)
    idx, scores, used = rank_one(unit(0), DB, Marks(relevant=(3,), irrelevant=(4,)), k=10, settings=settings)
    assert used == "rocchio"
    assert idx.tolist() == [1, 2, 0, 5]  # 3 and 4 are marked: never returned
    theta = math.atan2(0.75, 1.15)
    expected = [math.cos(math.radians(a) - theta) for a in (30, 60, 0, 270)]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # k smaller than what is left: the best k
    assert rank_one(unit(0), DB, Marks((3,), (4,)), k=2, settings=settings)[0].tolist() == [1, 2]


def test_no_marks_is_the_plain_exact_ranking():
    q = np.array([unit(10), unit(200)], dtype=np.float32)
    idx, scores, used = rank(q, DB, [Marks(), Marks()], 6, fb())
    ref_idx, ref_scores = exact_topk(q, DB, 6)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(scores, ref_scores)
    assert used == ["rocchio", "rocchio"]


def test_ties_break_by_database_row_and_exclude():
    """Rows 0 and 2 are the same vector, as are 1 and 3: equal scores keep the lower row first."""
    db = np.array([unit(0), unit(90), unit(0), unit(90), unit(45)], dtype=np.float32)
    idx, _, _ = rank_one(unit(0), db, Marks(), 5, fb())
    assert idx.tolist() == [0, 2, 4, 1, 3]
    idx, _, _ = rank_one(unit(0), db, Marks(irrelevant=(4,)), 5, fb(), exclude=0)
    assert idx.tolist() == [2, 1, 3]  # q' = (1, 0) - 0.15 (0.707, 0.707): 0 excluded, 4 marked


def test_fewer_rows_left_than_k_pads_with_minus_one():
    idx, scores, _ = rank(np.float32([unit(0)]), DB, [Marks((1, 2), (3, 4))], 6, fb())
    assert idx.tolist() == [[0, 5, -1, -1, -1, -1]]
    assert np.isnan(scores[0, 2:]).all()


def test_svm_ranks_by_its_decision_function():
    """Relevant: the query (0 deg) and rows 1, 2 (30, 60 deg); irrelevant: rows 4, 5 (180, 270 deg).
    The linear SVM's scores are w.x + b of the unmarked rows, ranked best first."""
    from sklearn.svm import SVC

    settings = fb("svm", svm_c=1.0, seed=0)
    marks = Marks(relevant=(1, 2), irrelevant=(4, 5))
    idx, scores, used = rank_one(unit(0), DB, marks, k=10, settings=settings)
    assert used == "svm"
    model = SVC(kernel="linear", C=1.0, class_weight="balanced", random_state=0)
    model.fit(np.vstack([unit(0), DB[[1, 2, 4, 5]]]).astype(np.float64), [1, 1, 1, 0, 0])
    decision = model.decision_function(DB[[0, 3]].astype(np.float64))
    order = np.argsort(-decision, kind="stable")
    assert idx.tolist() == np.array([0, 3])[order].tolist()
    np.testing.assert_allclose(scores, decision[order], atol=1e-5)


def test_svm_falls_back_to_rocchio_with_one_kind_of_mark():
    svm = fb("svm")
    roc = fb("rocchio")
    for marks in (Marks(relevant=(3,)), Marks(irrelevant=(4,)), Marks()):
        d = direction(np.float32(unit(0)), DB, marks, svm)
        assert d.used == "rocchio" and d.note
        a = rank_one(unit(0), DB, marks, 6, svm)
        b = rank_one(unit(0), DB, marks, 6, roc)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_marks_are_checked():
    with pytest.raises(ValueError, match="both relevant and irrelevant"):
        Marks((1, 2), (2,))
    with pytest.raises(ValueError, match="marked database positions"):
        rank_one(unit(0), DB, Marks((9,)), 3, fb())
    with pytest.raises(ValueError, match="unknown feedback method"):
        fb("knn")
    assert Marks((1,), (2,)).add((3, 1), (4,)) == Marks((1, 3), (2, 4))


def test_deterministic_on_random_data():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(200, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:5] + 0.1 * rng.normal(size=(5, 16)).astype(np.float32)
    marks = [Marks(tuple(range(10 + i, 14 + i)), tuple(range(50 + i, 55 + i))) for i in range(5)]
    for method in ("rocchio", "svm"):
        first = rank(q, db, marks, 20, fb(method))
        again = rank(q.copy(), db.copy(), marks, 20, fb(method))
        np.testing.assert_array_equal(first[0], again[0])
        np.testing.assert_array_equal(first[1], again[1])
        blocked = rank(q, db, marks, 20, fb(method), block_size=2)  # other BLAS blocks: same order
        np.testing.assert_array_equal(first[0], blocked[0])
        np.testing.assert_allclose(first[1], blocked[1], atol=1e-6)
        for i in range(5):
            assert not set(first[0][i]) & set(marks[i].marked)


# ------------------------------------------------------------------ simulated user, residual collection


def toy_collection():
    """Query at 0 deg (label a); database rows: a at 10, 20, 100 deg; b at 5, 50, 200 deg."""
    db = np.array([unit(a) for a in (10, 20, 100, 5, 50, 200)], dtype=np.float32)
    labels = ["a", "a", "a", "b", "b", "b"]
    return np.float32([unit(0)]), db, ["a"], labels


def test_simulation_residual_collection_by_hand():
    """Round 0 ranks by cosine: rows 3 (5 deg, b), 0 (10, a), 1 (20, a), 4 (50, b), 2 (100, a), 5 (200, b).
    The user sees the top 2 (rows 3 and 0): 0 relevant, 3 irrelevant. Rocchio (1, 1, 1):
    q' = (1,0) + unit(10) - unit(5) ~ (0.9977, 0.0865) at 4.96 deg. Round 1 ranks the residual
    collection {1, 4, 2, 5}: 1 (20), 4 (50), 2 (100), 5 (200); relevance a, b, a, b.
    Round 0 AP over 3 relevant: (1/2 + 2/3 + 3/5) / 3; round 1 AP over the 2 relevant left: (1 + 2/3) / 2.
    The initial ranking on round 1's residual collection: 1, 4, 2, 5 too (same order here)."""
    q, db, ql, dl = toy_collection()
    sim = fe.simulate(q, db, ql, dl, fb("rocchio", alpha=1.0, beta=1.0, gamma=1.0), rounds=1, top_k=2,
                      database_ids=[f"r{i}" for i in range(6)])
    r0, r1 = sim.per_query.iloc[0], sim.per_query.iloc[1]
    assert r0["ap"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert r1["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert (r0["n_relevant"], r1["n_relevant"]) == (3, 2)
    assert (r0["n_shown"], r1["n_shown"]) == (0, 2)
    assert r1["initial_ap"] == pytest.approx(r1["ap"])
    assert r0["initial_ap"] == pytest.approx(r0["ap"])
    # P@10 of a ranking shorter than 10 is undefined, as in the evaluate stage
    assert np.isnan(r0["p@10"]) and np.isnan(r1["p@10"])
    trace = sim.trace
    assert trace[trace["round"] == 0]["image_id"].tolist() == ["r3", "r0"]
    assert trace[trace["round"] == 0]["relevant"].tolist() == [False, True]
    assert trace[trace["round"] == 1]["image_id"].tolist() == ["r1", "r4"]


def test_simulation_gain_is_measured_against_the_same_residual_collection():
    """A query between classes: feedback moves it towards class a. Database (label: angle):
    b: 5, a: 15, b: -20, b: -30, a: 40, a: 50. Round 0 top 2: 5 (b), 15 (a). Rocchio (1, 0.75, 0.15) moves q
    to (1.575, 0.181), 6.56 deg. On the residual collection {-20 b, -30 b, 40 a, 50 a} the initial order is
    -20, -30, 40, 50 (AP (1/3 + 2/4) / 2) while the moved query ranks -20, 40, -30, 50 (AP (1/2 + 2/4) / 2)."""
    angles = [5, 15, -20, -30, 40, 50]
    labels = ["b", "a", "b", "b", "a", "a"]
    db = np.array([unit(a) for a in angles], dtype=np.float32)
    settings = fb("rocchio", alpha=1.0, beta=0.75, gamma=0.15)
    sim = fe.simulate(np.float32([unit(0)]), db, ["a"], labels, settings, rounds=1, top_k=2)
    r1 = sim.per_query.iloc[1]
    moved = rocchio(unit(0), [unit(15)], [unit(5)], 1.0, 0.75, 0.15)
    theta = math.degrees(math.atan2(moved[1], moved[0]))
    left = [2, 3, 4, 5]
    order = sorted(left, key=lambda i: (-math.cos(math.radians(angles[i] - theta)), i))
    assert order == [2, 4, 3, 5]  # -20 b, 40 a, -30 b, 50 a
    assert theta == pytest.approx(math.degrees(math.atan2(0.75 * math.sin(math.radians(15)) - 0.15 * math.sin(
        math.radians(5)), 1 + 0.75 * math.cos(math.radians(15)) - 0.15 * math.cos(math.radians(5)))), abs=1e-4)
    assert r1["ap"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert sim.trace[sim.trace["round"] == 1]["query_id"].size == 2
    # the initial ranking with the shown rows (0, 1) removed: -20 b, -30 b, 40 a, 50 a
    assert r1["initial_ap"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    test = fe.last_round_test(sim.per_query, n_permutations=100)
    assert test["n"] == 1 and test["mean_diff_ap"] == pytest.approx(r1["ap"] - r1["initial_ap"], abs=1e-6)


def test_simulation_matches_rank_with_the_accumulated_marks():
    """Round r of the simulation is :func:`rank` with the union of the marks the trace shows for rounds < r."""
    rng = np.random.default_rng(1)
    db = rng.normal(size=(60, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    labels = np.array(list("abc"))[rng.integers(0, 3, 60)]
    q = db[:4] + 0.3 * rng.normal(size=(4, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ql = labels[:4]
    for method in ("rocchio", "svm"):
        settings = fb(method)
        sim = fe.simulate(q, db, ql, labels, settings, rounds=3, top_k=5)
        trace = sim.trace
        for i in range(4):
            marks = Marks()
            for r in range(4):
                shown = trace[(trace["round"] == r) & (trace["query_id"] == i)]
                idx, scores, _ = rank_one(q[i], db, marks, 5, settings)
                assert shown["image_id"].tolist() == idx.tolist()
                np.testing.assert_array_equal(shown["score"].to_numpy(), scores)
                good = shown["relevant"].to_numpy()
                marks = marks.add(idx[good].tolist(), idx[~good].tolist())
        again = fe.simulate(q, db, ql, labels, settings, rounds=3, top_k=5)
        pd.testing.assert_frame_equal(sim.per_query, again.per_query)
        pd.testing.assert_frame_equal(sim.trace, again.trace)


def test_summary_and_tables():
    q, db, ql, dl = toy_collection()
    sim = fe.simulate(np.vstack([q, q]), db, ql * 2, dl, fb("rocchio"), rounds=2, top_k=1)
    rounds = fe.summarize_rounds(sim.per_query, n_bootstrap=50, seed=0)
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["n_shown"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["map"] == pytest.approx(sim.per_query.iloc[0]["ap"], abs=1e-6)
    results = {"m": {"rocchio": {"rounds": rounds, "test": fe.last_round_test(sim.per_query, 100)}}}
    fe.add_holm(results)
    frame, tests = fe.table(results), fe.tests_table(results)
    assert list(frame["round"]) == [0, 1, 2] and tests["p_holm"].notna().all()
    shown = fe.display(frame, tests)
    assert shown["ΔAP vs initial"].tolist()[:2] == ["", ""] and shown["ΔAP vs initial"].iloc[2]
    assert fe.markdown(shown).count("\n") == 5


def test_the_report_carries_the_feedback_table_when_the_stage_wrote_one():
    from cbir.report.markdown import feedback_section

    table = "| method | feedback | round |\n|---|---|---|\n| hog | svm | 3 |\n"
    section = feedback_section("toy", table)
    assert section.startswith("## Relevance feedback (simulated user, residual collection)")
    assert table.strip() in section and "reports/toy/feedback/" in section
    assert "![P@10 against the feedback round](feedback/p10_rounds.png)" in section
    assert feedback_section("toy", None) == "" and feedback_section("toy", "") == ""
