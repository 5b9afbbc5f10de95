"""The block-wise feedback simulation (:mod:`cbir.scoring.feedback_sim`) gives the numbers, lists and scores the
simulation gave before it (pinned in ``tests/data/feedback_pinned.json`` from that code, ``tests/feedback_cases.py``),
and relevance comes from any judgements."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from feedback_cases import CASES, PINNED, case, frame_json, run

from cbir.scoring import feedback_eval as fe
from cbir.scoring.judgements import Judgement, Judgements
from cbir.search.feedback import FeedbackSettings

PINS = json.loads(PINNED.read_text())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method", ["rocchio", "svm"])
def test_simulation_is_the_pinned_one(name, method):
    sim, rounds, test = run(name, method)
    pin = PINS[f"{name}-{method}"]
    assert frame_json(sim.per_query) == pin["per_query"]  # every float equal (JSON keeps 17 digits)
    assert frame_json(sim.trace) == pin["trace"]
    assert rounds == pin["rounds"] and test == pin["test"]


def test_block_size_does_not_change_anything():
    q, db, ql, dl, exclude = case(**CASES["loo"])
    settings = FeedbackSettings("rocchio", 1.0, 0.75, 0.15, 1.0, 0)
    one = fe.simulate(q, db, ql, dl, settings, rounds=2, top_k=3, exclude=exclude, block_size=1)
    many = fe.simulate(q, db, ql, dl, settings, rounds=2, top_k=3, exclude=exclude, block_size=5)
    pd.testing.assert_frame_equal(one.per_query, many.per_query, check_exact=True)
    pd.testing.assert_frame_equal(one.trace, many.trace, check_exact=True)


def unit(deg: float) -> np.ndarray:
    return np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))], dtype=np.float32)


def test_judgements_drive_the_user_and_junk_is_ignored():
    """Query at 0 deg; rows at 5, 10, 20, 30, 60 deg. Positives: rows 1 (10 deg) and 3 (30 deg); junk: row 0
    (5 deg). Round 0 shows the top 2 of the whole database: 0 (junk: neither mark) and 1 (relevant). Junk is out
    of the residual collection: round 0 ranks 1, 2, 3, 4 -> hits at 1 and 3: AP (1 + 2/3) / 2. Round 1 hides row
    1 (marked) but not row 0; the residual collection (without junk) is 2, 3, 4 under the moved query
    (Rocchio, towards 10 deg): 2 (20), 3 (30), 4 (60) -> the one positive left at rank 2: AP 1/2."""
    db = np.stack([unit(a) for a in (5, 10, 20, 30, 60)])
    judgements = Judgements((Judgement([1, 3], junk=[0]),), 5)
    sim = fe.simulate_judged(unit(0)[None], db, judgements, FeedbackSettings("rocchio", 1.0, 0.75, 0.15, 1.0, 0),
                             rounds=1, top_k=2, database_ids=list("abcde"))
    r0, r1 = sim.per_query.iloc[0], sim.per_query.iloc[1]
    assert r0["ap"] == pytest.approx((1 + 2 / 3) / 2) and r0["n_relevant"] == 2
    assert r1["ap"] == pytest.approx(1 / 2) and r1["n_relevant"] == 1 and r1["n_shown"] == 1
    assert r1["initial_ap"] == pytest.approx(1 / 2)
    shown = sim.trace
    assert shown[shown["round"] == 0]["image_id"].tolist() == ["a", "b"]
    assert shown[shown["round"] == 0]["relevant"].tolist() == [False, True]
    assert shown[shown["round"] == 1]["image_id"].tolist() == ["a", "c"]  # junk is shown again: never marked


def prepared(q, db, ql, dl, exclude=None):
    """A :func:`cbir.search.prepared.load_prepared`-like dict over a manifest of the database then the queries."""
    n_q, n_db = len(q), len(db)
    manifest = pd.DataFrame({"image_id": [f"d{i:03d}" for i in range(n_db)] + [f"q{i:03d}" for i in range(n_q)],
                             "label": list(dl) + list(ql)})
    return {"manifest": manifest, "queries": q, "database": db, "query_rows": np.arange(n_db, n_db + n_q),
            "database_rows": np.arange(n_db), "exclude": exclude}


def test_one_relevant_image_per_query_cannot_be_simulated():
    q, db, _, _, _ = case(**CASES["holdout"])
    data = prepared(q, db, ["x"] * len(q), ["y"] * len(db))
    one_each = Judgements(tuple(Judgement([i] if i % 2 else []) for i in range(len(q))), len(db))
    settings = FeedbackSettings("rocchio", 1.0, 0.75, 0.15, 1.0, 0)
    entry, sim = fe.evaluate_method(data, settings, 2, 3, 20, 20, 0, judgements=one_each)
    assert sim is None and entry == {"unavailable": fe.NO_SECOND_RELEVANT}
    assert fe.NO_SECOND_RELEVANT.startswith("no query has more than one relevant image")
    results = {"m": {"rocchio": entry}}
    fe.add_holm(results)
    assert fe.table(results).empty and fe.tests_table(results).empty
    two = Judgements(one_each.items[:-1] + (Judgement([0, 1]),), len(db))
    assert fe.unavailable(two) is None and fe.unavailable(Judgements((), len(db))) == fe.NO_SECOND_RELEVANT


def test_a_seeded_query_sample_above_max_queries():
    q, db, ql, dl, _ = case(**CASES["holdout"])
    data = prepared(q, db, ql, dl)
    settings = FeedbackSettings("rocchio", 1.0, 0.75, 0.15, 1.0, 0)
    entry, sim = fe.evaluate_method(data, settings, 2, 3, 50, 50, 7, max_queries=4)
    pick = np.sort(np.random.default_rng(7).choice(len(q), 4, replace=False))
    assert entry["queries"] == {"simulated": 4, "of": len(q), "seed": 7,
                                "sample": "seeded, without replacement; intervals are over the simulated queries"}
    alone = fe.simulate(q[pick], db, ql[pick], dl, settings, rounds=2, top_k=3,
                        query_ids=[f"q{i:03d}" for i in pick], database_ids=[f"d{i:03d}" for i in range(len(db))])
    pd.testing.assert_frame_equal(sim.per_query, alone.per_query, check_exact=True)
    assert entry["rounds"] == fe.summarize_rounds(alone.per_query, 50, 7)
    everyone, _ = fe.evaluate_method(data, settings, 2, 3, 50, 50, 7, max_queries=len(q))
    assert "queries" not in everyone and everyone["rounds"][0]["n_queries"] == len(q)
