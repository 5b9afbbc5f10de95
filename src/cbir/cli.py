"""Command line: ``python -m cbir <command> [...]``, the project's only argument parser.

Pipeline stages (one thin shell each in :mod:`cbir.stages`, run by ``dvc repro``), ``params``
(compose ``conf/`` into ``params.yaml``), ``readme`` (the README results block), ``query`` and
``serve`` (any image against the database) and ``plots-html`` (the offline DVC plots page).
Every command reads ``params.yaml`` in ``--root``.  A problem the user can fix is printed as one
line, ``error: ...``, with exit status 2 — never a traceback. Output into a pipe that closes early
(``cbir query ... --json | head -1``) ends the command quietly with exit status 141 (128 + SIGPIPE, what
the shell's own tools report, so ``set -o pipefail`` still sees it).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from cbir.config import load_params, select_dataset, write_params
from cbir.errors import CbirError
from cbir.fileio import WRITE_HINTS, clean_stale_temp
from cbir.features.resolve import resolve_callable
from cbir.stages import STAGES

log = logging.getLogger("cbir")

#: OS errors printed as one line even where no write point converted them (never a missing file: that is a bug)
OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.ENOTDIR)

#: what each command other than a pipeline stage runs, imported only when that command runs
HANDLERS = {
    "readme": "cbir.report.readme:write_readme_results", "query": "cbir.app.output:run_query",
    "serve": "cbir.app.server:run_server", "plots-html": "cbir.report.plots_page:render_plots_html",
    "update-template": "cbir.report.plots_page:update_template",
    "compare": "cbir.report.compare:run_compare", "clean": "cbir.workspace:clean",
}


def handler(name: str):
    """The function behind command ``name``: a pipeline stage's ``cbir.stages.<name>.run`` (the table
    :data:`cbir.stages.STAGES`, which ``dvc.yaml`` runs) or another command's :data:`HANDLERS` entry; its module
    is imported now, so a stage loads only its own code."""
    target = f"cbir.stages.{name}:run" if name in STAGES else HANDLERS[name]
    return resolve_callable(target, f"command {name}")


def cmd_params(args: argparse.Namespace) -> None:
    path = write_params(args.root, args.overrides)
    log.info("wrote %s from %s/conf", path, args.root)


def cmd_plots_html(args: argparse.Namespace) -> None:
    if args.update_template:
        from cbir.report.plots_page import TEMPLATE  # here, not at start-up: only this command needs it

        handler("update-template")(args.root / TEMPLATE, args.tarballs, args.root / "data" / "downloads" / "npm")
        return
    log.info("offline DVC plots page: %s", handler("plots-html")(args.root, out_dir=args.out))


#: each stage's command line: (operand, help); ``--dataset`` for the per-dataset stages
STAGE_ARGS = {
    "download": (None, "fetch the dataset into data/raw/<dataset>/"),
    "weights": ("backbone", "fetch and verify a backbone's weights into models/"),
    "curate": (None, "decode, clean and split the dataset into a manifest"),
    "extract": ("--method", "every method's features (a method whose inputs are unchanged keeps its files)"),
    "evaluate": ("--method", "every method's rankings, metrics, feedback simulation and figures (each redone only "
                             "when its inputs changed), then the comparison, the summary charts and the report"),
    "across": (None, "reports/datasets.md (+ .csv, .tex): methods x datasets, each dataset in its own metrics"),
}
PER_DATASET = ("download", "curate", "extract", "evaluate")


def choices_epilog(root: Path = Path(".")) -> str:
    """What ``--help`` lists: the methods of ``params.yaml`` and the method and dataset configs in ``conf/``."""
    lines = []
    try:
        methods = list((load_params(root).get("methods") or {}))
    except CbirError:
        methods = []
    if methods:
        lines.append("methods in params.yaml: " + ", ".join(methods))
    for group, what in (("method", "method configs (add with -S '+method@methods.NAME=NAME')"),
                        ("dataset", "datasets (dvc exp run -S '+dataset@datasets.NAME=NAME')"),
                        ("split", "splits (dvc exp run -S split=NAME)")):
        names = sorted(p.stem for p in (Path(root) / "conf" / group).glob("*.yaml"))
        if names:
            lines.append(f"{what}: " + ", ".join(names))
    return "\n".join(lines)


DATASET_HELP = "dataset of params.yaml's datasets (default: the only one; with several, name one)"


def add_stage_parsers(sub, epilog: str = "") -> None:
    for name in STAGES:
        operand, what = STAGE_ARGS[name]
        p = sub.add_parser(name, help=what, epilog=epilog if operand == "--method" else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if operand == "--method":
            p.add_argument("--method", default=None, help="only this method, without the comparison (default: "
                                                          "every method of params.yaml)")
        elif operand:
            p.add_argument(operand)
        if name in PER_DATASET:
            p.add_argument("--dataset", default=None, help=DATASET_HELP)

        def call(args, name=name):
            params = load_params(args.root)
            if name in PER_DATASET:
                params = select_dataset(params, args.dataset)
            extra = {"method": args.method} if STAGE_ARGS[name][0] == "--method" else {}
            positional = [args.backbone] if name == "weights" else []
            handler(name)(params, *positional, args.root, **extra)
        p.set_defaults(func=call)


def add_query_parsers(sub, epilog: str = "") -> None:
    p = sub.add_parser("query", help="rank the database for any image (top-k by cosine similarity)", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Rank the database for query images with a pipeline method, applying its "
                                   "re-ranking and saved index exactly as the retrieve stage does.")
    p.add_argument("image", nargs="+", help="query image files, folders (their images) or globs "
                                            "(need not be in the dataset)")
    p.add_argument("--method", default=None, help="pipeline method (default: the first in params.yaml)")
    p.add_argument("--k", type=int, default=None, help="number of results (default: retrieval.k, 10)")
    p.add_argument("--figure", type=Path, default=None, help="also save a sample-trial figure (PNG + PDF)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", type=Path, default=None,
                   help="save the results: .csv (one row per query and rank) or .json")
    p.add_argument("--exclude-self", action="store_true",
                   help="drop a query's own database entry (same file or same decoded pixels)")
    p.add_argument("-q", "--quiet", dest="query_quiet", action="store_true", help="no progress bars")
    p.add_argument("--relevant", action="append", default=[], metavar="ID,...",
                   help="relevance feedback: database image ids judged relevant. Repeat --relevant/--irrelevant "
                        "once per round: marks accumulate (the re-ranking uses every mark so far) and marked "
                        "images are never returned again")
    p.add_argument("--irrelevant", action="append", default=[], metavar="ID,...",
                   help="relevance feedback: database image ids judged not relevant (repeatable, as --relevant)")
    p.add_argument("--feedback", choices=("rocchio", "svm"), default=None,
                   help="how marks re-rank: rocchio (query-point movement) or svm (linear SVM on the marks; "
                        "Rocchio when only one kind of mark is given); default: the first of feedback.methods")
    p.add_argument("--box", default=None, metavar="x0,y0,x1,y1",
                   help="query a region of the image: pixel box, top-left origin, x1 and y1 exclusive")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    p.set_defaults(func=lambda a: handler("query")(
        select_dataset(load_params(a.root), a.dataset), a.root, a.image, method=a.method, k=a.k, figure=a.figure, as_json=a.json,
        out=a.out, exclude_self=a.exclude_self, quiet=a.quiet or a.query_quiet, relevant=a.relevant,
        irrelevant=a.irrelevant, feedback=a.feedback, box=a.box))

    p = sub.add_parser("serve", help="a local web page to query the database by upload or by image id",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--method", action="append", default=None,
                   help="method to offer (repeatable; default: every method whose features are built)")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    p.set_defaults(func=lambda a: handler("serve")(select_dataset(load_params(a.root), a.dataset), a.root, host=a.host, port=a.port,
                                             methods=a.method or None))


def _root_of(argv: list[str] | None) -> Path:
    """``--root`` of ``argv`` before the full parse (``--help`` lists that root's methods and datasets)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--root", type=Path, default=Path("."))
    return early.parse_known_args(argv)[0].root


def build_parser(root: Path = Path(".")) -> argparse.ArgumentParser:
    epilog = choices_epilog(root)
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__.splitlines()[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="compose conf/ with Hydra into params.yaml", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=synthetic")
    p.set_defaults(func=cmd_params)
    add_stage_parsers(sub, epilog)
    sub.add_parser("readme", help="rewrite README.md's results block from metrics/ (one table per dataset)"
                   ).set_defaults(func=lambda a: handler("readme")(a.root))
    add_query_parsers(sub, epilog)
    p = sub.add_parser("compare", help="every experiment x dataset x method, one metric, on one screen "
                                       "(from dvc exp show --json)")
    p.add_argument("--metric", default=None, help="any key of metrics/<ds>.json (micro_ap, m_map, ns, …); default: "
                                                   "each dataset's headline metric")
    p.add_argument("--format", choices=("text", "csv", "latex"), default="text", help="output form (default: text)")
    p.set_defaults(func=lambda a: handler("compare")(a.root, a.metric, a.format))
    p = sub.add_parser("clean", help="remove what the current pipeline does not produce (the way back from an "
                                     "experiment, after `git checkout -- .` and `dvc checkout --force`)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=lambda a: [print(f) for f in handler("clean")(a.root, dry_run=a.dry_run) if a.dry_run])
    p = sub.add_parser("plots-html", help="`dvc plots show` as a page that renders offline")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: dvc_plots/)")
    p.add_argument("--update-template", action="store_true",
                   help="rebuild the page's template (reports/dvc_plots_template.html) from the Vega npm packages "
                        "(vega, vega-lite, vega-embed) instead")
    p.add_argument("--tarballs", type=Path, nargs="*", help="use these npm pack .tgz files (no download)")
    p.set_defaults(func=cmd_plots_html)
    return parser


def process_seconds() -> float:
    """Wall seconds since this process started (interpreter start-up and imports included; Linux's
    ``/proc``), so ``benchmarks/pipeline.py`` can tell a stage's own time from DVC's bookkeeping around it."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def exp_run_hint() -> str:
    """Inside a failed ``dvc exp run`` (DVC sets ``DVC_EXP_BASELINE_REV``), what restores the workspace: DVC has
    already rewritten ``params.yaml`` (without its header) and the stages before this one, and may have staged
    them (a killed run leaves the experiment's ``params.yaml`` in the index), so they come back from ``HEAD``,
    index and working tree both."""
    if not os.environ.get("DVC_EXP_BASELINE_REV"):
        return ""
    return ("; this `dvc exp run` failed: restore the workspace with "
            "`git checkout HEAD -- params.yaml dvc.lock metrics reports && dvc checkout`")


def main(argv: list[str] | None = None) -> int:
    args = build_parser(_root_of(argv)).parse_args(argv)
    if args.quiet or getattr(args, "query_quiet", False):
        os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads its defaults from TQDM_* variables
        args.quiet = True
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting is chatty
    try:
        clean_stale_temp(args.root)  # what a killed run left, and any paired replace it had committed
        args.func(args)
        if args.command in STAGES:
            log.info("stage %s: %.2f s in this process", args.command, process_seconds())
        sys.stdout.flush()  # a closed pipe shows up here, inside the try, not at interpreter exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Python's recipe: no second error when stdout is flushed at exit
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except CbirError as exc:
        print(f"error: {exc}{exp_run_hint()}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in OS_ERRORS:
            raise
        # a full, read-only or forbidden place that no write point named (a library on its own): one line
        where = exc.filename if exc.filename is not None else "a file"
        print(f"error: cannot use {where} ({exc.strerror or exc}): {WRITE_HINTS[exc.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was half-written", file=sys.stderr)
        return 130
    return 0
