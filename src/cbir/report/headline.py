"""What each kind of dataset is scored by: its metrics, in order, the first being its headline metric.

A dataset's kind is its judgements' kind (:mod:`cbir.scoring.benchmark_eval`: ``pairs``, ``revisitop``, ``ukbench``,
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
    named = [(k, text) for cols in METRICS.values() for k, text in cols]
    named += [(k, text) for cols in SHOWN.values() for k, text, _ in cols]
    return next((text for k, text in named if k == key), key)


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


#: what a dataset's figures and main table show, by kind: ``(key, header, y-axis top)``; class labels keep
#: their own set (P@k, R@k, mAP: :func:`cbir.report.tables.table_columns`)
SHOWN = {"pairs": (("micro_ap", "µAP", 1.0), ("recall@p0.9", "R@P90", 1.0)),
         "revisitop": (("e_map", "mAP E", 1.0), ("m_map", "mAP M", 1.0), ("h_map", "mAP H", 1.0),
                       ("m_mp@10", "mP@10 M", 1.0), ("h_mp@10", "mP@10 H", 1.0)),
         "ukbench": (("ns", "N-S", 4.0), ("map", "mAP", 1.0)),
         "groups": (("map", "mAP", 1.0), ("plain_map", "plain mAP", 1.0)),
         None: (("p@10", "P@10", 1.0), ("map", "mAP", 1.0))}

_PROTOCOL = {"e": "easy", "m": "medium", "h": "hard"}


def _value(entry: Mapping, key: str, kind: str | None) -> tuple:
    """``(value, [lo, hi] or None)`` of ``key`` in a full metrics entry of a dataset of ``kind``."""
    bench = entry.get("benchmark") if isinstance(entry.get("benchmark"), Mapping) else {}
    ci = entry.get("ci95") or {}
    if kind == "revisitop" and key[:2] in ("e_", "m_", "h_"):
        part = bench.get(_PROTOCOL[key[0]]) or {}
        name = key[2:]
        return part.get(name), (part.get("map_ci95") if name == "map" else None)
    if kind == "pairs" and key in ("micro_ap", "recall@p0.9"):
        return bench.get(key), bench.get(f"{key}_ci95")
    if key in ("ns", "plain_map"):
        return bench.get(key), None
    return entry.get(key), ci.get(key)


def flat(metrics: Mapping[str, Mapping], kind: str | None) -> dict[str, dict]:
    """Per method ``{key: value, ..., "ci95": {key: [lo, hi]}}`` of the metrics a dataset of ``kind`` shows
    (:data:`SHOWN`), read from the full metrics (``reports/<ds>/metrics.json``)."""
    out = {}
    for method, entry in metrics.items():
        row: dict = {"ci95": {}}
        for key, _, _ in SHOWN.get(kind, SHOWN[None]):
            value, ci = _value(entry, key, kind)
            row[key] = value
            if ci and ci[0] is not None and ci[1] is not None:
                row["ci95"][key] = list(ci)
        out[method] = row
    return out


def best(metrics: Mapping[str, Mapping], kind: str | None) -> list[str]:
    """Methods by the headline metric, best first (missing last; ties keep the given order)."""
    key = headline(kind)
    values = flat(metrics, kind)

    def score(method: str) -> float:
        value = values[method].get(key)
        return float("-inf") if value is None or value != value else float(value)
    return sorted(metrics, key=lambda m: -score(m))
