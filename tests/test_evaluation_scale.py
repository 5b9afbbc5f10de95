"""The fast evaluator (ranks of the judged rows only, :mod:`cbir.scoring.ranks`) against the evaluator it replaces
(a full stable sort of every ranking, ``tests/evaluation_oracle.py``): the same floats, bit for bit, on random
cases full of exact ties, with leave-one-out, partial exclusion, junk and both AP variants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from evaluation_oracle import old_evaluate, old_full_ranking, old_ranking_statistics, old_relevance_metrics

from cbir.scoring.evaluation import evaluate, evaluate_hits, hit_metrics, ranking_statistics, relevance_metrics
from cbir.scoring.judgements import Judgement, Judgements
from cbir.scoring.ranks import judged_hits, ranks_of, sorted_ranks
from cbir.search.exact import full_ranking


def tied_case(seed: int, n_db: int = 240, n_q: int = 31, dim: int = 3, loo: bool = False):
    """Small-integer features: most scores are shared by several rows (exact ties everywhere)."""
    rng = np.random.default_rng(seed)
    db = rng.integers(-2, 3, size=(n_db, dim)).astype(np.float32)
    db[np.abs(db).sum(axis=1) == 0] = 1
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    labels = rng.integers(0, 4, n_db).astype(str)
    if loo:
        rows = rng.choice(n_db, n_q, replace=False)
        exclude = rows.astype(np.int64)
        exclude[::4] = -1  # some queries exclude nothing: their ranking still has N - 1 places
        return db[rows], db, labels[rows], labels, exclude
    q = db[rng.integers(0, n_db, n_q)] + 3 * rng.integers(0, 2, size=(n_q, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, db, rng.integers(0, 5, n_q).astype(str), labels, None


def assert_same(a, b):
    pd.testing.assert_frame_equal(a.per_query, b.per_query, check_exact=True)
    np.testing.assert_array_equal(a.precision_at, b.precision_at)
    np.testing.assert_array_equal(a.interpolated, b.interpolated)
    assert (a.n_database, a.ap) == (b.n_database, b.ap)


def test_the_oracle_ranks_as_full_ranking_does():
    q, db, _, _, exclude = tied_case(0, loo=True)
    old = np.concatenate([r for _, r in old_full_ranking(q, db, exclude, 5)])
    new = np.concatenate([r for _, r in full_ranking(q, db, exclude=exclude, block_size=5)])
    np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ap", ["non-interpolated", "trapezoidal"])
def test_class_label_metrics_are_the_old_evaluators_bit_for_bit(seed, ap):
    q, db, ql, dl, exclude = tied_case(seed, loo=seed % 2 == 1)
    block = [1, 4, 1024][seed % 3]
    ks = (1, 3, 10, 50, 239, 400)  # 400 > N: no column, as before
    old = old_ranking_statistics(q, db, ql, dl, ks=ks, exclude=exclude, curve_k=60, block_size=block, ap=ap)
    new = ranking_statistics(q, db, ql, dl, ks=ks, exclude=exclude, curve_k=60, block_size=block, ap=ap)
    assert_same(old, new)
    assert np.isfinite(new.per_query["ap"]).sum() > 0


@pytest.mark.parametrize("seed", range(4))
def test_junk_and_explicit_judgements_bit_for_bit(seed):
    """revisitop-style judgements: positives, junk that overlaps them, queries with no positive."""
    rng = np.random.default_rng(100 + seed)
    q, db, _, _, exclude = tied_case(seed, n_db=90, n_q=12, loo=seed % 2 == 0)
    items = []
    for i in range(len(q)):
        pos = rng.choice(90, int(rng.integers(0, 12)), replace=False)
        junk = np.concatenate([rng.choice(90, int(rng.integers(0, 6)), replace=False), pos[:1]])
        if exclude is not None and exclude[i] >= 0 and i % 3:
            junk = np.append(junk, exclude[i])
        items.append(Judgement(pos, junk))
    judgements = Judgements(tuple(items), 90)
    for ap in ("non-interpolated", "trapezoidal"):
        old = old_evaluate(old_full_ranking(q, db, exclude, 5), judgements, (1, 5, 10), 20, ap)
        new = evaluate_hits(judged_hits(q, db, judgements, exclude, 5), judgements, (1, 5, 10), 20, ap)
        assert_same(old, new)
        via_rankings = evaluate(list(full_ranking(q, db, exclude=exclude, block_size=5)), judgements, (1, 5, 10),
                                20, ap)
        assert_same(old, via_rankings)


@pytest.mark.parametrize("seed", range(5))
def test_hit_metrics_are_relevance_metrics_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    rel = rng.random((9, 70)) < rng.uniform(0.02, 0.5)
    rel[0] = False
    n_rel = rel.sum(axis=1) + rng.integers(0, 3, 9)  # some positives never ranked
    for ap in ("non-interpolated", "trapezoidal"):
        old = old_relevance_metrics(rel, (1, 5, 10, 70, 71), 30, n_rel, ap)
        new = relevance_metrics(rel, (1, 5, 10, 70, 71), 30, n_rel, ap)
        rows, cols = np.nonzero(rel)
        direct = hit_metrics(rows, cols, 9, 70, (1, 5, 10, 70, 71), 30, n_rel, ap)
        for got in (new, direct):
            assert old[0].keys() == got[0].keys()
            for key in old[0]:
                np.testing.assert_array_equal(old[0][key], got[0][key])
            np.testing.assert_array_equal(old[1], got[1])
            np.testing.assert_array_equal(old[2], got[2])


def test_ranks_of_by_hand_with_ties():
    """Scores of rows 0..5: 0.5, 0.9, 0.5, 0.1, 0.9, 0.5. Order (score desc, row asc): 1, 4, 0, 2, 5, 3."""
    scores = np.float32([0.5, 0.9, 0.5, 0.1, 0.9, 0.5])
    ascending = np.sort(scores)
    assert ranks_of(scores, ascending, np.array([0, 1, 2, 3, 4, 5])).tolist() == [2, 0, 3, 5, 1, 4]
    assert ranks_of(scores, ascending, np.array([5, 3])).tolist() == [4, 5]
    assert ranks_of(scores, ascending, np.array([], dtype=np.int64)).tolist() == []
    assert sorted_ranks(scores, ascending, np.array([0, 2, 4])).tolist() == [1, 2, 3]  # tied: by row
    assert sorted_ranks(scores, ascending, np.array([3, 1])).tolist() == [0, 5]  # row 1 ties with row 4
    assert sorted_ranks(np.float32([0.2, 0.7, 0.4]), np.float32([0.2, 0.4, 0.7]), np.array([2, 0])).tolist() == [1, 2]


def test_judged_hits_checks_its_inputs():
    q = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="1 judgements over 2 rows for 2 queries"):
        next(judged_hits(q, q, Judgements((Judgement([0]),), 2)))
