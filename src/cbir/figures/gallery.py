"""Image galleries on one axes: every thumbnail is an image placed by its extent, with its caption above
and a coloured frame.

One axes per figure instead of one per thumbnail: a matplotlib Axes with its ticks and spines costs tens
of milliseconds to build, lay out, pickle and draw, an image placed on a shared axes almost nothing, so a
60-thumbnail trials figure is built and written several times faster and looks the same.  The layout is
computed in inches (no tight_layout pass); ``drawn_panels`` counts each image of a gallery as a panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cbir.figures.style import STYLE

#: the points of one inch
POINTS = 72.0


@dataclass(frozen=True)
class Cell:
    """One cell of a gallery: an ``image`` (uint8 RGB) with a ``caption`` above it and a ``frame`` colour,
    or, with no image, ``caption`` written as a text block in the cell (left aligned)."""

    image: np.ndarray | None = None
    caption: str = ""
    frame: str | None = None
    colour: str = "black"


def gallery_figure(rows: Sequence[Sequence[Cell]], widths: Sequence[float], image_height: float,
                   caption_size: float = 6.0, caption_lines: int = 2, row_labels: Sequence[str] | None = None,
                   title: str = "", gap: float = 0.12) -> Figure:
    """A grid of :class:`Cell` rows on one axes; column ``j`` is ``widths[j]`` inches wide and every image
    fits in ``widths[j] - gap`` x ``image_height`` inches (aspect kept), its caption in ``caption_lines``
    lines of ``caption_size`` points above it.  ``row_labels`` are written vertically left of each row."""
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError("row_labels must have one entry per row")
    caption_h = caption_lines * caption_size * 1.25 / POINTS
    cell_h = caption_h + image_height + gap
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    grid_w, grid_h = float(edges[-1]), cell_h * len(rows)
    left = 0.1 + (0.3 if row_labels is not None else 0.0)
    top = 0.4 if title else 0.1
    bottom = right = 0.08
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(grid_w + left + right, grid_h + top + bottom))
        ax = fig.subplots()
        fig_w, fig_h = fig.get_size_inches()
        fig.subplots_adjust(left=left / fig_w, right=1 - right / fig_w, bottom=bottom / fig_h, top=1 - top / fig_h)
        ax.set_axis_off()
        ax.set_xlim(0, grid_w)
        ax.set_ylim(grid_h, 0)
        ax.set_autoscale_on(False)  # the limits are the grid's: no recomputation per image and frame
        for i, row in enumerate(rows):
            y0 = i * cell_h + caption_h  # top of the image box
            for j, cell in enumerate(row):
                _draw_cell(ax, cell, edges[j] + gap / 2, y0, widths[j] - gap, image_height, caption_size)
            if row_labels is not None:
                ax.text(-0.06, y0 + image_height / 2, row_labels[i], rotation=90, ha="right", va="center",
                        fontsize=7, clip_on=False)
        ax.set_aspect("equal")
        if title:
            fig.suptitle(title, fontsize=9, y=1 - 0.08 / fig_h, va="top")
    return fig


def _draw_cell(ax, cell: Cell, x0: float, y0: float, box_w: float, box_h: float, caption_size: float) -> None:
    if cell.image is None:
        ax.text(x0, y0 + box_h / 2, cell.caption, ha="left", va="center", fontsize=caption_size + 1,
                color=cell.colour)
        return
    h, w = cell.image.shape[:2]
    scale = min(box_w / w, box_h / h)
    iw, ih = w * scale, h * scale
    x = x0 + (box_w - iw) / 2
    ax.imshow(cell.image, extent=(x, x + iw, y0 + ih, y0), interpolation="antialiased")
    if cell.frame is not None:
        ax.add_patch(Rectangle((x, y0), iw, ih, fill=False, edgecolor=cell.frame, linewidth=2.5))
    if cell.caption:
        ax.text(x + iw / 2, y0 - 0.03, cell.caption, ha="center", va="bottom", fontsize=caption_size,
                color=cell.colour)
