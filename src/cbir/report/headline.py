"""What each kind of dataset is scored by: its metrics, in order, the first being its headline metric.

A dataset's kind is its judgements' kind (:mod:`cbir.benchmark_eval`: ``pairs``, ``revisitop``, ``ukbench``,
``groups``) or ``None`` for class labels. The headline metric picks the "best" method everywhere (the README's
summary, the figures' "(best)", bold in the tables, sort order) and is ``cbir compare``'s default.
"""

from __future__ import annotations

from typing import Mapping

#: the metrics of a dataset, by kind: ``(compact key, header)``; the first is the headline
METRICS = {None: (("p@10", "P@10"), ("map", "mAP")),
           "pairs": (("micro_ap", "µAP"), ("recall@p0.9", "R@P90"), ("map", "mAP")),
           "revisitop": (("m_map", "mAP M"), ("h_map", "mAP H")),
           "ukbench": (("ns", "N-S"), ("map", "mAP")),
           "groups": (("map", "mAP"),)}

#: what each kind's relevance is, in a figure title's words
RELEVANCE = {None: "relevant = same class",
             "pairs": "relevant = the image a copy was made from",
             "revisitop": "relevant = the same landmark (revisitop easy/hard; junk ignored)",
             "ukbench": "relevant = the same object's 4 images",
             "groups": "relevant = the same scene group"}

#: compact keys that only one kind writes (how a compact metrics file tells its kind)
_MARKERS = (("micro_ap", "pairs"), ("m_map", "revisitop"), ("ns", "ukbench"), ("plain_map", "groups"))


def headline(kind: str | None) -> str:
    """The headline metric's compact key of a dataset kind."""
    return METRICS.get(kind, METRICS[None])[0][0]


def label(key: str) -> str:
    """A metric key's header (``micro_ap`` → ``µAP``), the key itself when no kind names it."""
    return next((text for cols in METRICS.values() for k, text in cols if k == key), key)


def kind_of(metrics: Mapping) -> str | None:
    """The kind of a dataset from its metrics (full: ``benchmark.kind``; compact: the keys only one kind
    writes), ``None`` for class labels."""
    for entry in metrics.values():
        if not isinstance(entry, Mapping):
            continue
        bench = entry.get("benchmark")
        if isinstance(bench, Mapping) and bench.get("kind") in METRICS:
            return bench["kind"]
        for key, kind in _MARKERS:
            if key in entry:
                return kind
    return None
