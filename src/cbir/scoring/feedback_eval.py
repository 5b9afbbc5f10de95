"""Relevance feedback measured: a simulated user over R rounds, scored on the residual collection.

Protocol (per query, for one method's features and one feedback method of
:mod:`cbir.search.feedback`):

* round 0 is the method's own ranking (the retrieve stage's exact cosine ranking);
* after round ``r`` the user is shown its top ``top_k`` results and marks each one by the dataset's
  judgements (:mod:`cbir.scoring.judgements`; class labels: the same label): a positive relevant, a negative
  irrelevant, junk neither (junk is also left out of every residual collection, as the evaluator
  removes it); marks accumulate over the rounds;
* round ``r + 1`` re-ranks with every mark so far; marked images are never returned again;
* **residual collection**: round ``r`` is scored on the database minus every image shown in rounds
  ``0 .. r-1`` (for round 0 that is the whole database), so images the user has already seen are
  not counted again. ``P@10`` and ``AP`` (over the relevant images left in the residual collection,
  :func:`cbir.scoring.evaluation.relevance_metrics`) are computed on that ranking, with 95% bootstrap
  intervals over queries (:func:`cbir.scoring.statistics.bootstrap_ci`);
* the same residual collection also scores the round-0 ranking (``initial_*``: no feedback, the
  shown images removed), and a paired test (:func:`cbir.scoring.statistics.paired_test`) compares the last
  round with it, query by query: the gain of feedback on equal footing. Holm over all tests.

Where no query has a second relevant image (copy detection: one reference per query) there is nothing
to measure, and the results say so (:data:`NO_SECOND_RELEVANT`). At scale, the simulation runs one
block of queries at a time (:mod:`cbir.scoring.feedback_sim`, memory bounded there) and, above
``feedback.max_queries`` queries, on a seeded sample of that many (stated in the results).

Pure: arrays and frames in, frames and dicts out (the stage writes them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.scoring import evaluation as ev
from cbir.scoring import statistics as st
from cbir.report.tables import format_p
from cbir.scoring.feedback_sim import round_scores, run_queries
from cbir.scoring.judgements import Judgements
from cbir.search.feedback import FeedbackSettings

#: the cut-off of the reported precision (the paper's top-10)
P_AT = 10
#: per-query columns of :func:`simulate`
PER_QUERY_COLUMNS = ("round", "query_id", "label", "n_shown", "n_relevant", f"p@{P_AT}", "ap",
                     f"initial_p@{P_AT}", "initial_ap", "used")
#: columns of the rankings trace: what the simulated user saw (and marked) in each round
TRACE_COLUMNS = ("round", "query_id", "rank", "image_id", "score", "relevant")


@dataclass
class Simulation:
    """One method x feedback method: per-query metrics of every round and the shown top-k (``trace``)."""

    per_query: pd.DataFrame
    trace: pd.DataFrame


def simulate(queries: np.ndarray, database: np.ndarray, query_labels: Sequence, database_labels: Sequence,
             settings: FeedbackSettings, rounds: int = 3, top_k: int = 10, query_ids: Sequence | None = None,
             database_ids: Sequence | None = None, exclude: np.ndarray | None = None,
             block_size: int = 1024) -> Simulation:
    """:func:`simulate_judged` with relevance = the same class label (``exclude``: the query's own row, never
    shown and not counted)."""
    judgements = Judgements.from_labels(query_labels, database_labels, exclude)
    return simulate_judged(queries, database, judgements, settings, rounds, top_k, query_ids, database_ids,
                           query_labels, exclude, block_size)


def simulate_judged(queries: np.ndarray, database: np.ndarray, judgements: Judgements, settings: FeedbackSettings,
                    rounds: int = 3, top_k: int = 10, query_ids: Sequence | None = None,
                    database_ids: Sequence | None = None, labels: Sequence | None = None,
                    exclude: np.ndarray | None = None, block_size: int = 1024) -> Simulation:
    """Run the simulated user (module docstring) for ``rounds`` feedback rounds after round 0.

    Args:
        queries, database: unit-norm ``[Q, D]`` and ``[N, D]`` (a method's prepared vectors).
        judgements: one per query (:mod:`cbir.scoring.judgements`): the user marks a shown positive relevant, a shown
            negative irrelevant and junk neither; junk is left out of the residual collection.
        settings: the feedback method and its parameters.
        rounds: feedback rounds R (rounds 0..R are scored).
        top_k: results the user judges per round.
        labels: the per-query table's ``label`` column (default: empty strings).
        exclude: int ``[Q]`` a query's own database position (leave-one-out), ``-1`` none.
    Returns:
        :class:`Simulation`: ``per_query`` (:data:`PER_QUERY_COLUMNS`, one row per round and query) and
        ``trace`` (:data:`TRACE_COLUMNS`: the ``top_k`` shown to the user in rounds 0..R-1, and round R's).
    """
    n_q, n_db = len(judgements), judgements.n_database
    query_ids = np.arange(n_q) if query_ids is None else np.asarray(query_ids)
    database_ids = np.arange(n_db) if database_ids is None else np.asarray(database_ids)
    labels = np.full(n_q, "", dtype=object) if labels is None else np.asarray(labels, dtype=object)
    done = run_queries(queries, database, judgements, settings, rounds, top_k, P_AT, exclude, block_size)
    frames, traces = [], []
    for r in range(rounds + 1):
        length = max((one.residual[r] for one in done), default=n_db)  # the largest residual collection
        n_rel, p, ap, base_p, base_ap = round_scores(done, r, P_AT, length)
        frames.append(pd.DataFrame({"round": r, "query_id": query_ids, "label": labels,
                                    "n_shown": [one.n_shown[r] for one in done], "n_relevant": n_rel,
                                    f"p@{P_AT}": p, "ap": ap, f"initial_p@{P_AT}": base_p, "initial_ap": base_ap,
                                    "used": [one.used[r] for one in done]}))
        tops = [one.top[r] for one in done]
        count = np.fromiter((t.size for t in tops), dtype=np.int64, count=n_q)
        rows = np.concatenate(tops) if n_q else np.zeros(0, np.int64)
        traces.append(pd.DataFrame({
            "round": r, "query_id": query_ids[np.repeat(np.arange(n_q), count)],
            "rank": np.concatenate([np.arange(1, c + 1, dtype=np.int64) for c in count]) if n_q else [],
            "image_id": database_ids[rows],
            "score": np.concatenate([one.scores[r] for one in done]) if n_q else np.zeros(0, np.float32),
            "relevant": np.concatenate([one.relevant[r] for one in done]) if n_q else np.zeros(0, bool)}))
    per_query = pd.concat(frames, ignore_index=True)[list(PER_QUERY_COLUMNS)]
    trace = pd.concat(traces, ignore_index=True) if traces else pd.DataFrame(columns=list(TRACE_COLUMNS))
    return Simulation(per_query, trace[list(TRACE_COLUMNS)])


#: per-query column -> summary key
SUMMARY_KEYS = {f"p@{P_AT}": f"p@{P_AT}", "ap": "map", f"initial_p@{P_AT}": f"initial_p@{P_AT}",
                "initial_ap": "initial_map"}


def summarize_rounds(per_query: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """Per round: ``p@10``, ``map`` (and the ``initial_`` ones on the same residual collection), each with
    its 95% bootstrap interval (``*_lo``, ``*_hi``), ``n_queries``, ``n_shown`` (images shown per query),
    ``n_queries_without_relevant`` (none left in the residual collection: no AP) and ``n_svm_ranked``
    (queries the SVM ranked; with ``svm`` the others had one kind of mark only and fell back to Rocchio)."""
    rows = []
    for r, frame in per_query.groupby("round", sort=True):
        row = {"round": int(r), "n_queries": int(len(frame)), "n_shown": int(frame["n_shown"].max()),
               "n_queries_without_relevant": int((frame["n_relevant"] == 0).sum()),
               "n_svm_ranked": int((frame["used"] == "svm").sum())}  # with svm: the rest fell back to Rocchio
        values = frame[list(SUMMARY_KEYS)].to_numpy(dtype=np.float64)
        lo, hi = st.bootstrap_ci(values, n_bootstrap, seed)  # queries resampled jointly for the four columns
        for j, key in enumerate(SUMMARY_KEYS.values()):
            finite = values[:, j][np.isfinite(values[:, j])]
            row[key] = ev._number(finite.mean() if finite.size else float("nan"))
            row[f"{key}_lo"], row[f"{key}_hi"] = ev._number(lo[j]), ev._number(hi[j])
        rows.append(row)
    return rows


def last_round_test(per_query: pd.DataFrame, n_permutations: int = 10000, seed: int = 0) -> dict:
    """Paired tests of the last round against the round-0 ranking on the same residual collection:
    ``{round, n, mean_diff_ap, p_ap, p_wilcoxon_ap, mean_diff_p@10, p_p@10}`` (sign-flip permutation p-values)."""
    last = per_query[per_query["round"] == per_query["round"].max()]
    ap = st.paired_test(last["ap"].to_numpy(), last["initial_ap"].to_numpy(), n_permutations, seed)
    p10 = st.paired_test(last[f"p@{P_AT}"].to_numpy(), last[f"initial_p@{P_AT}"].to_numpy(), n_permutations, seed)
    return {"round": int(last["round"].max()) if len(last) else 0, "n": ap["n"],
            "mean_diff_ap": ev._number(ap["mean_diff"]), "p_ap": ev._number(ap["p_permutation"]),
            "p_wilcoxon_ap": ev._number(ap["p_wilcoxon"]), f"mean_diff_p@{P_AT}": ev._number(p10["mean_diff"]),
            f"p_p@{P_AT}": ev._number(p10["p_permutation"])}


#: why feedback cannot be measured when no query has a second relevant image (results' ``unavailable``)
NO_SECOND_RELEVANT = ("no query has more than one relevant image, so once the user has marked the one there is "
                      "nothing left to find: relevance feedback cannot be simulated on these judgements")


def unavailable(judgements: Judgements) -> str | None:
    """Why feedback cannot be simulated on ``judgements`` (:data:`NO_SECOND_RELEVANT`), or None when it can."""
    return None if len(judgements) and int(judgements.n_relevant().max()) > 1 else NO_SECOND_RELEVANT


def query_subset(n_queries: int, max_queries: int | None, seed: int) -> np.ndarray | None:
    """A seeded, sorted sample of ``max_queries`` query positions, or None when every query is simulated."""
    if max_queries is None or n_queries <= max_queries:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_queries, int(max_queries), replace=False))


def evaluate_method(data: Mapping, settings: FeedbackSettings, rounds: int, top_k: int, n_bootstrap: int,
                    n_permutations: int, seed: int, block_size: int = 1024, judgements: Judgements | None = None,
                    max_queries: int | None = None) -> tuple[dict, Simulation | None]:
    """:func:`simulate_judged` + :func:`summarize_rounds` + :func:`last_round_test` on one method's prepared data
    (:func:`cbir.search.prepared.load_prepared`'s dict).

    ``judgements``: the dataset's (default: the same class label). More than ``max_queries`` queries: a seeded
    sample of that many is simulated (``entry["queries"]`` says so; the intervals are over the sample). No
    query with a second relevant image: ``({"unavailable": reason}, None)``.
    """
    manifest = data["manifest"]
    labels = manifest["label"].to_numpy()
    ids = manifest["image_id"].astype(str).to_numpy()
    q_rows, db_rows, exclude = data["query_rows"], data["database_rows"], data["exclude"]
    if judgements is None:
        judgements = Judgements.from_labels(labels[q_rows], labels[db_rows], exclude)
    reason = unavailable(judgements)
    if reason:
        return {"unavailable": reason}, None
    pick = query_subset(len(q_rows), max_queries, seed)
    chosen = slice(None) if pick is None else pick
    if pick is not None:
        judgements = Judgements(tuple(judgements.items[i] for i in pick), judgements.n_database)
    sim = simulate_judged(np.asarray(data["queries"])[chosen], data["database"], judgements, settings, rounds, top_k,
                          query_ids=ids[q_rows][chosen], database_ids=ids[db_rows], labels=labels[q_rows][chosen],
                          exclude=None if exclude is None else np.asarray(exclude)[chosen], block_size=block_size)
    entry = {"rounds": summarize_rounds(sim.per_query, n_bootstrap, seed),
             "test": last_round_test(sim.per_query, n_permutations, seed)}
    if pick is not None:
        entry["queries"] = {"simulated": int(pick.size), "of": int(len(q_rows)), "seed": int(seed),
                            "sample": "seeded, without replacement; intervals are over the simulated queries"}
    return entry, sim


def settings_for(cfg: Mapping, method: str) -> FeedbackSettings:
    """The :class:`FeedbackSettings` of feedback method ``method`` from the ``feedback`` params section."""
    return replace(FeedbackSettings.from_config(cfg), method=method)


def add_holm(results: Mapping[str, Mapping[str, dict]]) -> None:
    """Holm-adjust every last-round test's AP p-value in place (``p_holm``), over all methods x feedback."""
    tests = [entry["test"] for by_fb in results.values() for entry in by_fb.values() if "test" in entry]
    adjusted = st.holm([np.nan if t["p_ap"] is None else t["p_ap"] for t in tests])
    for test, p in zip(tests, adjusted):
        test["p_holm"] = ev._number(p)


def table(results: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """One row per method, feedback method and round: the summary numbers (CSV and the display tables)."""
    rows = []
    for method, by_fb in results.items():
        for fb, entry in by_fb.items():
            for row in (entry["rounds"] if "rounds" in entry else ()):  # none where it was unavailable
                rows.append({"method": method, "feedback": fb, **row})
    return pd.DataFrame(rows)


def tests_table(results: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "feedback": fb, **entry["test"]}
                         for m, by_fb in results.items() for fb, entry in by_fb.items() if "test" in entry])


def _interval(value, lo, hi) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    text = f"{value:.3f}"
    if lo is None or hi is None or (isinstance(lo, float) and (np.isnan(lo) or np.isnan(hi))):
        return text
    return f"{text} [{lo:.3f}, {hi:.3f}]"


def display(frame: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """The text table: per method and feedback method, P@10 and mAP of each round [95% CI], the initial
    ranking's on the same residual collection, and the last round's paired test (its row only)."""
    p = f"p@{P_AT}"
    out = pd.DataFrame({
        "method": frame["method"], "feedback": frame["feedback"], "round": frame["round"].astype(str),
        "shown": frame["n_shown"].astype(str),
        f"P@{P_AT}": [_interval(*v) for v in zip(frame[p], frame[f"{p}_lo"], frame[f"{p}_hi"])],
        "mAP": [_interval(*v) for v in zip(frame["map"], frame["map_lo"], frame["map_hi"])],
        f"P@{P_AT} initial": [_interval(*v) for v in zip(frame[f"initial_{p}"], frame[f"initial_{p}_lo"],
                                                          frame[f"initial_{p}_hi"])],
        "mAP initial": [_interval(*v) for v in zip(frame["initial_map"], frame["initial_map_lo"],
                                                   frame["initial_map_hi"])],
    })
    last = frame.groupby(["method", "feedback"], sort=False)["round"].transform("max") == frame["round"]
    test_of = {(t.method, t.feedback): t for t in tests.itertuples(index=False)} if len(tests) else {}
    cells = []
    for (method, fb), is_last in zip(zip(frame["method"], frame["feedback"]), last):
        t = test_of.get((method, fb))
        if not is_last or t is None:
            cells.append("")
            continue
        diff = getattr(t, "mean_diff_ap")
        cells.append("–" if diff is None or np.isnan(diff) else
                     f"{diff:+.3f} (p {format_p(t.p_ap)}, Holm {format_p(t.p_holm)})")
    out["ΔAP vs initial"] = cells
    return out.astype(str)


def markdown(display_frame: pd.DataFrame) -> str:
    header = list(display_frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in display_frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def rounds_figure(frame: pd.DataFrame, top_k: int):
    """P@10 against round, per method (one panel per feedback method; bars: 95% CI); a dashed line is
    the initial ranking on the same residual collection. A ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    from cbir.figures.style import STYLE, method_colours

    feedbacks = list(dict.fromkeys(frame["feedback"])) or ["rocchio"]
    methods = list(dict.fromkeys(frame["method"]))
    colours = method_colours(methods)
    p = f"p@{P_AT}"
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.4 * len(feedbacks) + 1.6, 3.0))
        axes = fig.subplots(1, len(feedbacks), sharey=True, squeeze=False)[0]
        for ax, fb in zip(axes, feedbacks):
            for j, method in enumerate(methods):
                sub = frame[(frame["method"] == method) & (frame["feedback"] == fb)].sort_values("round")
                x = sub["round"].to_numpy() + 0.25 * (j - (len(methods) - 1) / 2) / max(1, len(methods))
                y = sub[p].astype(float).to_numpy()
                err = np.vstack([y - sub[f"{p}_lo"].astype(float), sub[f"{p}_hi"].astype(float) - y])
                ax.errorbar(x, y, yerr=np.nan_to_num(err), color=colours[method], marker="o", markersize=3,
                            capsize=1.5, elinewidth=0.6, label=method)
                ax.plot(x, sub[f"initial_{p}"].astype(float), color=colours[method], linestyle=":", linewidth=0.9)
            ax.set_title(f"{fb} (user marks the top {top_k})")
            ax.set_xlabel("feedback round")
            ax.set_xticks(sorted(set(frame["round"])))
        axes[0].set_ylabel(f"P@{P_AT}, residual collection")
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"Relevance feedback: P@{P_AT} per round (dotted: no feedback, same residual collection)")
        fig.tight_layout()
    return fig
