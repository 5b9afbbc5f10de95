"""The same figure is the same bytes in any font environment: two processes, one with a hostile
``matplotlibrc``, another DejaVu Sans listed first by its font cache, another time zone and build date,
the other with matplotlib's own fonts only, write identical PNG and PDF files (src/cbir/figures/style.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
from fontTools.ttLib import TTFont

from cbir.figures.style import PINNED_FAMILY

#: the child process: arrange its font environment, then draw one real chart with cbir's style (or, with
#: ``plain``, the same text with matplotlib alone) to ``out``; prints the file that DejaVu Sans resolves to
CHILD = r"""
import json, sys
from pathlib import Path
import matplotlib, matplotlib.font_manager as fm

mode, out = sys.argv[1], Path(sys.argv[2])
# a user's fake DejaVu Sans (when there is one) listed first, as a font cache of another order would list it
fake = [e for e in fm.fontManager.ttflist if "fake" in Path(e.fname).name]
fm.fontManager.ttflist = fake + [e for e in fm.fontManager.ttflist if e not in fake]
fm.fontManager._findfont_cached.cache_clear()
resolved = fm.findfont("DejaVu Sans")
if mode == "plain":
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3, 2))
    fig.subplots().set_title("mAP 0.5", family="DejaVu Sans")
    fig.savefig(out.with_suffix(".pdf"), metadata={"CreationDate": None})
else:
    import pandas as pd
    from cbir.figures.charts import curves_figure
    from cbir.figures.style import save_figure
    curves = pd.DataFrame({"method": ["hog"] * 3 + ["mobilenet_v2-gem"] * 3, "k": [1, 5, 10] * 2,
                           "precision": [0.9, 0.62, 0.5, 1.0, 0.84, 0.71]})
    save_figure(curves_figure(curves, "k", "k", "P@k", "Precision at k", ["hog", "mobilenet_v2-gem"]), out, dpi=60)
print(json.dumps({"resolved": resolved}))
"""

FAKE_PS_NAME = "FakeDejaVuSans"


def fake_dejavu(target: Path) -> Path:
    """matplotlib's DejaVu Sans with another PostScript name and glyphs 20% wider: a different file with the
    same family name, as another DejaVu version on the system would be."""
    font = TTFont(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
    for record in font["name"].names:
        if record.nameID in (3, 4, 6):
            record.string = FAKE_PS_NAME
    metrics = font["hmtx"].metrics
    for glyph, (advance, lsb) in metrics.items():
        metrics[glyph] = (int(advance * 1.2), lsb)
    target.parent.mkdir(parents=True, exist_ok=True)
    font.save(target)
    return target


def environment(tmp: Path, hostile: bool) -> dict:
    """A fresh ``MPLCONFIGDIR`` (an empty font cache) and ``HOME``; ``hostile``: a ``matplotlibrc`` that changes
    fonts, font type, colours and dpi, a fake DejaVu Sans in ``XDG_DATA_HOME/fonts`` beside the system's fonts,
    another time zone and a ``SOURCE_DATE_EPOCH``; else matplotlib's own fonts only (``MPL_IGNORE_SYSTEM_FONTS``)."""
    config, home = tmp / "mplconfig", tmp / "home"
    config.mkdir(parents=True)
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_", "SOURCE_DATE"))}
    env.update(MPLCONFIGDIR=str(config), HOME=str(home), TZ="UTC", MPLBACKEND="agg")
    if hostile:
        (config / "matplotlibrc").write_text(
            "font.family: serif\nfont.size: 13\npdf.fonttype: 3\naxes.facecolor: eeeeee\nsavefig.dpi: 300\n"
            "lines.linewidth: 4\npdf.compression: 9\naxes.unicode_minus: False\n")
        fake_dejavu(tmp / "share" / "fonts" / "fake-DejaVuSans.ttf")
        env.update(XDG_DATA_HOME=str(tmp / "share"), TZ="Pacific/Kiritimati", SOURCE_DATE_EPOCH="86400")
    else:
        env.update(MPL_IGNORE_SYSTEM_FONTS="1")
    return env


def draw(tmp: Path, mode: str, hostile: bool) -> tuple[dict, Path]:
    env = environment(tmp, hostile)
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(tmp / "figure")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), tmp / "figure"


def test_one_figure_has_the_same_bytes_in_two_font_environments(tmp_path):
    control, control_out = draw(tmp_path / "control", "plain", hostile=True)
    assert Path(control["resolved"]).name == "fake-DejaVuSans.ttf"  # the hostile environment really is one:
    assert FAKE_PS_NAME.encode() in control_out.with_suffix(".pdf").read_bytes()  # matplotlib alone embeds the fake

    hostile, hostile_out = draw(tmp_path / "hostile", "cbir", hostile=True)
    bare, bare_out = draw(tmp_path / "bare", "cbir", hostile=False)
    assert Path(bare["resolved"]).parent == Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for suffix in (".png", ".pdf"):
        a, b = hostile_out.with_suffix(suffix).read_bytes(), bare_out.with_suffix(suffix).read_bytes()
        assert a == b, f"{suffix} differs between the two font environments ({len(a)} vs {len(b)} bytes)"
    pdf = bare_out.with_suffix(".pdf").read_bytes()
    assert b"+DejaVuSans" in pdf and FAKE_PS_NAME.encode() not in pdf  # the bundled file, a TrueType subset
    assert b"/FontFile2" in pdf and b"/CreationDate" not in pdf and b"/Producer" not in pdf
    assert b"Software" not in bare_out.with_suffix(".png").read_bytes()


def test_the_pinned_family_is_matplotlibs_own_dejavu_sans():
    from matplotlib.font_manager import FontProperties, findfont

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    assert Path(findfont(FontProperties(family=PINNED_FAMILY))) == bundled / "DejaVuSans.ttf"
    assert Path(findfont(FontProperties(family=PINNED_FAMILY, weight="bold"))) == bundled / "DejaVuSans-Bold.ttf"
    assert Path(findfont(FontProperties(family=PINNED_FAMILY, style="oblique"))) == bundled / "DejaVuSans-Oblique.ttf"
