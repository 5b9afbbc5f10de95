"""The standard benchmarks offline: tiny archives in each dataset's real layout through download -> curate ->
extract (a cheap handcrafted method) -> retrieve -> evaluate, the judgements they produce, the official scores
with hand-worked answers, and the generated near-duplicate benchmark (byte-identical on a rerun)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import (PALETTE, bench_params, colour_image, encode, revisitop_archives, run_stages, write_tar,
                           write_zip)
from PIL import Image

from cbir.scoring import benchmark_eval as be
from cbir.scoring.benchmark_metrics import revisitop_scores
from cbir.data.benchmarks import JUDGEMENTS_FILE
from cbir.data.manifest import read_manifest, split_indices
from cbir.data.neardup import FAMILIES, fetch_neardup
from cbir.errors import CbirError
from methods_helpers import from_conf
from cbir.scoring.judgements import Judgement, Judgements
from cbir.search.exact import full_ranking

SMALL_NEARDUP = ["dataset.n_originals=20", "dataset.n_distractors=10", "dataset.n_queries=30", "dataset.n_absent=5",
                 "dataset.size=64"]


def _tree_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- official scores, hand-worked

def _circle(angles_deg) -> np.ndarray:
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_revisitop_scores_hand_worked():
    # the database ranks 0, 1, 2, 3 for the query; easy [1], hard [3], junk [0]
    bench = be.Benchmark("roxford5k", "revisitop", "trapezoidal",
                         Judgements.from_revisitop([{"easy": [1], "hard": [3], "junk": [0]}], "medium", 4),
                         [{"easy": np.array([1]), "hard": np.array([3]), "junk": np.array([0])}], None, None)
    result, official = be.score(bench, _circle([0]), _circle([10, 20, 30, 40]), [1, 5], 5, ["q"], ["x"],
                                n_bootstrap=0)
    # Easy: junk 0 and 3 removed -> 1 first: AP 1. Medium: 0 removed -> hits at 1 and 3:
    # (1/2)(1 + 1)/2 + (1/2)(1/2 + 2/3)/2 = 0.5 + 0.291667. Hard: 0, 1 removed -> 3 at rank 2, R = 1: (0 + 1/2)/2
    assert official["easy"]["map"] == pytest.approx(1.0)
    assert official["medium"]["map"] == pytest.approx(0.5 + (0.5 + 2 / 3) / 4, abs=1e-6)
    assert official["hard"]["map"] == pytest.approx(0.25)
    assert official["compact"] == {"e_map": 1.0, "m_map": pytest.approx(0.791667), "h_map": 0.25}
    assert result.ap == "trapezoidal" and result.per_query["ap"].iloc[0] == pytest.approx(0.791667, abs=1e-6)


@pytest.mark.parametrize("reference_first, expected", [(True, 1.0), (False, 0.5)])
def test_pairs_micro_ap_hand_worked(reference_first, expected):
    # q0's reference is row 0; q1 has none (its top-1 is a false pair). Pooled by score, the true pair first or second
    q = _circle([0, 90])
    db = _circle([5 if reference_first else 30, 90 + (20 if reference_first else 2)])
    bench = be.Benchmark("neardup", "pairs", "non-interpolated",
                         Judgements((Judgement([0]), Judgement([])), 2), None, np.array(["crop", "jpeg"], object), None)
    _, official = be.score(bench, q, db, [1], 1, ["q0", "q1"], ["crop", "jpeg"], top_k=1, n_bootstrap=0)
    assert official["micro_ap"] == pytest.approx(expected)
    assert official["recall@p0.9"] == (1.0 if reference_first else 0.0)
    assert official["families"]["crop"]["micro_ap"] == 1.0 and official["families"]["jpeg"]["micro_ap"] is None
    assert official["families"]["jpeg"]["n_without_reference"] == 1


@pytest.mark.parametrize("reference_first, micro_ap_ci, recall_ci", [(True, [1.0, 1.0], [1.0, 1.0]),
                                                                     (False, [0.5, 1.0], [0.0, 1.0])])
def test_pairs_intervals_pool_the_pairs_of_each_resample(reference_first, micro_ap_ci, recall_ci):
    # q0's reference is row 0, q1 has none. A resample of two queries holds q0 twice (1/4: µAP 1), q0 and q1
    # (1/2: µAP 1 when the true pair scores higher, else 1/2), or q1 twice (1/4: no true pair, NaN, left out),
    # so of 1000 resamples about 2/3 of the finite ones are 1/2 when the false pair outscores the true one
    q = _circle([0, 90])
    db = _circle([5 if reference_first else 30, 90 + (20 if reference_first else 2)])
    bench = be.Benchmark("neardup", "pairs", "non-interpolated",
                         Judgements((Judgement([0]), Judgement([])), 2), None, np.array(["crop", "jpeg"], object), None)
    _, official = be.score(bench, q, db, [1], 1, ["q0", "q1"], ["crop", "jpeg"], top_k=1, n_bootstrap=1000, seed=0)
    assert official["micro_ap_ci95"] == micro_ap_ci and official["recall@p0.9_ci95"] == recall_ci
    assert official["compact"] == {"micro_ap": official["micro_ap"], "micro_ap_lo": micro_ap_ci[0],
                                   "micro_ap_hi": micro_ap_ci[1], "recall@p0.9": official["recall@p0.9"],
                                   "recall@p0.9_lo": recall_ci[0], "recall@p0.9_hi": recall_ci[1]}


def test_pairs_interval_agrees_with_pooling_each_resample_by_hand():
    """The µAP bootstrap against a second implementation: the same seeded resamples, every pair of the picked
    queries sorted by score by hand (ties: false pairs first), AP summed over the true pairs."""
    rng = np.random.default_rng(7)
    q, db = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    refs = [[i % 9] if i < 9 else [] for i in range(12)]
    bench = be.Benchmark("neardup", "pairs", "non-interpolated", Judgements(tuple(Judgement(r) for r in refs), 9),
                         None, np.array(["crop"] * 12, object), None)
    _, official = be.score(bench, q, db, [1], 1, list(range(12)), ["crop"] * 12, top_k=3, n_bootstrap=200, seed=5)
    sims = q @ db.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    draws, pick_rng = [], np.random.default_rng(5)
    for _ in range(200):
        pick = pick_rng.integers(0, 12, 12)
        pairs = sorted(((float(sims[i, j]), j in refs[i]) for i in pick for j in top[i]), key=lambda p: (-p[0], p[1]))
        n_pos = sum(len(refs[i]) for i in pick)
        hits, ap = 0, 0.0
        for rank, (_, true) in enumerate(pairs, 1):
            hits += true
            ap += hits / rank if true else 0.0
        draws.append(ap / n_pos if n_pos else np.nan)
    expected = np.nanpercentile(draws, [2.5, 97.5])
    assert official["micro_ap_ci95"] == pytest.approx(list(expected), abs=1e-6)


def test_ukbench_ns_counts_the_query():
    # 2 groups of 2 rows: query 0's group {0, 1}; ranking 0, 1, 2, 3 -> N-S (top 4) = 2 for the group of 2
    items = (Judgement([1], [0]),)
    bench = be.Benchmark("ukbench", "ukbench", "non-interpolated", Judgements(items, 4), None, None,
                         Judgements((Judgement([0, 1]),), 4))
    _, official = be.score(bench, _circle([0]), _circle([1, 2, 30, 40]), [1], 1, ["q"], ["g"], n_bootstrap=0)
    assert official["ns"] == 2.0


def score_ap_from_ranks_1(ranks, nres):
    """INRIA Holidays' ``holidays_map.py`` AP, transcribed: ``ranks`` are the 0-based ranks of the true
    positives once the query's own result is removed (its ``rank_shift``), ``nres`` how many there are."""
    ap, recall_step = 0.0, 1.0 / nres
    for ntp, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else ntp / float(rank)
        precision_1 = (ntp + 1) / float(rank + 1)
        ap += (precision_1 + precision_0) * recall_step / 2.0
    return ap


