"""The offline `dvc plots show` page: the vendored Vega template, how DVC fills it, and (slow) a
headless Chromium render with the network blocked."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from cbir.errors import CbirError
from cbir.report.plots_page import (
    BUILD_FILES,
    TEMPLATE,
    build_template,
    check_offline,
    clean_script,
    read_package,
    render_plots_html,
    sri_sha512,
)

REPO = Path(__file__).resolve().parents[1]


def fake_tarball(path: Path, name: str, version: str, script: str, licence: str | None = "BSD text") -> Path:
    """An ``npm pack``-style tarball holding package.json, the build script and a LICENSE."""
    files = {"package/package.json": json.dumps({"name": name, "version": version, "license": "BSD-3-Clause"}),
             f"package/{BUILD_FILES[name]}": script}
    if licence is not None:
        files["package/LICENSE"] = licence
    with tarfile.open(path, "w:gz") as tar:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sri_sha512_is_the_npm_integrity_format():
    # echo -n abc | openssl dgst -sha512 -binary | base64
    assert sri_sha512(b"abc") == ("sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9"
                                  "RU1EI2Q86A4qmslPpUyknw==")


def test_build_template_inlines_the_three_scripts_in_load_order(tmp_path):
    packages = [read_package(fake_tarball(tmp_path / f"{n}.tgz", n, v, f"window.{n.replace('-', '_')}=1;\n"
                                          "//# sourceMappingURL=x.min.js.map\n"))
                for n, v in (("vega-embed", "6.1.0"), ("vega", "5.1.0"), ("vega-lite", "5.2.0"))]
    html = build_template(packages)
    order = [html.index(f'data-package="{n}@') for n in ("vega", "vega-lite", "vega-embed")]
    assert order == sorted(order)
    assert "{plot_divs}" in html and "{refresh_tag}" in html and "{scripts}" not in html
    assert "sourceMappingURL" not in html and "window.vega_lite=1;" in html
    assert "vega@5.1.0 build/vega.min.js (licence BSD-3-Clause, tarball sha512-" in html
    check_offline(html)
    with pytest.raises(CbirError, match="needs the npm packages vega-embed as well"):
        build_template(packages[1:])


def test_read_package_checks_integrity_and_refuses_what_cannot_be_inlined(tmp_path):
    tgz = fake_tarball(tmp_path / "v.tgz", "vega", "5.0.0", "var a = 1;")
    assert read_package(tgz, sri_sha512(tgz.read_bytes())).version == "5.0.0"
    with pytest.raises(CbirError, match=r"v.tgz has integrity sha512-.*, expected sha512-AAAA: delete it"):
        read_package(tgz, "sha512-AAAA")
    with pytest.raises(CbirError, match="contains '</script'"):
        clean_script("var s = '</script>';", "vega")
    with pytest.raises(CbirError, match="placeholder {plot_divs}"):
        clean_script("var s = '{plot_divs}';", "vega")
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(CbirError, match="junk.tgz is not an npm package tarball"):
        read_package(tmp_path / "junk.tgz")


def test_check_offline_finds_remote_scripts():
    check_offline('<script>var u = "https://example.org";</script><script src="static/local.js"></script>')
    for tag in ('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>',
                "<script type='text/javascript' src='//cdn.example/x.js'></script>"):
        with pytest.raises(CbirError, match="loads a remote script"):
            check_offline(tag)


def test_vendored_template_holds_vega_5_vega_lite_5_vega_embed_6():
    html = (REPO / TEMPLATE).read_text(encoding="utf-8")
    versions = re.findall(r'<script data-package="([a-z-]+)@(\d+)\.\d+\.\d+">', html)
    assert versions == [("vega", "5"), ("vega-lite", "5"), ("vega-embed", "6")]
    assert html.count("{plot_divs}") == 1 and "{scripts}" not in html
    assert html.count("Redistribution and use in source and binary forms") >= 1
    assert "sourceMappingURL" not in html
    check_offline(html)


def test_dvc_fills_the_template_without_cdn_scripts(tmp_path):
    from dvc_render.html import render_html
    from dvc_render.vega import VegaRenderer

    datapoints = [{"method": "a", "k": 1, "precision": 1.0, "lo": 0.9, "hi": 1.0},
                  {"method": "a", "k": 2, "precision": 0.5, "lo": 0.4, "hi": 0.6}]
    renderer = VegaRenderer(datapoints, "reports/plots/pk.csv", template=str(REPO / "reports/vega/lines_band.json"),
                            x="k", y="precision", title="P@k")
    out = render_html([renderer], tmp_path / "index.html", html_template=str(REPO / TEMPLATE))
    html = Path(out).read_text(encoding="utf-8")
    check_offline(html)
    assert "cdn.jsdelivr" not in html and "{plot_divs}" not in html
    spec = json.loads(re.search(r"var spec = (\{.*?\});\n", html, re.S).group(1))
    assert spec["layer"][1]["encoding"]["y"]["field"] == "precision" and spec["data"]["values"] == datapoints


@pytest.mark.parametrize("name", ["lines_band", "lines", "heatmap", "boxplot", "diff_bars"])
def test_vega_templates_are_json_with_the_data_anchor(name):
    text = (REPO / "reports" / "vega" / f"{name}.json").read_text()
    spec = json.loads(text)
    assert spec["data"] == {"values": "<DVC_METRIC_DATA>"} and "<DVC_METRIC_X>" in text


def test_render_plots_html_errors(tmp_path):
    with pytest.raises(CbirError, match="is not a DVC repository"):
        render_plots_html(tmp_path)
    (tmp_path / ".dvc").mkdir()
    with pytest.raises(CbirError, match="plots template .* not found"):
        render_plots_html(tmp_path)


# ---------------------------------------------------------------------------------------------
# slow: the real dvc.yaml, `dvc plots show`, headless Chromium with the network blocked
# ---------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                  "--virtual-time-budget=20000"]


def dvc_workspace(root: Path, params: dict) -> None:
    """Make ``root`` (a small run) a git-less DVC project with the repo's dvc.yaml and plot templates."""
    import sys

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "reports" / "vega", root / "reports" / "vega")
    shutil.copy(REPO / TEMPLATE, root / TEMPLATE)
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    full.update({k: v for k, v in params.items() if k != "dataset"})
    dataset = dict(params["dataset"])
    full["datasets"] = {dataset.pop("name"): dataset}  # the small run's one dataset, keyed by its name
    for cfg in full["methods"].values():
        cfg.setdefault("requires", {"code": "params.yaml", "data": "params.yaml"})
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))


