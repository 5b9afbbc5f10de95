"""The block-wise feedback simulation (:mod:`cbir.feedback_sim`) gives the numbers, lists and scores the
simulation gave before it (pinned in ``tests/data/feedback_pinned.json`` from that code, ``tests/feedback_cases.py``),
and relevance comes from any judgements."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from feedback_cases import CASES, PINNED, case, frame_json, run

from cbir import feedback_eval as fe
from cbir.judgements import Judgement, Judgements
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
