"""Figure style and output: colours, the publication rc style, settings, saving PNG + PDF.

Every figure is built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend), so the
same functions draw inline in a notebook.  Files carry no timestamps.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.text
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from cbir.errors import CbirError
from cbir.fileio import atomic_path

RELEVANT = "#1a9850"


IRRELEVANT = "#d73027"


QUERY = "#2166ac"


#: Okabe-Ito colours (colour-blind safe) for methods ...
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: ... then Paul Tol's muted colours: 16 distinct method colours in all; more methods take a hue wheel.
METHOD_PALETTE = OKABE_ITO + ("#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#88CCEE",
                              "#661100")


#: Publication style: small sans-serif fonts, TrueType (Type 42) text in PDFs, no top/right spines.
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
    "figure.dpi": 100, "axes.grid": False, "lines.linewidth": 1.4,
}


DEFAULTS = {"n_queries": 3, "seed": 0, "thumb_size": 128, "n_pairs": 5, "n_examples": 3,
            "tsne_max_points": 2000, "tsne_perplexity": 30.0, "pca_dims": 50, "dpi": 150,
            "methods": None, "width": None, "font_size": None}


FIGURES_INDEX = "figures.json"


#: written on every run whatever the methods and data (dvc.yaml's top-level ``plots`` lists them)
ALWAYS_PRESENT = ("comparison", "pk_curves", "pr_curves", "per_class_p10", "trials_baseline_vs_best",
                  "embedding_tsne")


MIN_TSNE_POINTS = 4


def figure_settings(params: Mapping) -> dict:
    """``params['figures']`` over :data:`DEFAULTS`, with types checked (one clear error)."""
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in (params.get("figures") or {}).items() if v is not None})
    try:
        for key in ("n_queries", "seed", "thumb_size", "n_pairs", "n_examples", "tsne_max_points", "pca_dims",
                    "dpi"):
            cfg[key] = int(cfg[key])
        cfg["tsne_perplexity"] = float(cfg["tsne_perplexity"])
    except (TypeError, ValueError) as exc:
        raise CbirError(f"params figures: {exc}; use whole numbers for counts and sizes") from exc
    for key in ("n_queries", "thumb_size", "n_pairs", "n_examples", "tsne_max_points", "pca_dims", "dpi"):
        if cfg[key] < 1:
            raise CbirError(f"params figures.{key} must be >= 1, got {cfg[key]}")
    if cfg["tsne_perplexity"] <= 0:
        raise CbirError(f"params figures.tsne_perplexity must be > 0, got {cfg['tsne_perplexity']}")
    for key, low, high in (("width", 1.0, 40.0), ("font_size", 4.0, 30.0)):
        value = cfg[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= float(value) <= high
        if value is not None and not ok:
            raise CbirError(f"params figures.{key} is {value!r}: use a number from {low:g} to {high:g} "
                            f"({'inches' if key == 'width' else 'points'}), or null for the default")
    cfg["methods"] = chosen_methods(params, cfg["methods"])
    return cfg


def chosen_methods(params: Mapping, subset) -> list[str]:
    """``figures.methods``: the methods to draw, in the order given (``null``: every method, in params order)."""
    available = list(params.get("methods") or {})
    if subset is None:
        return available
    if isinstance(subset, str) or not isinstance(subset, Sequence) or not subset:
        raise CbirError(f"params figures.methods is {subset!r}: give a non-empty list of method names, "
                        "or null for all")
    unknown = [m for m in subset if m not in available]
    if unknown:
        raise CbirError(f"params figures.methods names {', '.join(map(str, unknown))}, not among the methods "
                        f"({', '.join(available)}): fix figures.methods")
    return list(dict.fromkeys(str(m) for m in subset))


def fit_layout(fig, width: float | None = None, font_size: float | None = None) -> None:
    """Resize ``fig`` to ``width`` inches (height scaled with it) and scale its text so the body text is
    ``font_size`` points (titles and tick labels keep their proportions); ``None`` leaves either as is."""
    if font_size is not None:
        factor = float(font_size) / float(STYLE["font.size"])
        for text in fig.findobj(matplotlib.text.Text):
            text.set_fontsize(text.get_fontsize() * factor)
    if width is not None:
        old_w, old_h = fig.get_size_inches()
        fig.set_size_inches(float(width), old_h * float(width) / old_w)
    if width is not None or font_size is not None:
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("tight")


def safe_name(name: str) -> str:
    """A file-name-safe version of a method name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A distinct colour per method (in the given order): :data:`METHOD_PALETTE`, then a hue wheel."""
    if len(methods) <= len(METHOD_PALETTE):
        return {m: METHOD_PALETTE[i] for i, m in enumerate(methods)}
    cmap = matplotlib.colormaps.get_cmap("hsv")
    return {m: matplotlib.colors.to_hex(cmap(i / len(methods))) for i, m in enumerate(methods)}


def class_colours(labels: Sequence[str]) -> dict[str, tuple]:
    """A colour per class (sorted): tab10 up to 10 classes, tab20 up to 20, then a hue wheel."""
    labels = sorted(set(labels))
    n = len(labels)
    if n <= 10:
        cmap, values = matplotlib.colormaps.get_cmap("tab10"), range(n)
    elif n <= 20:
        cmap, values = matplotlib.colormaps.get_cmap("tab20"), range(n)
    else:
        cmap, values = matplotlib.colormaps.get_cmap("hsv"), np.linspace(0, 1, n, endpoint=False)
    return {label: tuple(cmap(v)) for label, v in zip(labels, values)}


def message_figure(text: str, title: str = ""):
    """A small figure that only says ``text`` (when there is nothing to draw)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.5, 1.2))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center")
        if title:
            ax.set_title(title)
    return fig


