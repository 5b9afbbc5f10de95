"""Figure style and output: colours, the publication rc style, settings, saving PNG + PDF.

Every figure is built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend), so the
same functions draw inline in a notebook.  The same numbers give the same file bytes on every machine: one
pinned font file (matplotlib's own DejaVu Sans), every rc key set, and fixed metadata (no dates, no versions).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.font_manager
import matplotlib.text
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from cbir.errors import CbirError
from cbir.fileio import atomic_path
from cbir.layout import SUMMARY_FIGURES
from cbir.schema import FIGURES
from cbir.settings import mapping, need
from cbir.workers import die_with_parent

#: trial frames, colour-blind safe (Okabe-Ito blue and vermillion, told apart under every common colour
#: vision deficiency and in grey scale) and never by colour alone: each result also carries a mark
RELEVANT = "#0072b2"
IRRELEVANT = "#d55e00"
QUERY = "#000000"
#: the mark of a relevant (filled circle) and an irrelevant (cross) result, matplotlib marker codes
RELEVANT_MARK, IRRELEVANT_MARK = "o", "X"
#: marker shapes beside method colours on curves (one per curve of a panel)
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P")
#: curves per panel at most; more methods are faceted into panels of this many
MAX_CURVES_PER_PANEL = 6
#: the width a figure is printed at: an ``article`` page's ``\textwidth`` (345 pt), in inches
PRINTED_WIDTH_IN = 345.0 / 72.27
#: the smallest text size, in points at the printed size, of numbers written inside a chart
MIN_PRINTED_PT = 8.0


#: Okabe-Ito colours (colour-blind safe) for methods ...
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: ... then Paul Tol's muted colours: 16 distinct method colours in all; more methods take a hue wheel.
METHOD_PALETTE = OKABE_ITO + ("#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#88CCEE",
                              "#661100")


#: matplotlib's bundled DejaVu Sans files (regular, bold, oblique, bold oblique), registered under their own
#: family name so that every figure embeds these files whatever fonts the system or the font cache holds
PINNED_FAMILY = "cbir DejaVu Sans"
PINNED_FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf")
#: rc keys that are no part of a figure's look (matplotlib's own list of keys a style never sets)
_NOT_STYLE = frozenset({"backend", "backend_fallback", "interactive", "toolbar", "timezone", "figure.max_open_warning",
                        "figure.raise_window", "savefig.directory", "tk.window_focus", "docstring.hardcopy",
                        "date.epoch", "webagg.address", "webagg.port", "webagg.port_retries", "webagg.open_in_browser"})


def pin_font() -> None:
    """Register :data:`PINNED_FONT_FILES` as :data:`PINNED_FAMILY` with matplotlib's font manager (once per
    process; called on import): a system DejaVu Sans of another version, or a cache listing it first, never
    replaces them."""
    manager = matplotlib.font_manager.fontManager
    if any(entry.name == PINNED_FAMILY for entry in manager.ttflist):
        return
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name in PINNED_FONT_FILES:
        entry = matplotlib.font_manager.ttfFontProperty(matplotlib.font_manager.get_font(folder / name))
        manager.ttflist.append(dataclasses.replace(entry, name=PINNED_FAMILY))


pin_font()


#: Publication style over matplotlib's built-in defaults (never a user's ``matplotlibrc``): small sans-serif
#: text in the pinned DejaVu Sans, TrueType (Type 42) text in PDFs, no top/right spines; in PDFs each image
#: stays its own image (not composited into one), which writes a gallery of thumbnails faster.  Every rc key
#: is set, so the same numbers draw the same bytes whatever the environment's rc files say.
STYLE = {
    **{key: value for key, value in matplotlib.rcParamsDefault.items() if key not in _NOT_STYLE},
    "font.family": [PINNED_FAMILY], "font.sans-serif": [PINNED_FAMILY], "mathtext.fontset": "dejavusans",
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "cbir",
    "figure.dpi": 100, "axes.grid": False, "lines.linewidth": 1.4, "image.composite_image": False,
}
#: what every saved file records: nothing that varies (no dates, no software versions)
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None}


FIGURES_INDEX = "figures.json"


#: written on every run whatever the methods and data: the summary charts (stage summarize, dvc.yaml lists them)
ALWAYS_PRESENT = SUMMARY_FIGURES


MIN_TSNE_POINTS = 4


def figure_settings(params: Mapping) -> dict:
    """``params['figures']``: every key of :data:`cbir.schema.FIGURES` (defaults in ``conf/figures/``, types
    and ranges checked by the schema when params.yaml is loaded), ``methods`` resolved by :func:`chosen_methods`."""
    section = mapping(params, "figures")
    cfg = {key: need(section, key, "figures") for key in FIGURES}
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
    """PNG (``dpi``) and a vector PDF beside it, each written atomically, in :data:`STYLE`, with fixed metadata:
    the same figure gives the same bytes on every machine (tests/test_figure_bytes.py)."""
    written = []
    with matplotlib.rc_context(STYLE):
        for suffix, kwargs in ((".png", {"dpi": dpi, "metadata": PNG_METADATA}), (".pdf", {"metadata": PDF_METADATA})):
            path = Path(target).with_suffix(suffix)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=suffix[1:], facecolor="white", **kwargs)
            written.append(path)
    return written


def draw_figure(build: Callable, args: tuple, kwargs: Mapping, target: Path, dpi: int = 150,
                width: float | None = None, font_size: float | None = None) -> int:
    """``build(*args, **kwargs)``, fitted (:func:`fit_layout`) and written (:func:`save_figure`); returns
    its number of drawn panels (:func:`drawn_panels`)."""
    fig = build(*args, **kwargs)
    fit_layout(fig, width, font_size)
    save_figure(fig, target, dpi)
    return drawn_panels(fig)


class FigureWriter:
    """Builds and writes figures (:func:`draw_figure`: PNG + PDF) in worker processes while the caller
    prepares the next one's data, and runs other slow pure functions (``run``, e.g. a t-SNE map) beside them.

    ``workers`` processes (default: one per CPU) are started once and kept for every figure, from a fork
    server (a clean, single-threaded process), never from a plain ``fork`` of this one: forking a process
    whose other threads (OpenMP, OpenVINO, a test runner) hold a lock can leave the child waiting forever.
    A figure's builder and data travel pickled, so building, laying out and writing all happen in parallel.
    With one worker, or without a fork server, everything runs in this process.  ``close()`` waits for
    every file and raises one clear error if any failed.
    """

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        forkable = "forkserver" in multiprocessing.get_all_start_methods() and self.workers > 1
        self._pool = (ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("forkserver"),
                                          initializer=die_with_parent, initargs=(os.getpid(),))  # no orphans
                      if forkable else None)
        self._pending: list[tuple[Future, Path]] = []

    def draw(self, build: Callable, args: tuple, target: Path, dpi: int = 150, width: float | None = None,
             font_size: float | None = None, /, **kwargs) -> Future:
        """Build ``build(*args, **kwargs)`` and write it to ``target`` (.png and .pdf); ``.result()`` of the
        returned future is its panel count, once ``close()`` has returned."""
        while len(self._pending) >= 2 * self.workers:  # bound the figures in flight
            self._wait_one()
        future = self.run(draw_figure, build, args, kwargs, Path(target), dpi, width, font_size)
        self._pending.append((future, Path(target)))
        return future

    def run(self, function: Callable, *args) -> Future:
        """``function(*args)`` in a worker (here without workers); ``.result()`` gives its value."""
        if self._pool is not None:
            return self._pool.submit(function, *args)
        done: Future = Future()
        try:
            done.set_result(function(*args))
        except Exception as exc:  # reported like a worker's failure
            done.set_exception(exc)
        return done

    def result(self, future: Future, what: str, doing: str | None = None):
        """The value of ``future`` (from ``draw`` or ``run``).  A failure stops every worker and becomes one
        line: a builder's own message after ``what``, or any other error (a file that cannot be written, a
        worker that died) as ``<doing> failed (<error>)``."""
        try:
            return future.result()
        except CbirError as exc:
            self._abort()
            raise CbirError(f"{what}: {exc}") from None
        except Exception as exc:
            self._abort()
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise CbirError(f"{doing or what} failed ({why}); re-run the figures stage") from None

    def _wait_one(self) -> None:
        future, target = self._pending.pop(0)
        self.result(future, f"figure {target.name}", f"writing figure {target.name} (PNG + PDF)")

    def _abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def close(self) -> None:
        while self._pending:
            self._wait_one()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self._abort()
        else:
            self.close()


def drawn_panels(fig) -> int:
    """Axes that show something (an image, a line, a patch or a collection), colour bars excluded; each image
    of a gallery (an axes holding several images, :mod:`cbir.figures.gallery`) counts as one panel."""
    return sum(len(ax.images) if len(ax.images) > 1 else 1 for ax in fig.axes
               if ax.get_label() != "<colorbar>" and (ax.images or ax.lines or ax.patches or ax.collections))
