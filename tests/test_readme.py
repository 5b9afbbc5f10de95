"""The README is the front door: its results table is the pipeline's, and its commands exist."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from cbir.report.readme import END, START, results_block


def test_readme_results_table_matches_committed_metrics(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert len(params["datasets"]) >= 2
    for ds in params["datasets"]:
        metrics_file = repo_root / "metrics" / f"{ds}.json"
        assert metrics_file.exists(), f"metrics of {ds} are not committed: run `make repro`"
        metrics = json.loads(metrics_file.read_text())
        assert set(metrics) == set(params["methods"]), "metrics/ is stale: run `make repro`"
    readme = (repo_root / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == results_block(repo_root).strip(), "README is stale: run `python -m cbir readme`"


def test_readme_shows_the_two_commands_first(repo_root):
    readme = (repo_root / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert "make repro" in first_block and "make test" in first_block
    makefile = (repo_root / "Makefile").read_text()
    for target in ("repro:", "test:", "paper:"):
        assert f"\n{target}" in makefile


def test_ci_runs_the_readme_test_command(repo_root):
    assert "make test" in (repo_root / ".ci" / "run").read_text()


def test_results_block_has_a_cross_dataset_summary_from_a_fresh_clone(tmp_path):
    """Only metrics/ and reports/ exist (a fresh clone): the full metrics and each method's kind come from
    reports/<ds>/metrics.json; features JSON and params.yaml, when present, name the kind first."""
    full = {"d1": {"p@10": 0.5, "ci95": {"p@10": [0.4, 0.6]}, "kind": "deep"},
            "d2": {"p@10": 0.7, "ci95": {"p@10": [0.6, 0.8]}, "kind": "deep"},
            "h1": {"p@10": 0.3, "ci95": {"p@10": [0.2, 0.4]}, "kind": "handcrafted"},
            "x": {"p@10": 0.9, "ci95": {"p@10": [0.8, 1.0]}}}
    for ds in ("alpha", "beta"):
        (tmp_path / "reports" / ds).mkdir(parents=True)
        (tmp_path / "reports" / ds / "metrics.json").write_text(json.dumps(full))
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{ds}.json").write_text(json.dumps({m: {"p@10": e["p@10"]} for m, e in full.items()}))
    # beta: the features JSON says d2 is handcrafted; params.yaml names x's kind
    (tmp_path / "data/features/beta").mkdir(parents=True)
    (tmp_path / "data/features/beta/d2.json").write_text(json.dumps({"config": {"kind": "handcrafted"}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"methods": {"x": {"kind": "precomputed"}}}))
    block = results_block(tmp_path)
    summary = block.split("Best per dataset", 1)[1].splitlines()
    assert summary[2:] == [
        "| dataset | by | best deep method | mean [95% CI] | best traditional method | mean [95% CI] |",
        "|---|---|---|---|---|---|",
        "| `alpha` | P@10 | `d2` | 0.700 [0.600, 0.800] | `h1` | 0.300 [0.200, 0.400] |",
        "| `beta` | P@10 | `d1` | 0.500 [0.400, 0.600] | `d2` | 0.700 [0.600, 0.800] |"]
    assert block.count("| method |") == 1  # one table across datasets
    across = block.split("| method |", 1)[1].splitlines()
    assert across[0] == " alpha P@10 | alpha mAP | beta P@10 | beta mAP |"
    assert across[2] == "| `d1` | 0.500 [0.400, 0.600] | – | 0.500 [0.400, 0.600] | – |"
    assert "- `alpha`: held-out queries, ? queries against ? database images; relevant = same class; P@10, mAP" in block


def _pairs_entry(micro_ap: float, kind: str) -> dict:
    """A full metrics entry of a copy detection benchmark, as evaluate writes it."""
    return {"p@10": 0.08, "map": 0.9, "ci95": {"p@10": [0.07, 0.09], "map": [0.85, 0.95]}, "kind": kind,
            "n_queries": 200, "n_database": 300, "n_queries_without_relevant": 30,
            "benchmark": {"kind": "pairs", "micro_ap": micro_ap,
                          "compact": {"micro_ap": micro_ap, "micro_ap_lo": micro_ap - 0.1, "micro_ap_hi": micro_ap + 0.1,
                                      "recall@p0.9": 0.5, "recall@p0.9_lo": 0.0, "recall@p0.9_hi": 0.7}}}


def test_results_block_shows_a_copy_detection_dataset_in_its_own_metrics(tmp_path):
    """A benchmark of kind `pairs` beside a class-level dataset: µAP, R@P90 and mAP with intervals, its protocol
    under the table, and its best methods chosen by µAP (not by P@10, which is at most 0.1 there)."""
    tux = {"d1": {"p@10": 0.5, "map": 0.3, "ci95": {"p@10": [0.4, 0.6], "map": [0.2, 0.4]}, "kind": "deep",
                  "n_queries": 60, "n_database": 679}}
    near = {"d1": _pairs_entry(0.7, "deep"), "d2": _pairs_entry(0.8, "deep"), "h1": _pairs_entry(0.6, "handcrafted")}
    near["h1"]["p@10"] = 0.09  # the best handcrafted by P@10 would not change the answer: there is one
    for ds, full in (("tux", tux), ("near", near)):
        (tmp_path / "reports" / ds).mkdir(parents=True)
        (tmp_path / "reports" / ds / "metrics.json").write_text(json.dumps(full))
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{ds}.json").write_text(json.dumps({m: {"map": e["map"]} for m, e in full.items()}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"datasets": {"tux": {}, "near": {}}}, sort_keys=False))
    block = results_block(tmp_path)
    lines = block.splitlines()
    assert "| method | tux P@10 | tux mAP | near µAP | near R@P90 | near mAP |" in lines
    assert ("| `d1` | 0.500 [0.400, 0.600] | 0.300 [0.200, 0.400] | 0.700 [0.600, 0.800] | 0.500 [0.000, 0.700] "
            "| 0.900 [0.850, 0.950] |") in lines
    assert "| `d2` | – | – | 0.800 [0.700, 0.900] | 0.500 [0.000, 0.700] | 0.900 [0.850, 0.950] |" in lines
    assert ("- `near`: 200 benchmark queries (30 without a reference in the database) against 300 database images; "
            "copy detection: relevant = the image a query was made from; µAP and R@P90") in block
    assert "| `near` | µAP | `d2` | 0.800 [0.700, 0.900] | `h1` | 0.600 [0.500, 0.700] |" in lines
    assert "| `tux` | P@10 | `d1` | 0.500 [0.400, 0.600] | – | – |" in lines


def test_across_table_states_each_protocol(tmp_path):
    from cbir.report.across import csv_text, latex, markdown

    found = {"tux": {"metrics": {"m": {"p@10": 0.5, "p@10_lo": 0.4, "p@10_hi": 0.6, "map": 0.3, "map_lo": 0.2,
                                       "map_hi": 0.4}},
                     "protocol": "holdout", "n_queries": 60, "n_database": 679},
             "corel": {"metrics": {"m": {"p@10": 0.9, "map": 0.8}, "n": {"p@10": 0.1}},
                       "protocol": "leave_one_out", "n_queries": 1000, "n_database": 1000}}
    text = markdown(found)
    assert "| `m` | 0.500 [0.400, 0.600] | 0.300 [0.200, 0.400] | 0.900 | 0.800 |" in text
    assert "| `n` | – | – | 0.100 | – |" in text
    assert "- `tux`: held-out queries, 60 queries against 679 database images" in text
    assert "- `corel`: leave-one-out (every image queries the others), 1000 queries against 1000" in text
    rows = csv_text(found).splitlines()
    assert rows[0] == "method,dataset,protocol,n_queries,n_database,metric,mean,lo,hi"
    assert rows[1:3] == ["m,tux,holdout,60,679,p@10,0.5,0.4,0.6", "m,tux,holdout,60,679,map,0.3,0.2,0.4"]
    assert "n,corel,leave_one_out,1000,1000,p@10,0.1,," in rows and len(rows) == 6
    assert r"\multicolumn{2}{c}{corel}" in latex(found) and "60 queries against 679" in latex(found)


def _manifest(folder, n_queries: int, n_database: int) -> None:
    folder.mkdir(parents=True)
    rows = ["image_id,path,label,split,width,height,sha256,protocol"]
    rows += [f"q{i},q{i}.png,x,query,8,8,{i:064d},holdout" for i in range(n_queries)]
    rows += [f"d{i},d{i}.png,x,database,8,8,{n_queries + i:064d},holdout" for i in range(n_database)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")


def test_across_reads_a_benchmark_kind_from_its_judgements(tmp_path):
    from cbir.errors import CbirError
    from cbir.report.across import csv_text, latex, markdown, protocol_of

    _manifest(tmp_path / "near", 3, 2)
    (tmp_path / "near" / "judgements.json").write_text(json.dumps({"kind": "pairs", "queries": [
        {"query_id": "q0", "positives": ["d0"]}, {"query_id": "q1", "positives": ["d1"]},
        {"query_id": "q2", "positives": []}]}))
    entry = protocol_of(tmp_path / "near" / "manifest.csv")
    assert entry == {"protocol": "holdout", "n_queries": 3, "n_database": 2, "kind": "pairs", "n_without_reference": 1}
    _manifest(tmp_path / "tux", 2, 4)
    assert protocol_of(tmp_path / "tux" / "manifest.csv") == {"protocol": "holdout", "n_queries": 2, "n_database": 4}
    found = {"near": {"metrics": {"m": {"micro_ap": 0.5, "micro_ap_lo": 0.25, "micro_ap_hi": 0.75, "recall@p0.9": 0.5,
                                        "map": 1.0, "map_lo": 1.0, "map_hi": 1.0, "p@10": 0.5}}, **entry}}
    text = markdown(found)
    assert "| method | near µAP | near R@P90 | near mAP |" in text
    assert "| `m` | 0.500 [0.250, 0.750] | 0.500 | 1.000 [1.000, 1.000] |" in text
    assert "- `near`: 3 benchmark queries (1 without a reference in the database) against 2 database images" in text
    assert csv_text(found).splitlines()[1:] == ["m,near,benchmark:pairs,3,2,micro_ap,0.5,0.25,0.75",
                                                "m,near,benchmark:pairs,3,2,recall@p0.9,0.5,,",
                                                "m,near,benchmark:pairs,3,2,map,1.0,1.0,1.0"]
    tex = latex(found)
    assert r"\multicolumn{3}{c}{near}" in tex and r"$\mu$AP & R@P90 & mAP" in tex and "µ" not in tex
    for bad in (json.dumps({"kind": "pairs"}), json.dumps({"kind": "pairs", "queries": [1]}), "{not json"):
        (tmp_path / "near" / "judgements.json").write_text(bad)
        with pytest.raises(CbirError, match=r"judgements.json is not a judgements file; run `dvc repro curate@near`"):
            protocol_of(tmp_path / "near" / "manifest.csv")
