"""Stage ``summarize``: one dataset's per-method results combined, the cheap step after any method changes.

Reads every method's ``data/evaluation/<ds>/<method>/``, ``data/feedback/<ds>/methods/<method>/`` and
``data/figures/<ds>/<method>.json`` and writes what compares methods: ``metrics/<ds>.json``,
``reports/<ds>/metrics.json``, the plot tables and paired tests (Holm across methods,
:func:`cbir.stages.evaluate.combine`), ``reports/<ds>/feedback/`` (:func:`cbir.stages.feedback.combine`),
and the summary charts with ``figures.json`` (:func:`cbir.stages.figures.combine`).
"""

from __future__ import annotations

from pathlib import Path

from cbir.stages import evaluate, feedback, figures


def run(params: dict, root: str | Path) -> None:
    """Combine every method's evaluation, feedback and figures of one dataset (the module docstring)."""
    evaluate.combine(params, root)
    feedback.combine(params, root)
    figures.combine(params, root)
