"""Readable, colour-blind-safe figures: trial marks beside colours, at most 6 curves per panel, heat-map
numbers at least 8 pt once printed at an article's text width."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pandas as pd

from cbir.figures.charts import curves_figure, per_class_heatmap
from cbir.figures.style import (
    IRRELEVANT,
    IRRELEVANT_MARK,
    MAX_CURVES_PER_PANEL,
    MIN_PRINTED_PT,
    PRINTED_WIDTH_IN,
    RELEVANT,
    RELEVANT_MARK,
)
from cbir.figures.trials import sample_trials_figure


def _grey(hex_colour: str) -> float:
    r, g, b = matplotlib.colors.to_rgb(hex_colour)
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_trial_results_carry_a_mark_beside_their_colour():
    image = np.full((8, 8, 3), 128, np.uint8)
    results = [{"image": image, "label": "x", "image_id": str(i), "rank": i + 1, "score": 0.9 - i / 10,
                "relevant": i % 2 == 0} for i in range(5)]
    fig = sample_trials_figure([{"query": {"image": image, "label": "x", "image_id": "q"}, "results": results}])
    marks = {line.get_marker(): (line.get_color(), len(line.get_xdata())) for line in fig.axes[0].lines}
    assert marks == {RELEVANT_MARK: (RELEVANT, 3), IRRELEVANT_MARK: (IRRELEVANT, 2)}
    assert abs(_grey(RELEVANT) - _grey(IRRELEVANT)) > 0.1  # told apart in grey scale too


def _curves(n_methods: int, n_k: int = 20) -> pd.DataFrame:
    return pd.DataFrame([{"method": f"m{i}", "k": k, "precision": 1 / k, "lo": 0.5 / k, "hi": 1.0}
                         for i in range(n_methods) for k in range(1, n_k + 1)])


def test_curves_are_faceted_to_at_most_six_per_panel_with_shapes():
    fig = curves_figure(_curves(10), "k", "k", "P@k", "t")
    assert len(fig.axes) == 2 and [len(ax.lines) for ax in fig.axes] == [5, 5]
    assert all(len(ax.lines) <= MAX_CURVES_PER_PANEL for ax in fig.axes)
    assert len({line.get_marker() for line in fig.axes[0].lines}) == 5
    assert not any(ax.collections for ax in fig.axes)  # no bands under 5 curves
    one = curves_figure(_curves(3), "k", "k", "P@k", "t")
    assert len(one.axes) == 1 and len(one.axes[0].collections) == 3  # bands where they stay readable


def _per_class(n_methods: int, n_classes: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"method": f"method-{i}", "label": f"class_{j:02d}", "p@10": rng.random()}
                         for i in range(n_methods) for j in range(n_classes)])


def test_heatmap_numbers_are_at_least_8_pt_once_printed():
    for n_methods, n_classes in ((10, 12), (3, 4), (12, 10)):
        fig = per_class_heatmap(_per_class(n_methods, n_classes))
        printed = min(1.0, PRINTED_WIDTH_IN / fig.get_figwidth())
        cells = fig.axes[0].texts
        assert len(cells) == n_methods * n_classes
        assert min(t.get_fontsize() for t in cells) * printed >= MIN_PRINTED_PT - 1e-9
    transposed = per_class_heatmap(_per_class(10, 12))
    assert transposed.axes[0].images[0].get_array().shape == (12, 10)  # classes as rows: the columns are fewer
    crowded = per_class_heatmap(_per_class(30, 40))
    assert not crowded.axes[0].texts  # too many columns for 8 pt: colours and the colour bar only
