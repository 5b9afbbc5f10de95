"""Stage ``evaluate`` (one per dataset x method): everything one method computes after its retrieve.

Its metrics (:func:`cbir.stages.evaluate.run_method`), its relevance feedback simulation
(:func:`cbir.stages.feedback.run_method`) and its own figures (:func:`cbir.stages.figures.run_method`), in one
process and one DVC stage: DVC's bookkeeping costs more per stage than any of the three, so one method's
change pays it once. The per-dataset ``summarize`` combines every method's results.
"""

from __future__ import annotations

from pathlib import Path

from cbir.stages import evaluate, feedback, figures


def run(params: dict, method: str, root: str | Path) -> None:
    """Evaluate ``method``, simulate the user on it and draw its figures (the module docstring)."""
    evaluate.run_method(params, method, root)
    feedback.run_method(params, method, root)
    figures.run_method(params, method, root)