def test_holidays_minimal_case_is_the_official_trapezoidal_ap():
    # database [query, positive, distractor]; the ranking [query, distractor, positive]: holidays_map.py
    # drops the query (rank_shift), the positive sits at rank 1 after one false result: (0 + 1/2) / 2 = 0.25
    bench = be.Benchmark("holidays", "groups", "trapezoidal", Judgements((Judgement([1], [0]),), 3), None, None, None)
    result, official = be.score(bench, _circle([0]), _circle([0, 20, 10]), [1], 1, ["q"], ["g"], n_bootstrap=0)
    assert score_ap_from_ranks_1([1], 1) == 0.25
    assert official["map"] == 0.25 and result.per_query["ap"].iloc[0] == 0.25
    assert official["plain_map"] == 0.5 and official["compact"] == {"plain_map": 0.5}


def test_top_k_scores_come_from_the_saved_rankings(tmp_path):
    # two database rows tie at the head for q0; the saved file puts the positive first with a score that the
    # features would not give: the µAP follows the file, not a recomputation
    q, db = _circle([0, 90]), _circle([10, 10, 95])
    bench = be.Benchmark("neardup", "pairs", "non-interpolated",
                         Judgements((Judgement([1]), Judgement([])), 3), None, np.array(["crop", "jpeg"], object), None)
    saved = tmp_path / "m.csv"
    saved.write_text("query_id,rank,image_id,score\nq0,1,d1,0.9\nq0,2,d0,0.9\nq1,1,d2,0.95\nq1,2,d1,0.1\n")
    rows, scores = be.read_saved_topk(saved, ["q0", "q1"], ["d0", "d1", "d2"])
    assert rows.tolist() == [[1, 0], [2, 1]] and scores.tolist() == [[0.9, 0.9], [0.95, 0.1]]
    _, official = be.score(bench, q, db, [1], 1, ["q0", "q1"], ["crop", "jpeg"], top_k=2, n_bootstrap=0,
                           saved=(rows, scores))
    # pooled: 0.95 false, then the tie at 0.9 with the false pair first (DISC21), then the true pair: 1/3
    assert official["micro_ap"] == pytest.approx(1 / 3, abs=1e-6) and official["top_k"] == 2
    _, recomputed = be.score(bench, q, db, [1], 1, ["q0", "q1"], ["crop", "jpeg"], top_k=2, n_bootstrap=0)
    assert recomputed["micro_ap"] == pytest.approx(1 / 3, abs=1e-6)  # the features tie rows 0, 1 exactly too


