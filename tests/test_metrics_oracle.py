"""The metrics proven: hand-worked cases of every official score (junk, Easy/Medium/Hard, trapezoidal AP,
revisitop's mP@k, UKBench N-S, DISC21 µAP), trec_eval (pytrec_eval) as an independent oracle for
AP/P@k/R@k, and a second implementation of revisitop's ``compute_map`` semantics written here from the
paper's definition."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.scoring.benchmark_metrics import (
    copy_detection_scores,
    micro_ap,
    ns_score,
    recall_at_precision,
    revisitop_scores,
)
from cbir.scoring.evaluation import evaluate, judged_relevance, ranking_statistics, relevance_metrics
from cbir.scoring.judgements import Judgement, Judgements
from cbir.search.exact import exact_topk, full_ranking

pytrec_eval = pytest.importorskip("pytrec_eval")


# --- judgements --------------------------------------------------------------------------------------

def test_judgement_is_frozen_sorted_and_junk_wins():
    j = Judgement([5, 1, 3], junk=[3, 7])
    assert j.positives.tolist() == [1, 3, 5] and j.junk.tolist() == [3, 7]
    assert j.counted.tolist() == [1, 5] and j.n_relevant == 2
    with pytest.raises(Exception):
        j.positives = np.array([0])
    with pytest.raises(ValueError):
        j.positives[0] = 9  # read-only
    with pytest.raises(ValueError, match="negative"):
        Judgement([-1, 2])
    with pytest.raises(ValueError, match="out of range"):
        Judgements((Judgement([4]),), n_database=4)
    graded = Judgement([4, 2], grades=[1.0, 3.0])
    assert graded.positives.tolist() == [2, 4] and graded.grades.tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="grades"):
        Judgement([1, 2], grades=[1.0, 0.0])


def test_from_labels_and_leave_one_out_junk():
    j = Judgements.from_labels(["a", "b"], ["b", "a", "a", "c"])
    assert [x.positives.tolist() for x in j.items] == [[1, 2], [0]]
    loo = Judgements.from_labels(["a", "a", "b"], ["a", "a", "b"], exclude=np.array([0, 1, 2]))
    assert loo.n_relevant().tolist() == [1, 1, 0]
    assert loo[0].junk.tolist() == [0] and loo[0].positives is loo[1].positives  # one array per class


def test_from_multilabel_shares_at_least_one_label():
    db = [{"cat"}, {"dog", "cat"}, {"car"}, set()]
    j = Judgements.from_multilabel([{"cat", "car"}, {"dog"}, set()], db, graded=True)
    assert [x.positives.tolist() for x in j.items] == [[0, 1, 2], [1], []]
    assert j[0].grades.tolist() == [1.0, 1.0, 1.0] and j[1].grades.tolist() == [1.0]
    assert Judgements.from_multilabel([["dog", "cat"]], db, graded=True)[0].grades.tolist() == [1.0, 2.0]


def test_revisitop_protocols_choose_positives_and_junk():
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3]}]
    easy, medium, hard = (Judgements.from_revisitop(gnd, p, 6)[0] for p in ("easy", "medium", "hard"))
    assert (easy.positives.tolist(), easy.junk.tolist()) == ([0, 1], [2, 3])
    assert (medium.positives.tolist(), medium.junk.tolist()) == ([0, 1, 2], [3])
    assert (hard.positives.tolist(), hard.junk.tolist()) == ([2], [0, 1, 3])
    with pytest.raises(ValueError, match="protocol"):
        Judgements.from_revisitop(gnd, "extreme", 6)


# --- hand-worked cases ---------------------------------------------------------------------------------

def test_junk_is_removed_before_scoring():
    # ranking: 4 (junk), 0 (pos), 5, 2 (junk), 1 (pos)  ->  0, 5, 1 : hits at ranks 1 and 3
    judgements = Judgements((Judgement([0, 1], junk=[4, 2]),), n_database=6)
    rows = np.array([[4, 0, 5, 2, 1, 3]])
    assert judged_relevance(rows, judgements).tolist() == [[True, False, True, False, False, False]]
    stats = evaluate(rows, judgements, ks=(1, 2, 3))
    row = stats.per_query.iloc[0]
    assert row["p@1"] == 1.0 and row["p@2"] == 0.5 and row["r@3"] == 1.0
    assert row["ap"] == pytest.approx((1 + 2 / 3) / 2)
    trap = evaluate(rows, judgements, ks=(1,), ap="trapezoidal").per_query.iloc[0]
    # hit 1 at rank 1: (1 + 1)/2; hit 2 at rank 3: (1/2 + 2/3)/2; each a recall step of 1/2
    assert trap["ap"] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert stats.ap == "non-interpolated" and evaluate(rows, judgements, ap="trapezoidal").ap == "trapezoidal"
    with pytest.raises(ValueError, match="AP variant"):
        evaluate(rows, judgements, ap="11-point")


def test_trapezoidal_ap_by_hand():
    # hits at ranks 2 and 5, R = 3 (one positive never ranked)
    cols, _, _ = relevance_metrics(np.array([[0, 1, 0, 0, 1]], bool), (), n_relevant=np.array([3]),
                                   ap="trapezoidal")
    expected = ((0 / 1 + 1 / 2) / 2 + (1 / 4 + 2 / 5) / 2) / 3
    assert cols["ap"][0] == pytest.approx(expected)
    plain, _, interp = relevance_metrics(np.array([[0, 1, 0, 0, 1]], bool), (), n_relevant=np.array([3]))
    assert plain["ap"][0] == pytest.approx((1 / 2 + 2 / 5) / 3)
    # recall 1/3 and 2/3 are reached (precision 1/2, 2/5); recall 1 never is: precision 0 there
    np.testing.assert_allclose(interp[0], [0.5] * 4 + [0.4] * 3 + [0.0] * 4)


def test_truncated_ranking_counts_missed_positives():
    judgements = Judgements((Judgement([0, 7, 8]),), n_database=9)
    row = evaluate(np.array([[0, 1, 2]]), judgements, ks=(1, 3)).per_query.iloc[0]
    assert row["n_relevant"] == 3 and row["r@3"] == pytest.approx(1 / 3) and row["ap"] == pytest.approx(1 / 3)


def test_revisitop_easy_medium_hard_by_hand():
    # database rows 0..7; ranking 3 0 5 2 6 1 7 4
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3]}]
    rows = np.array([[3, 0, 5, 2, 6, 1, 7, 4]])
    out = revisitop_scores(rows, gnd, 8, ks=(1, 5))
    # Easy: positives 0, 1; junk 3 and 2 removed -> 0 5 6 1 7 4: hits at ranks 1 and 4
    assert out["easy"]["map"] == pytest.approx(((1 + 1) / 2 + (1 / 3 + 2 / 4) / 2) / 2)
    assert out["easy"]["mp@1"] == 1.0
    assert out["easy"]["mp@5"] == pytest.approx(2 / 4)  # k' = min(5, last positive at 4)
    # Medium: positives 0, 1, 2; junk 3 -> 0 5 2 6 1 7 4: hits at 1, 3, 5
    assert out["medium"]["map"] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3)
    assert out["medium"]["mp@5"] == pytest.approx(3 / 5)
    # Hard: positive 2; junk 3, 0, 1 -> 5 2 6 7 4: hit at 2
    assert out["hard"]["map"] == pytest.approx((0 / 1 + 1 / 2) / 2)
    assert out["hard"]["mp@1"] == 0.0 and out["hard"]["mp@5"] == pytest.approx(1 / 2)


def test_revisitop_query_without_positives_is_left_out():
    gnd = [{"easy": [0], "hard": [], "junk": []}, {"easy": [1], "hard": [2], "junk": []}]
    out = revisitop_scores(np.array([[0, 1, 2], [2, 1, 0]]), gnd, 3, ks=(1,))
    assert np.isnan(out["hard"]["ap"][0]) and out["hard"]["n_queries"] == 1
    assert out["hard"]["map"] == 1.0 and out["easy"]["n_queries"] == 2


def test_ns_score_by_hand():
    # UKBench: groups of 4, the query in the database (counted); 3 and 2 of the group in the top 4
    groups = np.repeat(np.arange(2), 4)
    judgements = Judgements.from_labels(groups[[0, 4]], groups)
    rows = np.array([[0, 1, 5, 2, 3, 4, 6, 7], [4, 0, 5, 1, 6, 7, 2, 3]])
    assert ns_score(rows, judgements) == pytest.approx((3 + 2) / 2)


def test_micro_ap_and_recall_at_precision_by_hand():
    # pooled pairs by score: T F T F, 3 true pairs in the ground truth (one never predicted)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    positive = np.array([True, False, True, False])
    assert micro_ap(scores, positive, 3) == pytest.approx((1 + 2 / 3) / 3)
    assert recall_at_precision(scores, positive, 3, 0.9) == pytest.approx(1 / 3)
    assert recall_at_precision(scores, positive, 3, 0.6) == pytest.approx(2 / 3)
    assert recall_at_precision(np.array([0.5]), np.array([False]), 1) == 0.0
    # tied scores: the false pair is counted first (pessimistic, so ties cannot help)
    assert micro_ap(np.array([0.5, 0.5]), np.array([True, False]), 1) == pytest.approx(1 / 2)


def test_copy_detection_scores_pool_queries_and_skip_junk():
    # query 0's reference is row 2; query 1 has no reference in the database (its pair is false)
    judgements = Judgements((Judgement([2], junk=[0]), Judgement([])), n_database=4)
    rows = np.array([[0, 2], [1, -1]])
    scores = np.array([[0.95, 0.9], [0.92, 0.0]])
    out = copy_detection_scores(rows, scores, judgements)
    # pooled without junk and empty slots: 0.92 (F), 0.9 (T): AP = 1/2, P never reaches 0.9
    assert out["micro_ap"] == pytest.approx(0.5) and out["recall@p0.9"] == 0.0
    assert out["n_positives"] == 1 and out["n_predictions"] == 2


# --- one ranking code path --------------------------------------------------------------------------

def test_full_ranking_is_exact_topk_of_everything():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((7, 4)).astype(np.float32)
    db = np.round(rng.standard_normal((20, 4)), 1).astype(np.float32)
    db[3] = db[11]  # an exact tie
    exclude = np.array([0, -1, 3, 11, 4, -1, 19])
    blocks = list(full_ranking(q, db, exclude=exclude, block_size=3))
    rows = np.concatenate([r for _, r in blocks])
    np.testing.assert_array_equal(rows, exact_topk(q, db, 19, exclude=exclude)[0])
    assert rows.shape == (7, 19) and not any(exclude[i] in rows[i] for i in range(7))


# --- oracle: trec_eval ---------------------------------------------------------------------------------

def _trec(rows: np.ndarray, positives: list[np.ndarray], ks) -> dict:
    qrel = {f"q{i}": {f"d{r}": 1 for r in pos} for i, pos in enumerate(positives) if len(pos)}
    # strictly decreasing scores: trec_eval ranks by score (its own tie-breaking never applies)
    run = {f"q{i}": {f"d{r}": float(len(row) - j) for j, r in enumerate(row)} for i, row in enumerate(rows)}
    measures = {"map", "P." + ",".join(map(str, ks)), "recall." + ",".join(map(str, ks))}
    return pytrec_eval.RelevanceEvaluator(qrel, measures).evaluate({k: v for k, v in run.items() if k in qrel})


@pytest.mark.parametrize("seed", range(6))
def test_ap_precision_recall_agree_with_trec_eval(seed):
    rng = np.random.default_rng(seed)
    n_db, n_q = int(rng.integers(20, 200)), int(rng.integers(3, 25))
    length = n_db if seed % 2 == 0 else int(rng.integers(10, n_db))  # whole rankings and top-L
    rows = np.stack([rng.permutation(n_db)[:length] for _ in range(n_q)])
    positives = [np.flatnonzero(rng.random(n_db) < rng.uniform(0.02, 0.5)) for _ in range(n_q)]
    positives[0] = np.zeros(0, dtype=np.int64)  # a query without relevant items
    ks = sorted({1, 3, 5, 10, min(length, 17)})
    ours = evaluate(rows, Judgements.from_positives(positives, n_db), ks=ks).per_query
    trec = _trec(rows, positives, ks)
    for i, pos in enumerate(positives):
        if not len(pos):
            assert np.isnan(ours.loc[i, "ap"]) and f"q{i}" not in trec
            continue
        got = trec[f"q{i}"]
        assert ours.loc[i, "ap"] == pytest.approx(got["map"], abs=1e-9)
        for k in ks:
            assert ours.loc[i, f"p@{k}"] == pytest.approx(got[f"P_{k}"], abs=1e-9)
            assert ours.loc[i, f"r@{k}"] == pytest.approx(got[f"recall_{k}"], abs=1e-9)
    # mAP: the mean over queries with a relevant item
    assert np.nanmean(ours["ap"]) == pytest.approx(np.mean([v["map"] for v in trec.values()]), abs=1e-9)


def test_class_label_metrics_from_features_agree_with_trec_eval():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((60, 6))
    labels = rng.integers(0, 5, 60)
    stats = ranking_statistics(x, x, labels, labels, ks=(1, 5, 10), exclude=np.arange(60), block_size=7)
    rows = np.concatenate([r for _, r in full_ranking(x, x, exclude=np.arange(60))])
    positives = [np.setdiff1d(np.flatnonzero(labels == labels[i]), [i]) for i in range(60)]
    trec = _trec(rows, positives, (1, 5, 10))
    for i in range(60):
        assert stats.per_query.loc[i, "ap"] == pytest.approx(trec[f"q{i}"]["map"], abs=1e-9)
        assert stats.per_query.loc[i, "p@10"] == pytest.approx(trec[f"q{i}"]["P_10"], abs=1e-9)


# --- oracle: revisitop's compute_map, written again from the definition ------------------------------

def reference_compute_map(ranks: np.ndarray, gnd: list[dict], kappas) -> tuple[float, np.ndarray, np.ndarray]:
    """revisitop's semantics, one query at a time in plain Python: ``ranks`` is ``[L, Q]`` (its layout);
    ``gnd[i]`` has ``ok`` (positives) and ``junk``. For each query: the 0-based positions of the positives
    in the ranking, each lowered by the junk ranked before it; AP is the trapezoid rule over the recall
    steps 1/len(ok); P@k is taken at k' = min(k, last positive's 1-based position)."""
    aps, prs = [], []
    for i, entry in enumerate(gnd):
        ok, junk = set(entry["ok"]), set(entry["junk"])
        if not ok:
            aps.append(np.nan)
            prs.append([np.nan] * len(kappas))
            continue
        positions, skipped = [], 0
        for position, row in enumerate(ranks[:, i]):
            if row in junk:
                skipped += 1
            elif row in ok:
                positions.append(position - skipped)
        ap = 0.0
        for j, rank in enumerate(positions):
            before = 1.0 if rank == 0 else j / rank
            ap += (before + (j + 1) / (rank + 1)) / 2 / len(ok)
        aps.append(ap)
        one_based = [p + 1 for p in positions]
        row = []
        for k in kappas:
            cut = min(max(one_based), k) if one_based else k
            row.append(sum(p <= cut for p in one_based) / cut)
        prs.append(row)
    aps, prs = np.array(aps), np.array(prs)
    return float(np.nanmean(aps)), aps, prs


@pytest.mark.parametrize("seed", range(8))
def test_revisitop_scores_agree_with_a_second_implementation(seed):
    rng = np.random.default_rng(100 + seed)
    n_db, n_q = int(rng.integers(15, 120)), int(rng.integers(2, 12))
    gnd = []
    for _ in range(n_q):
        kind = rng.choice(3, size=n_db, p=[0.7, 0.3 * 0.4, 0.3 * 0.6])
        hard_or_junk = np.flatnonzero(kind == 1)
        junk = np.flatnonzero(kind == 2)
        easy = hard_or_junk[rng.random(hard_or_junk.size) < 0.5]
        hard = np.setdiff1d(hard_or_junk, easy)
        gnd.append({"easy": easy.tolist(), "hard": hard.tolist(), "junk": junk.tolist()})
    gnd[0] = {"easy": [], "hard": gnd[0]["hard"], "junk": gnd[0]["junk"]}  # Easy: a query with no positive
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)  # revisitop's [L, Q]
    kappas = (1, 5, 10)
    ours = revisitop_scores(ranks.T, gnd, n_db, ks=kappas)
    for protocol, (ok_keys, junk_keys) in {"easy": (["easy"], ["junk", "hard"]),
                                            "medium": (["easy", "hard"], ["junk"]),
                                            "hard": (["hard"], ["junk", "easy"])}.items():
        g = [{"ok": sum((e[k] for k in ok_keys), []), "junk": sum((e[k] for k in junk_keys), [])} for e in gnd]
        ref_map, ref_aps, ref_prs = reference_compute_map(ranks, g, kappas)
        if np.isnan(ref_aps).all():
            continue
        assert ours[protocol]["map"] == pytest.approx(ref_map, abs=1e-12)
        np.testing.assert_allclose(ours[protocol]["ap"], ref_aps, atol=1e-12)
        for j, k in enumerate(kappas):
            np.testing.assert_allclose(ours[protocol][f"p@{k}"], ref_prs[:, j], atol=1e-12)
            assert ours[protocol][f"mp@{k}"] == pytest.approx(np.nanmean(ref_prs[:, j]), abs=1e-12)
