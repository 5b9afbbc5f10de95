"""Figure options: a subset of methods, width, font size, a palette of distinct colours, legends outside."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_figures_report_stages import SMALL_PARAMS, small_run

from cbir.errors import CbirError
from cbir.figures.charts import curves_figure
from cbir.figures.style import (
    METHOD_PALETTE,
    figure_settings,
    fit_layout,
    method_colours,
)
from cbir.figures.trials import sample_trials_figure
from cbir.fileio import read_json


def test_palette_gives_at_least_twelve_clearly_distinct_colours():
    methods = [f"m{i}" for i in range(16)]
    colours = list(method_colours(methods).values())
    assert len(METHOD_PALETTE) >= 12 and len(set(colours)) == 16
    rgb = np.array([matplotlib.colors.to_rgb(c) for c in colours])
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(16) * 9
    assert gaps.min() > 0.15  # no two methods share (nearly) the same colour
    many = method_colours([f"m{i}" for i in range(30)])
    assert len(set(many.values())) == 30


def test_curve_legend_sits_outside_the_axes():
    curves = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "k": [1, 2, 3] * 2,
                           "precision": [1.0, 0.9, 0.8, 1.0, 1.0, 1.0]})
    fig = curves_figure(curves, "k", "k", "P@k", "t", ["a", "b"])
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # entirely right of the data area


def test_width_and_font_size_resize_the_figure_and_its_text():
    curves = pd.DataFrame({"method": ["a"] * 2, "k": [1, 2], "precision": [1.0, 0.5]})
    fig = curves_figure(curves, "k", "k", "P@k", "title", ["a"])
    w, h = fig.get_size_inches()
    sizes = {t.get_text(): t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()}
    fit_layout(fig, width=2 * w, font_size=12)
    assert tuple(fig.get_size_inches()) == pytest.approx((2 * w, 2 * h))
    after = {t.get_text(): t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()}
    assert after["title"] == pytest.approx(sizes["title"] * 1.5)  # 12 / 8 points
    fig2 = curves_figure(curves, "k", "k", "P@k", "title", ["a"])
    fit_layout(fig2)  # nulls change nothing
    assert tuple(fig2.get_size_inches()) == pytest.approx((w, h))


def test_bad_options_are_one_clear_line():
    params = {"methods": {"a": {}, "b": {}}}
    assert figure_settings(params)["methods"] == ["a", "b"]
    assert figure_settings({**params, "figures": {"methods": ["b", "a", "b"]}})["methods"] == ["b", "a"]
    with pytest.raises(CbirError, match=r"figures.methods names zz, not among the methods \(a, b\)"):
        figure_settings({**params, "figures": {"methods": ["a", "zz"]}})
    with pytest.raises(CbirError, match="figures.methods is 'a': give a non-empty list"):
        figure_settings({**params, "figures": {"methods": "a"}})
    with pytest.raises(CbirError, match=r"figures.width is 0: use a number from 1 to 40 \(inches\)"):
        figure_settings({**params, "figures": {"width": 0}})
    with pytest.raises(CbirError, match=r"figures.font_size is 'big'"):
        figure_settings({**params, "figures": {"font_size": "big"}})


def test_the_stage_draws_only_the_chosen_methods_at_the_chosen_width(tmp_path):
    params = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SMALL_PARAMS.items()}
    params["figures"] = {**params["figures"], "methods": ["color_moments"], "width": 4.0, "font_size": 10}
    small_run(tmp_path, params, figures=False)
    from cbir.figures.figure_files import run as run_figures

    run_figures(params, tmp_path)
    out = tmp_path / "reports/syn/figures"
    names = [f["name"] for f in read_json(out / "figures.json")]
    assert "trials_color_moments" in names and "trials_hsv_hist" not in names
    assert "confusions_hsv_hist" not in names
    for name in names:
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file()
    with Image.open(out / "comparison.png") as image:
        assert image.size[0] == pytest.approx(4.0 * params["figures"]["dpi"], abs=2)


def test_figures_written_in_workers_are_byte_identical_and_a_failure_is_one_line(tmp_path):
    from cbir.figures.style import FigureWriter, draw_figure

    curves = pd.DataFrame({"method": ["a"] * 3, "k": [1, 2, 3], "precision": [1.0, 0.5, 0.25]})
    args = [(curves, "k", "k", "P@k", f"t{i}", ["a"]) for i in range(3)]
    (tmp_path / "seq").mkdir()
    (tmp_path / "par").mkdir()
    for i, a in enumerate(args):
        assert draw_figure(curves_figure, a, {}, tmp_path / "seq" / f"f{i}", 50) == 1
    with FigureWriter(workers=2) as writer:
        panels = [writer.draw(curves_figure, a, tmp_path / "par" / f"f{i}", 50) for i, a in enumerate(args)]
    assert [p.result() for p in panels] == [1, 1, 1]
    for i in range(3):
        for suffix in (".png", ".pdf"):
            assert (tmp_path / "par" / f"f{i}{suffix}").read_bytes() == (tmp_path / "seq" / f"f{i}{suffix}").read_bytes()
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(CbirError, match=r"figure f0: cannot write .*a_file/f0\.png: File exists: a file stands where "
                                        r"that folder should be"):
        with FigureWriter(workers=2) as writer:
            writer.draw(curves_figure, args[0], tmp_path / "a_file" / "f0", 50)
    with pytest.raises(CbirError, match="figure t: no queries to draw"):  # a builder's own message, in one line
        with FigureWriter(workers=2) as writer:
            writer.draw(sample_trials_figure, ([],), tmp_path / "par" / "t", 50)

def _fails(_):
    raise ValueError("perplexity too large")


def test_a_failed_computation_in_a_worker_is_one_line():
    from cbir.figures.style import FigureWriter

    with pytest.raises(CbirError, match=r"^t-SNE map of a failed \(ValueError: perplexity too large\); re-run"):
        with FigureWriter(workers=2) as writer:
            writer.result(writer.run(_fails, 1), "t-SNE map of a")
    with FigureWriter(workers=1) as writer:  # in this process: the same line
        with pytest.raises(CbirError, match=r"^t-SNE map of a failed \(ValueError"):
            writer.result(writer.run(_fails, 1), "t-SNE map of a")