@pytest.mark.parametrize("text, message", [
    ("query_id,rank,image_id,score\nq0,1,d9,0.5\n", "names d9, which is not in this method's queries or database"),
    ("query_id,rank,image_id,score\nq0,1,d0,0.5\n", "has no ranking for query q1 (1 missing)"),
    ("query,rank\nq0,1\n", "is not a saved ranking (query_id, rank, image_id, score: ValueError)")])
def test_a_bad_saved_ranking_is_one_line(tmp_path, text, message):
    saved = tmp_path / "m.csv"
    saved.write_text(text)
    with pytest.raises(CbirError) as err:
        be.read_saved_topk(saved, ["q0", "q1"], ["d0", "d1"])
    assert message in str(err.value) and "run the retrieve stage again" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the near-duplicate benchmark

def test_neardup_is_byte_identical_and_complete(tmp_path):
    cfg = {"name": "nd", "n_originals": 20, "n_distractors": 10, "n_queries": 30, "n_absent": 5, "size": 64, "seed": 3,
           "root": from_conf("dataset/neardup")["root"]}
    fetch_neardup(cfg, tmp_path / "a")
    fetch_neardup(cfg, tmp_path / "b")
    first, second = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert first == second
    assert len([k for k in first if k.startswith("database/")]) == 30
    assert len([k for k in first if k.startswith("queries/")]) == 30
    truth = (tmp_path / "a" / "ground_truth.csv").read_text().splitlines()[1:]
    assert {line.split(",")[2] for line in truth} == set(FAMILIES)
    assert sum(1 for line in truth if line.split(",")[1] == "") == 5
    assert any(k.endswith(".jpg") for k in first if k.startswith("queries/"))  # JPEG queries stay JPEG
    other = fetch_neardup({**cfg, "seed": 4}, tmp_path / "c")
    assert other["stamps"] != json.loads((tmp_path / "a" / "_source.json").read_text())["stamps"]


