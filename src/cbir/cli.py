"""Command line: ``python -m cbir <stage> [...]``, one thin shell per DVC stage.

Every stage reads ``params.yaml`` in the current directory (the repo root).  A problem the
user can fix is printed as one line, ``error: ...``, with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cbir.errors import CbirError

log = logging.getLogger("cbir")


def _params(root: Path) -> dict:
    from cbir.config import load_params

    return load_params(root)


def cmd_params(args: argparse.Namespace) -> None:
    from cbir.config import write_params

    path = write_params(args.root, args.overrides)
    log.info("wrote %s from %s/conf", path, args.root)


def cmd_download(args):
    from cbir.data.stages import run_download

    run_download(_params(args.root), args.root)


def cmd_weights(args):
    from cbir.features.weights import run_weights

    run_weights(_params(args.root), args.backbone, args.root)


def cmd_curate(args):
    from cbir.data.stages import run_curate

    run_curate(_params(args.root), args.root)


def cmd_extract(args):
    from cbir.features.extract import run_extract

    run_extract(_params(args.root), args.method, args.root)


def cmd_retrieve(args):
    from cbir.stages_eval import run_retrieve

    run_retrieve(_params(args.root), args.method, args.root)


def cmd_evaluate(args):
    from cbir.stages_eval import run_evaluate

    run_evaluate(_params(args.root), args.root)


def cmd_figures(args):
    from cbir.viz import run_figures

    run_figures(_params(args.root), args.root)


def cmd_report(args):
    from cbir.report import run_report

    run_report(_params(args.root), args.root)


def cmd_plots_html(args):
    from cbir.plots_html import render_plots_html

    path = render_plots_html(args.root, out_dir=args.out)
    log.info("offline DVC plots page: %s", path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="compose conf/ with Hydra into params.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=synthetic")
    p.set_defaults(func=cmd_params)
    sub.add_parser("download", help="fetch the dataset into data/raw/<dataset>/").set_defaults(func=cmd_download)
    p = sub.add_parser("weights", help="fetch and verify a backbone's weights into models/")
    p.add_argument("backbone")
    p.set_defaults(func=cmd_weights)
    sub.add_parser("curate", help="decode, clean and split the dataset into a manifest").set_defaults(func=cmd_curate)
    for name, func, what in (("extract", cmd_extract, "compute one method's features"),
                             ("retrieve", cmd_retrieve, "cosine top-k for every query")):
        p = sub.add_parser(name, help=what)
        p.add_argument("method")
        p.set_defaults(func=func)
    sub.add_parser("evaluate", help="metrics, confidence intervals and plots").set_defaults(func=cmd_evaluate)
    sub.add_parser("figures", help="sample-trial figures and charts").set_defaults(func=cmd_figures)
    sub.add_parser("report", help="reports/report.md from metrics and figures").set_defaults(func=cmd_report)
    from cbir.query import add_query_parsers

    add_query_parsers(sub)
    p = sub.add_parser("plots-html", help="`dvc plots show` as a page that renders offline")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: dvc_plots/)")
    p.set_defaults(func=cmd_plots_html)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting is chatty
    try:
        args.func(args)
    except CbirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was half-written", file=sys.stderr)
        return 130
    return 0
