"""The ``figures`` stage: the paper's sample trials (a query beside its top-10) and method charts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cbir.config import dataset_name  # noqa: E402
from cbir.errors import CbirError  # noqa: E402
from cbir.fileio import atomic_path, read_json  # noqa: E402

log = logging.getLogger("cbir")
RELEVANT = "#1a9850"
IRRELEVANT = "#d73027"


def pick_queries(query_ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded, order-independent choice of ``n`` query ids."""
    ordered = sorted(query_ids)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ordered), size=min(n, len(ordered)), replace=False)
    return [ordered[i] for i in sorted(chosen)]


def thumbnail(path: Path, size: int) -> np.ndarray:
    from cbir.data.images import open_rgb

    image = open_rgb(path)
    image.thumbnail((size, size))
    return np.asarray(image)


def sample_trials_figure(trials: list[dict], thumb_size: int = 128, title: str = ""):
    """One row per query: the query image, then its ranked results.

    ``trials``: dicts with ``query`` ({image, label, image_id}) and ``results`` (a list of
    {image, label, image_id, rank, score, relevant}) in retrieval order.
    """
    if not trials:
        raise CbirError("no queries to draw")
    ncols = 1 + max(len(t["results"]) for t in trials)
    fig, axes = plt.subplots(len(trials), ncols, figsize=(1.45 * ncols, 1.75 * len(trials)), squeeze=False)
    for row, trial in zip(axes, trials):
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("off")
        q = trial["query"]
        row[0].axis("on")
        row[0].imshow(q["image"])
        row[0].set_title(f"query\n{q['label']}", fontsize=7, fontweight="bold")
        for spine in row[0].spines.values():
            spine.set_color("#2166ac")
            spine.set_linewidth(2.5)
        for ax, res in zip(row[1:], trial["results"]):
            ax.axis("on")
            ax.imshow(res["image"])
            colour = RELEVANT if res["relevant"] else IRRELEVANT
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(2.5)
            ax.set_title(f"#{res['rank']}  {res['score']:.3f}\n{res['label']}", fontsize=6, color=colour)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def build_trials(ranking: pd.DataFrame, manifest: pd.DataFrame, query_ids: list[str], root: Path,
                 k: int, thumb_size: int) -> list[dict]:
    """Assemble the data of ``sample_trials_figure`` from a retrieval CSV and the manifest."""
    rows = manifest.set_index("image_id")
    trials = []
    for qid in query_ids:
        hits = ranking[ranking["query_id"] == qid].sort_values("rank").head(k)
        qlabel = rows.at[qid, "label"]
        trials.append({
            "query": {"image_id": qid, "label": qlabel, "image": thumbnail(root / rows.at[qid, "path"], thumb_size)},
            "results": [{
                "image_id": h.image_id, "rank": int(h.rank), "score": float(h.score),
                "label": rows.at[h.image_id, "label"], "relevant": rows.at[h.image_id, "label"] == qlabel,
                "image": thumbnail(root / rows.at[h.image_id, "path"], thumb_size),
            } for h in hits.itertuples()],
        })
    return trials


def comparison_figure(metrics: dict):
    """P@10 and mAP per method with 95% bootstrap confidence intervals."""
    methods = list(metrics)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(methods) + 2), 3.2), squeeze=False)
    for ax, key, name in zip(axes[0], ("p@10", "map"), ("P@10", "mAP")):
        values = [metrics[m][key] for m in methods]
        cis = [metrics[m].get("ci95", {}).get(key, [v, v]) for m, v in zip(methods, values)]
        err = np.array([[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]])
        ax.bar(range(len(methods)), values, yerr=np.clip(err, 0, None), capsize=4, color="#4575b4")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} (95% CI)", fontsize=9)
        for i, v in enumerate(values):
            ax.text(i, min(v + 0.03, 0.95), f"{v:.3f}", ha="center", fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig, target: Path) -> list[Path]:
    """PNG (150 dpi) and a vector PDF beside it, each written atomically."""
    written = []
    for suffix, kwargs in ((".png", {"dpi": 150}), (".pdf", {})):
        path = target.with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **kwargs)
        written.append(path)
    plt.close(fig)
    return written


def run_figures(params: dict, root: Path) -> None:
    """Stage shell: ``reports/figures/`` from the retrieval CSVs, the manifest and the metrics."""
    from cbir.features.extract import manifest_path, read_manifest

    root = Path(root)
    start = time.perf_counter()
    ds = dataset_name(params)
    cfg = params.get("figures") or {}
    manifest = read_manifest(manifest_path(root, params))
    metrics_file = root / "metrics" / f"{ds}.json"
    if not metrics_file.exists():
        raise CbirError(f"{metrics_file} not found: run the evaluate stage first")
    metrics = read_json(metrics_file)
    k = int(params["retrieval"]["k"])
    out_dir = root / "reports" / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    queries = None
    for method in params["methods"]:
        csv = root / "data" / "retrieval" / ds / f"{method}.csv"
        if not csv.exists():
            raise CbirError(f"{csv} not found: run `dvc repro retrieve@{method}` first")
        ranking = pd.read_csv(csv, dtype={"query_id": str, "image_id": str})
        if queries is None:  # the same queries for every method, so figures compare side by side
            queries = pick_queries(ranking["query_id"].unique().tolist(), int(cfg.get("n_queries", 3)),
                                   int(cfg.get("seed", 0)))
        trials = build_trials(ranking, manifest, queries, root, k, int(cfg.get("thumb_size", 128)))
        fig = sample_trials_figure(trials, title=f"{ds}: {method}, cosine top-{k} (green: same class)")
        written += save_figure(fig, out_dir / f"trials_{method}")
    written += save_figure(comparison_figure(metrics), out_dir / "comparison")
    log.info("figures: wrote %d files under %s in %.1fs", len(written), out_dir, time.perf_counter() - start)