def test_neardup_pipeline_scores_every_family(tmp_path):
    metrics = run_stages(bench_params("neardup", *SMALL_NEARDUP), tmp_path)
    official = metrics["color_moments"]["benchmark"]
    assert official["kind"] == "pairs" and set(official["families"]) == set(FAMILIES)
    assert 0.0 <= official["micro_ap"] <= 1.0 and official["n_positives"] == 25
    assert official["micro_ap_ci95"][0] <= official["micro_ap"] <= official["micro_ap_ci95"][1]
    compact = json.loads((tmp_path / "metrics" / "neardup.json").read_text())["color_moments"]
    assert {"map", "p@10", "micro_ap", "recall@p0.9"} <= set(compact)
    assert metrics["color_moments"]["n_queries_without_relevant"] == 5


def _pooled_ap_by_hand(pairs, n_pos):
    """DISC21's µAP and recall at precision 0.9 of ``(score, true)`` pairs: sorted by score, ties false first."""
    pairs = sorted(pairs, key=lambda p: (-p[0], p[1]))
    hits, ap, best = 0, 0.0, 0.0
    for rank, (_, true) in enumerate(pairs, 1):
        hits += true
        ap += hits / rank if true else 0.0
        if hits / rank >= 0.9:
            best = max(best, hits / n_pos)
    return ap / n_pos, best


def test_neardup_headline_metrics_recompute_from_the_saved_files_alone(tmp_path):
    """µAP and R@P90, overall and per family, from data/retrieval/<ds>/<m>.csv and judgements.json only."""
    import csv

    metrics = run_stages(bench_params("neardup", *SMALL_NEARDUP), tmp_path)
    official = metrics["color_moments"]["benchmark"]
    judged = json.loads((tmp_path / "data" / "curated" / "neardup" / JUDGEMENTS_FILE).read_text())
    truth = {q["query_id"]: (set(q["positives"]), q["family"]) for q in judged["queries"]}
    with open(tmp_path / "data" / "retrieval" / "neardup" / "color_moments.csv", newline="") as handle:
        saved = [(r["query_id"], float(r["score"]), r["image_id"]) for r in csv.DictReader(handle)]
    families = sorted({f for _, f in truth.values()}) + [None]
    for family in families:
        pick = {q for q, (_, f) in truth.items() if family is None or f == family}
        pairs = [(score, image in truth[q][0]) for q, score, image in saved if q in pick]
        n_pos = sum(len(truth[q][0]) for q in pick)
        entry = official if family is None else official["families"][family]
        if n_pos == 0:
            assert entry["micro_ap"] is None
            continue
        micro_ap, recall = _pooled_ap_by_hand(pairs, n_pos)
        assert entry["micro_ap"] == round(micro_ap, 6) and entry["recall@p0.9"] == round(recall, 6), family
    compact = json.loads((tmp_path / "metrics" / "neardup.json").read_text())["color_moments"]
    assert compact["micro_ap"] == official["micro_ap"] and compact["recall@p0.9"] == official["recall@p0.9"]


# ---------------------------------------------------------------- archives in each dataset's layout

@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_revisitop_archives_end_to_end(tmp_path, name):
    files = revisitop_archives(tmp_path, name)
    params = bench_params(name, "dataset.archive=[" + ",".join(map(str, files)) + "]")
    root = tmp_path / "repo"
    metrics = run_stages(params, root)
    curated = root / "data" / "curated" / name
    manifest = read_manifest(curated / "manifest.csv")
    assert (manifest["split"] == "query").sum() == 3 and (manifest["split"] == "database").sum() == 12
    with Image.open(next((curated / "queries").iterdir())) as query:  # bbx [4, 4, 40.5, 30.2] as PIL's crop rounds it
        assert query.size == (36, 26)
    provenance = json.loads((root / "data" / "raw" / name / "_source.json").read_text())
    assert all(len(f["sha256"]) == 64 and not f["sha256_pinned"] for f in provenance["files"])
    # the stage's E/M/H are revisitop's compute_map on the same exact ranking
    judged = json.loads((curated / JUDGEMENTS_FILE).read_text())
    q_rows, db_rows, _ = split_indices(manifest)
    bench = be.load_judgements(curated / JUDGEMENTS_FILE, manifest, q_rows, db_rows)
    x = np.load(root / "data" / "features" / name / "color_moments.npy")
    ranking = np.concatenate([r for _, r in full_ranking(x[q_rows], x[db_rows])])
    expected = revisitop_scores(ranking, bench.gnd, len(db_rows))
    for protocol in ("easy", "medium", "hard"):
        assert metrics["color_moments"]["benchmark"][protocol]["map"] == pytest.approx(expected[protocol]["map"],
                                                                                       abs=1e-6)
    assert judged["ap"] == "trapezoidal" and metrics["color_moments"]["ap"] == "trapezoidal"


