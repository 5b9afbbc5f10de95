"""Relevance judgements as data: for each query, which database rows are relevant and which are junk.

A :class:`Judgement` holds one query's ``positives`` (database row numbers, optionally with
``grades``) and its ``junk``: rows that are neither relevant nor irrelevant and are removed
from the ranking before it is scored, as revisitop does for ROxford5k/RParis6k. A row that is
both a positive and junk counts as junk. Under leave-one-out the query's own database row is
junk, so it is never counted even where a ranking still holds it.

:class:`Judgements` is one judgement per query (in query order) over a database of
``n_database`` rows. Its constructors cover the usual cases:

* :meth:`Judgements.from_labels`: relevant = the same class label (Corel-1K, Caltech-101, and
  group ids such as Holidays' scenes or UKBench's groups of 4);
* :meth:`Judgements.from_multilabel`: relevant = sharing at least one label (optional grade:
  how many labels are shared);
* :meth:`Judgements.from_revisitop`: revisitop's ``gnd`` lists (``easy``, ``hard``, ``junk``) under
  the Easy, Medium or Hard protocol;
* :meth:`Judgements.from_positives`: any explicit lists (copy detection's query→reference pairs).

Pure: arrays in, arrays out; nothing here knows about features or search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

#: revisitop's protocols: which ``gnd`` lists are positives and which are junk
PROTOCOLS = {"easy": (("easy",), ("junk", "hard")),
             "medium": (("easy", "hard"), ("junk",)),
             "hard": (("hard",), ("junk", "easy"))}

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False

#: codes of :meth:`Judgements.status`
NEGATIVE, POSITIVE, JUNK = 0, 1, 2


def _rows(values, what: str) -> np.ndarray:
    """Sorted unique int64 database rows, read-only (the input array itself when it already is)."""
    arr = np.asarray(values if values is not None else _EMPTY)
    if arr.size == 0:
        return _EMPTY
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D list of database rows (integers), got {arr.dtype} {arr.shape}")
    if not (arr.dtype == np.int64 and not arr.flags.writeable and np.all(arr[1:] > arr[:-1])):
        arr = np.unique(arr.astype(np.int64))
        arr.flags.writeable = False
    if arr[0] < 0:
        raise ValueError(f"{what} holds a negative database row ({arr[0]})")
    return arr


@dataclass(frozen=True, eq=False)
class Judgement:
    """Relevance of the database to one query.

    Args:
        positives: relevant database rows (any order; stored sorted and unique).
        junk: rows ignored in the ranking (removed before scoring); junk wins over positive.
        grades: optional gain of each positive (aligned with ``positives`` as given), > 0.
    """

    positives: np.ndarray = ()
    junk: np.ndarray = ()
    grades: np.ndarray | None = None

    def __post_init__(self) -> None:
        given = np.asarray(self.positives if self.positives is not None else _EMPTY)
        positives = _rows(given, "positives")
        object.__setattr__(self, "positives", positives)
        object.__setattr__(self, "junk", _rows(self.junk, "junk"))
        if self.grades is not None:
            grades = np.asarray(self.grades, dtype=np.float64)
            if grades.shape != given.shape or positives.size != given.size:
                raise ValueError("grades must give one value per positive (and positives must be unique)")
            if not np.all(np.isfinite(grades) & (grades > 0)):
                raise ValueError("grades must be finite and > 0 (a row with grade 0 is not a positive)")
            grades = grades[np.argsort(given, kind="stable")]
            grades.flags.writeable = False
            object.__setattr__(self, "grades", grades)

    @property
    def counted(self) -> np.ndarray:
        """The positives that are not junk: the ``R`` rows recall and AP are measured against."""
        if self.junk.size == 0:
            return self.positives
        return self.positives[~np.isin(self.positives, self.junk)]

    @property
    def n_relevant(self) -> int:
        """``R``: how many positives are not junk."""
        return int(self.counted.size)


@dataclass(frozen=True, eq=False)
class Judgements:
    """One :class:`Judgement` per query (query order) over a database of ``n_database`` rows."""

    items: tuple[Judgement, ...]
    n_database: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        for i, item in enumerate(self.items):
            for rows in (item.positives, item.junk):
                if rows.size and rows[-1] >= self.n_database:
                    raise ValueError(f"query {i}: database row {rows[-1]} is out of range "
                                     f"(the database has {self.n_database} rows)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Judgements(self.items[index], self.n_database)
        return self.items[index]

    def n_relevant(self) -> np.ndarray:
        """``R`` of every query (int64 ``[Q]``)."""
        return np.fromiter((item.n_relevant for item in self.items), dtype=np.int64, count=len(self.items))

    def has_junk(self) -> bool:
        return any(item.junk.size for item in self.items)

    def status(self, rows: np.ndarray, start: int = 0) -> np.ndarray:
        """``uint8 [B, L]``: ``POSITIVE``, ``JUNK`` or ``NEGATIVE`` of the database row at each rank.

        ``rows`` are the rankings (database rows) of queries ``start .. start + B - 1``.
        """
        rows = np.asarray(rows)
        n_b = rows.shape[0]
        if start < 0 or start + n_b > len(self.items):
            raise ValueError(f"rankings of queries {start}..{start + n_b - 1} but there are {len(self.items)} "
                             "judgements")
        table = np.zeros((n_b, self.n_database), dtype=np.uint8)
        for i in range(n_b):
            item = self.items[start + i]
            table[i, item.positives] = POSITIVE
            table[i, item.junk] = JUNK
        return np.take_along_axis(table, rows.astype(np.intp, copy=False), axis=1)

    # constructors ---------------------------------------------------------------------------------

    @classmethod
    def from_positives(cls, positives: Sequence[Iterable[int]], n_database: int,
                       junk: Sequence[Iterable[int]] | None = None) -> Judgements:
        """Explicit lists: ``positives[i]`` (and ``junk[i]``) are query ``i``'s database rows."""
        junk = junk if junk is not None else [None] * len(positives)
        if len(junk) != len(positives):
            raise ValueError(f"{len(positives)} positive lists but {len(junk)} junk lists")
        return cls(tuple(Judgement(np.asarray(list(p), dtype=np.int64),
                                   np.asarray(list(j) if j is not None else [], dtype=np.int64))
                         for p, j in zip(positives, junk)), int(n_database))

    @classmethod
    def from_labels(cls, query_labels: Sequence, database_labels: Sequence,
                    exclude: np.ndarray | None = None) -> Judgements:
        """Relevant = the same label. ``exclude`` (int ``[Q]``, -1 = none): the query's own database row,
        made junk (leave-one-out). Queries of one class share one positives array."""
        q_lab = np.asarray(query_labels, dtype=object)
        db_lab = np.asarray(database_labels, dtype=object)
        codes, _ = pd.factorize(np.concatenate([q_lab, db_lab]))
        q_codes, db_codes = codes[: len(q_lab)], codes[len(q_lab):]
        order = np.argsort(db_codes, kind="stable")
        bounds = np.searchsorted(db_codes[order], np.arange(codes.max() + 2 if codes.size else 1))
        by_code = {}
        excl = _exclude(exclude, len(q_lab), len(db_lab))
        items = []
        for i, code in enumerate(q_codes):
            if code not in by_code:
                by_code[code] = _rows(np.sort(order[bounds[code]:bounds[code + 1]]), "positives")
            items.append(Judgement(by_code[code], _EMPTY if excl[i] < 0 else np.array([excl[i]])))
        return cls(tuple(items), len(db_lab))

    @classmethod
    def from_multilabel(cls, query_labels: Sequence[Collection], database_labels: Sequence[Collection],
                        exclude: np.ndarray | None = None, graded: bool = False) -> Judgements:
        """Relevant = sharing at least one label (each entry a collection of labels). ``graded``: the grade
        of a positive is how many labels it shares with the query. ``exclude`` as in :meth:`from_labels`."""
        index: dict = {}
        for row, labels in enumerate(database_labels):
            for label in set(labels):
                index.setdefault(label, []).append(row)
        excl = _exclude(exclude, len(query_labels), len(database_labels))
        items = []
        for i, labels in enumerate(query_labels):
            lists = [np.asarray(index.get(label, []), dtype=np.int64) for label in set(labels)]
            rows, counts = (np.unique(np.concatenate(lists), return_counts=True) if lists
                            else (_EMPTY, np.zeros(0)))
            items.append(Judgement(rows, _EMPTY if excl[i] < 0 else np.array([excl[i]]),
                                   counts.astype(np.float64) if graded and rows.size else None))
        return cls(tuple(items), len(database_labels))

    @classmethod
    def from_revisitop(cls, gnd: Sequence[Mapping[str, Iterable[int]]], protocol: str,
                       n_database: int) -> Judgements:
        """revisitop's ground truth (one dict per query with ``easy``, ``hard``, ``junk`` database rows, as
        in its ``gnd_*.pkl``) under ``protocol``: ``easy`` (easy positives; hard and junk ignored),
        ``medium`` (easy and hard positives; junk ignored) or ``hard`` (hard positives; easy and junk
        ignored)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        pos_keys, junk_keys = PROTOCOLS[protocol]

        def lists(entry, keys):
            parts = [np.asarray(list(entry.get(key, [])), dtype=np.int64).ravel() for key in keys]
            return np.concatenate(parts) if parts else _EMPTY

        return cls(tuple(Judgement(lists(entry, pos_keys), lists(entry, junk_keys)) for entry in gnd),
                   int(n_database))


def _exclude(exclude, n_queries: int, n_database: int) -> np.ndarray:
    if exclude is None:
        return np.full(n_queries, -1, dtype=np.int64)
    exclude = np.asarray(exclude, dtype=np.int64)
    if exclude.shape != (n_queries,) or np.any((exclude < -1) | (exclude >= n_database)):
        raise ValueError("exclude must be [Q] database rows or -1")
    return exclude
