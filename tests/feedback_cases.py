"""Seeded feedback-simulation cases (ties, duplicates, leave-one-out, a class with one image) whose results from
the simulation before the scale work are pinned in ``tests/data/feedback_pinned.json``
(``python tests/feedback_cases.py`` wrote it, at that commit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PINNED = Path(__file__).parent / "data" / "feedback_pinned.json"
CASES = {"holdout": dict(seed=3, n_q=9, n_db=70, dim=6, loo=False),
         "loo": dict(seed=5, n_q=12, n_db=40, dim=4, loo=True),
         "ties": dict(seed=8, n_q=7, n_db=50, dim=3, loo=False)}


def case(seed: int, n_q: int, n_db: int, dim: int, loo: bool):
    """``(queries, database, query_labels, database_labels, exclude)``: clustered unit vectors in 4 classes
    (+ a class ``z`` of one image); a fifth of the database duplicated rows (exact ties); under ``loo`` the
    queries are database rows, excluded from their own ranking."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    labels = rng.integers(0, 4, n_db)
    db = (centres[labels] + 0.9 * rng.normal(size=(n_db, dim))).astype(np.float32)
    dup = rng.choice(n_db, n_db // 5, replace=False)
    db[dup] = db[rng.integers(0, n_db, dup.size)]
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    db_labels = np.array([f"c{v}" for v in labels], dtype=object)
    db_labels[0] = "z"
    if loo:
        rows = np.sort(rng.choice(n_db, n_q, replace=False))
        return db[rows], db, db_labels[rows], db_labels, rows.astype(np.int64)
    q = (centres[rng.integers(0, 4, n_q)] + 0.9 * rng.normal(size=(n_q, dim))).astype(np.float32)
    q[0] = db[3]  # a query equal to a database row
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q_labels = np.array([f"c{v}" for v in rng.integers(0, 4, n_q)], dtype=object)
    q_labels[1] = "z"
    return q, db, q_labels, db_labels, None


def run(name: str, method: str):
    from cbir.scoring import feedback_eval as fe
    from cbir.search.feedback import FeedbackSettings

    q, db, ql, dl, exclude = case(**CASES[name])
    settings = FeedbackSettings(method, 1.0, 0.75, 0.15, 1.0, 0)
    sim = fe.simulate(q, db, ql, dl, settings, rounds=3, top_k=4, exclude=exclude)
    return sim, fe.summarize_rounds(sim.per_query, 200, 0), fe.last_round_test(sim.per_query, 500, 0)


def frame_json(frame) -> dict:
    return {c: [None if isinstance(v, float) and v != v else (v.item() if hasattr(v, "item") else v)
                for v in frame[c].tolist()] for c in frame.columns}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    out = {}
    for name in CASES:
        for method in ("rocchio", "svm"):
            sim, rounds, test = run(name, method)
            out[f"{name}-{method}"] = {"per_query": frame_json(sim.per_query), "trace": frame_json(sim.trace),
                                       "rounds": rounds, "test": test}
    PINNED.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
