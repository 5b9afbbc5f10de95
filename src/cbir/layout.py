"""Every on-disk location of the pipeline, as a function of the repository root and params.

``dvc.yaml`` mirrors this map (``tests/test_layout.py`` resolves ``dvc.yaml`` with DVC itself and
checks every ``outs``/``deps`` path against it).  Results are namespaced by dataset, so running
one experiment never overwrites another dataset's outputs::

    data/raw/<ds>/                      the collection as delivered (+ _source.json)
    data/downloads/                     resumable download cache
    data/curated/<ds>/manifest.csv      + curation.json (Fashion-MNIST also images/)
    models/<backbone>.pt                + .json provenance
    data/features/<ds>/<method>.npy     + .json (+ .whitening.npz)
    data/retrieval/<ds>/<method>.csv    + .json
    data/evaluation/<ds>/<method>/      one method's evaluation: summary.json, per_query.csv, pk.csv, pr.csv,
                                        per_class.csv (the summarize stage combines them)
    data/feedback/<ds>/methods/<method>/  one method's feedback simulation: results.json, rankings.csv
    data/figures/<ds>/<method>.json     the index entries of one method's figures
    data/embeddings/<ds>/<method>-<key>.npy  the t-SNE maps of the summary chart, kept between runs (reused
                                        while the features and t-SNE settings, hashed into <key>, stay)
    data/index/<ds>/<method>/           the saved search index: index.json, ids.txt (+ index.faiss)
    metrics/<ds>.json                   DVC metrics, compact: per method mAP and P@10 with 95% bounds
    reports/<ds>/metrics.json           every method's metrics with intervals (report, figures, README)
    reports/<ds>/plots/<name>.csv       DVC plots: pk, pr, per_class, per_query, significance
    reports/<ds>/pairs.csv              paired tests of every pair of methods (Holm-adjusted)
    reports/<ds>/tables/                the report's tables as CSV and LaTeX
    reports/<ds>/figures/               PNG + PDF + figures.json: trials_<method> and confusions_<method> per
                                        method (stage figures), the summary charts and figures.json (summarize)
    reports/<ds>/report.md
    reports/<ds>/feedback/              relevance feedback, simulated user: metrics.json, rounds.csv, tests.csv,
                                        table.md, table.tex, p10_rounds.png + .pdf
    data/feedback/<ds>/rankings.csv     what the simulated user was shown (and marked) in every round
    reports/datasets.md                 the table across the experiment's datasets (+ .csv, .tex)

``<ds>`` is a key of params.yaml's ``datasets`` (``cbir.config.select_dataset`` gives a stage its dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from cbir.errors import CbirError

#: the plot tables the evaluate stage writes into ``reports/<ds>/plots/``
PLOT_TABLES = ("pk", "pr", "per_class", "per_query", "significance")
#: the files the feedback stage writes into ``reports/<ds>/feedback/``
FEEDBACK_FILES = ("metrics.json", "rounds.csv", "tests.csv", "table.md", "table.tex", "p10_rounds.png",
                  "p10_rounds.pdf")
#: one method's evaluation in ``data/evaluation/<ds>/<method>/`` (stage evaluate, read by summarize)
EVALUATION_FILES = ("summary.json", "per_query.csv", "pk.csv", "pr.csv", "per_class.csv")
#: one method's figures in ``reports/<ds>/figures/`` (stage figures; ``<name>_<method>.png`` + ``.pdf``)
METHOD_FIGURES = ("trials", "confusions")
#: the summary charts in ``reports/<ds>/figures/`` (stage summarize), in reading order
SUMMARY_FIGURES = ("comparison", "pk_curves", "pr_curves", "per_class_p10", "trials_baseline_vs_best",
                   "embedding_tsne")


def dataset_name(params: Mapping) -> str:
    """``params['dataset']['name']``, checked to be a plain folder name."""
    dataset = params.get("dataset") if isinstance(params, Mapping) else None
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    if not name or not isinstance(name, str):
        raise CbirError("params.yaml: dataset.name is missing: pick a dataset (conf/dataset/*.yaml) "
                        "and regenerate params.yaml with `python -m cbir params`")
    if "/" in name or "\\" in name or name.startswith(".") or "\n" in name:
        raise CbirError(f"params.yaml: dataset.name={name!r} must be a plain folder name")
    return name


def weights_file(root: str | Path, backbone: str) -> Path:
    """``models/<backbone>.pt``: weights are shared by every dataset."""
    return Path(root) / "models" / f"{backbone}.pt"


class Layout:
    """Paths of one dataset's pipeline under ``root`` (``Layout(root, params)``)."""

    def __init__(self, root: str | Path, params: Mapping):
        self.root = Path(root)
        self.dataset = dataset_name(params)

    # data ---------------------------------------------------------------------------------
    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw" / self.dataset

    @property
    def downloads_dir(self) -> Path:
        return self.root / "data" / "downloads"

    @property
    def curated_dir(self) -> Path:
        return self.root / "data" / "curated" / self.dataset

    @property
    def manifest(self) -> Path:
        return self.curated_dir / "manifest.csv"

    @property
    def curation(self) -> Path:
        return self.curated_dir / "curation.json"

    # weights ------------------------------------------------------------------------------
    def weights(self, backbone: str) -> Path:
        return weights_file(self.root, backbone)

    # features and retrieval ---------------------------------------------------------------
    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features" / self.dataset

    def features(self, method: str) -> Path:
        return self.features_dir / f"{method}.npy"

    def features_info(self, method: str) -> Path:
        return self.features_dir / f"{method}.json"

    def whitening(self, method: str) -> Path:
        return self.features_dir / f"{method}.whitening.npz"

    @property
    def retrieval_dir(self) -> Path:
        return self.root / "data" / "retrieval" / self.dataset

    def retrieval(self, method: str) -> Path:
        return self.retrieval_dir / f"{method}.csv"

    def retrieval_info(self, method: str) -> Path:
        return self.retrieval_dir / f"{method}.json"

    def index_dir(self, method: str) -> Path:
        return self.root / "data" / "index" / self.dataset / method

    # one method's evaluation, feedback and figure index (combined per dataset by summarize) ----------
    def evaluation_dir(self, method: str) -> Path:
        return self.root / "data" / "evaluation" / self.dataset / method

    def evaluation_file(self, method: str, name: str) -> Path:
        if name not in EVALUATION_FILES:
            raise ValueError(f"unknown evaluation file {name!r}; expected one of {EVALUATION_FILES}")
        return self.evaluation_dir(method) / name

    @property
    def feedback_methods_dir(self) -> Path:
        return self.root / "data" / "feedback" / self.dataset / "methods"

    def feedback_method_dir(self, method: str) -> Path:
        """``data/feedback/<ds>/methods/<method>/``: results.json (per feedback method) and rankings.csv."""
        return self.feedback_methods_dir / method

    @property
    def embeddings_dir(self) -> Path:
        """``data/embeddings/<ds>/``: the summary chart's t-SNE maps, a persistent output of summarize."""
        return self.root / "data" / "embeddings" / self.dataset

    @property
    def figure_index_dir(self) -> Path:
        return self.root / "data" / "figures" / self.dataset

    def figure_index(self, method: str) -> Path:
        """``data/figures/<ds>/<method>.json``: the figures.json entries of one method's figures."""
        return self.figure_index_dir / f"{method}.json"

    # evaluation and reports ---------------------------------------------------------------
    @property
    def compact_metrics(self) -> Path:
        """``metrics/<ds>.json``: the DVC metrics file (compact, for ``dvc exp show``)."""
        return self.root / "metrics" / f"{self.dataset}.json"

    @property
    def metrics(self) -> Path:
        """``reports/<ds>/metrics.json``: every metric of every method, with intervals."""
        return self.reports_dir / "metrics.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports" / self.dataset

    @property
    def plots_dir(self) -> Path:
        return self.reports_dir / "plots"

    def plot(self, name: str) -> Path:
        if name not in PLOT_TABLES:
            raise ValueError(f"unknown plot table {name!r}; expected one of {PLOT_TABLES}")
        return self.plots_dir / f"{name}.csv"

    @property
    def pairs(self) -> Path:
        return self.reports_dir / "pairs.csv"

    @property
    def tables_dir(self) -> Path:
        return self.reports_dir / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.reports_dir / "figures"

    def figure(self, name: str, suffix: str = ".png") -> Path:
        """``reports/<ds>/figures/<name><suffix>`` (``name``: a summary chart or ``<figure>_<method>``)."""
        return self.figures_dir / f"{name}{suffix}"

    @property
    def report(self) -> Path:
        return self.reports_dir / "report.md"

    # relevance feedback -------------------------------------------------------------------
    @property
    def feedback_dir(self) -> Path:
        """``reports/<ds>/feedback/``: the simulated-user evaluation's metrics, tables and figure."""
        return self.reports_dir / "feedback"

    def feedback_file(self, name: str) -> Path:
        if name not in FEEDBACK_FILES:
            raise ValueError(f"unknown feedback file {name!r}; expected one of {FEEDBACK_FILES}")
        return self.feedback_dir / name

    @property
    def feedback_rankings(self) -> Path:
        """``data/feedback/<ds>/rankings.csv``: the top-k the simulated user saw in every round."""
        return self.root / "data" / "feedback" / self.dataset / "rankings.csv"


def across_files(root: str | Path) -> dict[str, Path]:
    """``reports/datasets.{md,csv,tex}``: the table across datasets (stage ``across``)."""
    return {ext: Path(root) / "reports" / f"datasets.{ext}" for ext in ("md", "csv", "tex")}


def metrics_files(root: str | Path) -> list[Path]:
    """Every dataset's metrics file present under ``root/metrics`` (sorted by dataset)."""
    return sorted((Path(root) / "metrics").glob("*.json"))
