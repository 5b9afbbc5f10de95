"""Stage ``across`` (one for the experiment): ``reports/datasets.{md,csv,tex}``, the methods x datasets table,
each dataset in its own metrics, from every dataset's compact ``metrics/<ds>.json`` (:mod:`cbir.report.across`)."""

from __future__ import annotations

from pathlib import Path

from cbir.report.across import write_across


def run(params: dict, root: str | Path) -> None:
    """Write the table across the experiment's datasets."""
    write_across(params, Path(root))