@pytest.mark.slow
def test_plots_page_renders_offline_in_headless_chromium(tmp_path):
    from test_figures_report_stages import small_run

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: run `make setup` (apt-get install -y chromium)")
    params = small_run(tmp_path)
    dvc_workspace(tmp_path, params)
    page = render_plots_html(tmp_path)
    html = page.read_text(encoding="utf-8")
    check_offline(html)
    n_vega = html.count("vegaEmbed('#")
    assert n_vega == 5  # pk, pr, per_class, per_query, significance
    images = re.findall(r'<img src="(static/[^"]+\.png)"', html)
    assert all((page.parent / src).is_file() for src in images)  # figure PNGs are not DVC plots per dataset

    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=120)
    dom = proc.stdout
    assert "</body>" in dom, proc.stderr[-2000:]
    assert '<pre class="plot-error">' not in dom
    svgs = re.findall(r'<svg[^>]*class="marks"[^>]*width="(\d+)" height="(\d+)"', dom)
    assert len(svgs) == n_vega, "every plot must render"
    assert all(int(w) > 0 and int(h) > 0 for w, h in svgs)
    for mark in ("mark-line", "mark-area", "mark-rect", "mark-text", "mark-rule"):
        assert f'class="mark-{mark[5:]}' in dom, mark


def test_vega_templates_tell_revisions_apart_with_a_wide_palette_and_outside_legends():
    """`dvc plots diff` adds the field 'rev' to every datapoint: lines dash by it, the other plots give each
    'method @ rev' its own row; 14 distinct method colours; legends to the right of the data."""
    specs = {p.stem: json.loads(p.read_text()) for p in (REPO / "reports" / "vega").glob("*.json")}
    for name in ("lines", "lines_band"):
        text = json.dumps(specs[name])
        assert '"strokeDash": {"field": "rev"' in text, name
        colour = specs[name]["encoding"]["color"]
        assert colour["field"] == "method" and len(set(colour["scale"]["range"])) >= 12
        assert colour["legend"]["orient"] == "right" and specs[name]["config"]["legend"]["symbolLimit"] == 0
    for name in ("heatmap", "boxplot", "diff_bars"):
        assert specs[name]["transform"] == [{"calculate": "datum.rev ? datum.method + ' @ ' + datum.rev : "
                                                          "datum.method", "as": "series"}]
        assert "series" in json.dumps(specs[name]["encoding"])


def test_dvc_plots_diff_data_renders_two_revisions_apart(tmp_path):
    """DVC's own renderer fills the template with two revisions' datapoints; both keep their 'rev'."""
    from dvc_render.vega import VegaRenderer

    datapoints = [{"method": m, "k": k, "precision": p, "lo": p - 0.1, "hi": p + 0.1, "rev": rev}
                  for rev, shift in (("workspace", 0.0), ("exp-k20", 0.05)) for m in ("a", "b")
                  for k, p in ((1, 0.5 + shift), (2, 0.4 + shift))]
    renderer = VegaRenderer(datapoints, "reports/plots/pk.csv", template=str(REPO / "reports/vega/lines_band.json"),
                            x="k", y="precision")
    spec = renderer.get_filled_template()
    spec = json.loads(spec) if isinstance(spec, str) else spec
    assert {d["rev"] for d in spec["data"]["values"]} == {"workspace", "exp-k20"}
    assert spec["layer"][1]["encoding"]["strokeDash"]["field"] == "rev"