def save_figure(fig, target: Path, dpi: int = 150) -> list[Path]:
    """PNG (``dpi``) and a vector PDF beside it, each written atomically and without timestamps."""
    written = []
    with matplotlib.rc_context(STYLE):
        for suffix, kwargs in ((".png", {"dpi": dpi, "metadata": {"Software": None}}),
                               (".pdf", {"metadata": {"CreationDate": None, "Creator": None, "Producer": None}})):
            path = Path(target).with_suffix(suffix)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=suffix[1:], facecolor="white", **kwargs)
            written.append(path)
    return written


def _save_and_exit(fig, target: Path, dpi: int) -> None:
    try:
        save_figure(fig, target, dpi)
    except Exception as exc:  # the parent reports it as one line; a worker prints no traceback
        raise SystemExit(f"cannot write {target.name}: {' '.join(str(exc).split())}") from None


class FigureWriter:
    """Writes figures (PNG + PDF, :func:`save_figure`) in worker processes while the caller builds the next
    one; at most ``workers`` at a time (default: one per CPU).  Workers come from a fork server (a clean,
    single-threaded process), never from a plain ``fork`` of this one: forking a process whose other
    threads (OpenMP, OpenVINO, a test runner) hold a lock can leave the child waiting forever.  The figure
    travels pickled.  Without a fork server it writes in this process.  ``close()`` waits for every file
    and raises one clear error if any failed.
    """

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        forkable = "forkserver" in multiprocessing.get_all_start_methods() and self.workers > 1
        self._context = multiprocessing.get_context("forkserver") if forkable else None
        self._running: list[tuple[multiprocessing.Process, Path]] = []

    def submit(self, fig, target: Path, dpi: int = 150) -> None:
        if self._context is None:
            save_figure(fig, target, dpi)
            return
        while len(self._running) >= self.workers:
            self._wait_one()
        process = self._context.Process(target=_save_and_exit, args=(fig, Path(target), dpi), daemon=True)
        process.start()
        self._running.append((process, Path(target)))

    def _wait_one(self) -> None:
        process, target = self._running.pop(0)
        process.join()
        if process.exitcode != 0:
            self._abort()
            raise CbirError(f"writing figure {target.name} (PNG + PDF) failed in a worker process "
                            f"(exit code {process.exitcode}); re-run the figures stage")

    def _abort(self) -> None:
        for process, _ in self._running:
            process.terminate()
            process.join()
        self._running.clear()

    def close(self) -> None:
        while self._running:
            self._wait_one()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self._abort()
        else:
            self.close()


def drawn_panels(fig) -> int:
    """Axes that show something (an image, a line, a patch or a collection), colour bars excluded."""
    return sum(1 for ax in fig.axes if ax.get_label() != "<colorbar>"
               and (ax.images or ax.lines or ax.patches or ax.collections))