def test_revisitop_missing_gnd_is_one_line(tmp_path):
    archive, _ = revisitop_archives(tmp_path)
    params = bench_params("roxford5k", f"dataset.archive=[{archive}]")
    from cbir.stages import curate, download

    download.run(params, tmp_path / "repo")
    with pytest.raises(CbirError, match="gnd_roxford5k.pkl not found") as err:
        curate.run(params, tmp_path / "repo")
    assert "\n" not in str(err.value)


def test_pinned_sha256_mismatch_is_refused(tmp_path):
    files = revisitop_archives(tmp_path)
    params = bench_params("roxford5k", "dataset.archive=[" + ",".join(map(str, files)) + "]")
    params["dataset"]["sha256"] = {"gnd_roxford5k.pkl": "0" * 64}
    from cbir.stages import download

    with pytest.raises(CbirError, match="sha256 mismatch for gnd_roxford5k.pkl"):
        download.run(params, tmp_path / "repo")


def _holidays(tmp_path: Path) -> list[Path]:
    # 3 groups (1000, 1001, 1002) of 3, 2 and 2 images, one colour per group, split over jpg1/jpg2 as published
    parts = [{}, {}]
    for g, n in enumerate((3, 2, 2)):
        for j in range(n):
            parts[j % 2][f"jpg/{100000 + g * 100 + j}.jpg"] = encode(colour_image(PALETTE[g], seed=g * 10 + j))
    return [write_tar(tmp_path / f"jpg{i + 1}.tar.gz", members) for i, members in enumerate(parts)]


def test_holidays_archives_end_to_end(tmp_path):
    files = _holidays(tmp_path)
    metrics = run_stages(bench_params("holidays", "dataset.archive=[" + ",".join(map(str, files)) + "]"),
                         tmp_path / "repo")
    judged = json.loads((tmp_path / "repo" / "data" / "curated" / "holidays" / JUDGEMENTS_FILE).read_text())
    first = {q["query_id"]: q for q in judged["queries"]}
    assert sorted(first) == ["query/100000", "query/100100", "query/100200"]
    assert first["query/100000"] == {"query_id": "query/100000", "positives": ["db/100001", "db/100002"],
                                     "junk": ["db/100000"]}
    entry = metrics["color_moments"]
    assert entry["n_queries"] == 3 and entry["n_database"] == 7 and entry["benchmark"]["kind"] == "groups"
    # an independent oracle: rank by cosine, drop the query itself (holidays_map.py's rank_shift), then its
    # score_ap_from_ranks_1; the plain AP (mean precision at each hit) beside it
    root = tmp_path / "repo"
    manifest = read_manifest(root / "data" / "curated" / "holidays" / "manifest.csv")
    x = np.load(root / "data" / "features" / "holidays" / "color_moments.npy")
    ids = manifest["image_id"].tolist()
    aps, plain = [], []
    for q in first.values():
        qi = ids.index(q["query_id"])
        db = [i for i, image_id in enumerate(ids) if image_id.startswith("db/") and image_id != q["junk"][0]]
        order = [db[j] for j in np.argsort(-(x[db] @ x[qi]), kind="stable")]
        tp_ranks = [r for r, i in enumerate(order) if ids[i] in q["positives"]]
        aps.append(score_ap_from_ranks_1(tp_ranks, len(q["positives"])))
        plain.append(np.mean([(j + 1) / (r + 1) for j, r in enumerate(tp_ranks)]))
    assert judged["ap"] == "trapezoidal" and entry["ap"] == "trapezoidal"
    assert entry["map"] == pytest.approx(float(np.mean(aps)), abs=1e-6)
    assert entry["benchmark"]["map"] == pytest.approx(float(np.mean(aps)), abs=1e-6)
    assert entry["benchmark"]["plain_map"] == pytest.approx(float(np.mean(plain)), abs=1e-6)
    compact = json.loads((root / "metrics" / "holidays.json").read_text())["color_moments"]
    assert compact["plain_map"] == entry["benchmark"]["plain_map"]


def test_holidays_manually_rotated_needs_a_folder(tmp_path):
    params = bench_params("holidays", "dataset.rotated=manually_rotated")
    from cbir.stages import download

    with pytest.raises(CbirError, match="manually_rotated needs datasets.holidays.folder"):
        download.run(params, tmp_path)


def test_ukbench_zip_end_to_end(tmp_path):
    members = {f"full/ukbench{i:05d}.jpg": encode(colour_image(PALETTE[i // 4], seed=i)) for i in range(12)}
    archive = write_zip(tmp_path / "ukbench.zip", {**members, "index.html": b"<html></html>"})
    metrics = run_stages(bench_params("ukbench", f"dataset.archive={archive}"), tmp_path / "repo")
    entry = metrics["color_moments"]
    # an independent oracle: each query ranks all 12 (itself included); N-S = its group's images in the top 4
    root = tmp_path / "repo"
    manifest = read_manifest(root / "data" / "curated" / "ukbench" / "manifest.csv")
    x = np.load(root / "data" / "features" / "ukbench" / "color_moments.npy")
    ids = manifest["image_id"].tolist()
    db = [i for i, image_id in enumerate(ids) if image_id.startswith("db/")]
    ns = []
    for qi in (i for i, image_id in enumerate(ids) if image_id.startswith("query/")):
        group = int(ids[qi][-5:]) // 4
        top = [db[j] for j in np.argsort(-(x[db] @ x[qi]), kind="stable")[:4]]
        ns.append(sum(int(ids[i][-5:]) // 4 == group for i in top))
    assert entry["n_queries"] == 12 and entry["benchmark"]["ns"] == pytest.approx(np.mean(ns))
    assert 1.0 <= entry["benchmark"]["ns"] <= 4.0
    compact = json.loads((root / "metrics" / "ukbench.json").read_text())
    assert compact["color_moments"]["ns"] == entry["benchmark"]["ns"]


def test_copydays_archives_end_to_end(tmp_path):
    originals = {b: colour_image(PALETTE[i], seed=i) for i, b in enumerate(("2000", "2001", "2002"))}
    archives = [write_tar(tmp_path / "copydays_original.tar.gz",
                          {f"original/{b}00.jpg": encode(px) for b, px in originals.items()})]
    archives.append(write_tar(tmp_path / "copydays_jpeg.tar.gz", {
        f"jpegqual/{q}/{b}00.jpg": encode(px) for b, px in originals.items() for q in (10, 50)}))
    archives.append(write_tar(tmp_path / "copydays_crop.tar.gz", {
        f"crops/{c}/{b}00.jpg": encode(px[5:30, 5:40]) for b, px in originals.items() for c in (20,)}))
    archives.append(write_tar(tmp_path / "copydays_strong.tar.gz", {
        f"strong/{b}01.jpg": encode(255 - px) for b, px in originals.items()}))
    metrics = run_stages(bench_params("copydays", "dataset.archive=[" + ",".join(map(str, archives)) + "]"),
                         tmp_path / "repo")
    official = metrics["color_moments"]["benchmark"]
    assert set(official["families"]) == {"original", "jpeg", "crop", "strong"}
    assert official["families"]["original"]["micro_ap"] == pytest.approx(1.0)
    assert official["families"]["jpeg"]["n_queries"] == 6 and official["n_positives"] == 3 + 6 + 3 + 3


def test_caltech101_nested_archive_is_class_level(tmp_path):
    inner = {f"101_ObjectCategories/{c}/image_{j:04d}.jpg": encode(colour_image(PALETTE[i], seed=i * 20 + j))
             for i, c in enumerate(("accordion", "airplanes", "BACKGROUND_Google")) for j in range(1, 13)}
    inner_tgz = write_tar(tmp_path / "101_ObjectCategories.tar.gz", inner)
    archive = write_zip(tmp_path / "caltech-101.zip",
                        {"caltech-101/101_ObjectCategories.tar.gz": inner_tgz.read_bytes(),
                         "caltech-101/show_annotation.m": b"%"})
    root = tmp_path / "repo"
    metrics = run_stages(bench_params("caltech101", f"dataset.archive={archive}"), root)
    manifest = read_manifest(root / "data" / "curated" / "caltech101" / "manifest.csv")
    assert sorted(set(manifest["label"])) == ["accordion", "airplanes"]
    assert (manifest["split"] == "query").sum() == 10  # conf/split/holdout.yaml: 5 per class, seed 0
    assert not (root / "data" / "curated" / "caltech101" / JUDGEMENTS_FILE).exists()
    assert "benchmark" not in metrics["color_moments"] and metrics["color_moments"]["ap"] == "non-interpolated"
    provenance = json.loads((root / "data" / "raw" / "caltech101" / "_source.json").read_text())
    assert provenance["left_out"] == ["BACKGROUND_Google"]


def test_unsafe_member_in_a_benchmark_archive_is_refused(tmp_path):
    archive = tmp_path / "ukbench.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../evil.jpg")
        info.size = 0
        tar.addfile(info)
    from cbir.stages import download

    with pytest.raises(CbirError, match="unsafe archive"):
        download.run(bench_params("ukbench", f"dataset.archive={archive}"), tmp_path / "repo")


def test_holidays_ftp_address_says_how_to_give_a_local_copy(tmp_path):
    from cbir.stages import download

    with pytest.raises(CbirError, match="unsupported URL scheme 'ftp'.*datasets.holidays.archive") as err:
        download.run(bench_params("holidays"), tmp_path)
    assert "\n" not in str(err.value)


def test_a_broken_gnd_pickle_is_one_line(tmp_path):
    archive, gnd = revisitop_archives(tmp_path)
    gnd.write_bytes(b"not a pickle")
    params = bench_params("roxford5k", f"dataset.archive=[{archive},{gnd}]")
    from cbir.stages import curate, download

    download.run(params, tmp_path / "repo")
    with pytest.raises(CbirError, match="is not a revisitop ground-truth file") as err:
        curate.run(params, tmp_path / "repo")
    assert "\n" not in str(err.value)


def test_class_level_headline_metrics_recompute_from_the_saved_files_alone(tmp_path):
    """P@10 and mAP of class labels from data/retrieval/<ds>/<m>.csv and the manifest's labels (the saved top-k
    holds the whole ranking here: k = the 12 database images), to the metrics file's 6 decimals."""
    import csv

    from cbir.scoring.metric_files import run as run_evaluate
    from cbir.search.rankings import run as run_retrieve
    from test_retrieve_evaluate_stages import make_params, write_dataset

    manifest = write_dataset(tmp_path)
    params = make_params(retrieval={"k": 12})
    for method in params["methods"]:
        run_retrieve(params, method, tmp_path)
    run_evaluate(params, tmp_path)
    metrics = json.loads((tmp_path / "reports" / "toy" / "metrics.json").read_text())
    label = dict(zip(manifest["image_id"], manifest["label"]))
    n_relevant = manifest[manifest["split"] == "database"]["label"].value_counts().to_dict()
    for method in params["methods"]:
        ranked: dict[str, list[str]] = {}
        with open(tmp_path / "data" / "retrieval" / "toy" / f"{method}.csv", newline="") as handle:
            for row in sorted(csv.DictReader(handle), key=lambda r: (r["query_id"], int(r["rank"]))):
                ranked.setdefault(row["query_id"], []).append(row["image_id"])
        p10, aps = [], []
        for query, images in ranked.items():
            hits = [label[i] == label[query] for i in images]
            p10.append(sum(hits[:10]) / 10)
            aps.append(sum(sum(hits[:r + 1]) / (r + 1) for r, h in enumerate(hits) if h) / n_relevant[label[query]])
        assert metrics[method]["p@10"] == round(float(np.mean(p10)), 6)
        assert metrics[method]["map"] == round(float(np.mean(aps)), 6)
