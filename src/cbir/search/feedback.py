"""Relevance feedback: re-rank the database from the images a user marked relevant or irrelevant.

Pure functions on arrays, for any method's L2-normalised features (the search space of the
retrieve stage: the method's query, after its query expansion, against its database vectors).

* **Rocchio** (query-point movement): ``q' = α·q + β·mean(relevant) − γ·mean(irrelevant)``, a
  term dropped when it has no marks, then L2-normalised; the database is ranked by cosine with
  ``q'``. A moved query of zero length (e.g. ``α = 0`` and no marks) falls back to ``q``.
* **SVM**: a linear SVM (scikit-learn ``SVC`` with the linear kernel, hinge loss, ``C = svm_c``,
  balanced class weights, fixed ``random_state``) trained on the marked images (relevant = 1,
  irrelevant = 0; the query itself counts as one more relevant example, as in Tong & Chang's SVM
  feedback); the database is ranked by its decision function
  ``w·x + b`` (ranked as the cosine with ``w``, the same order; the scores returned are
  ``w·x + b``). With only relevant or only irrelevant marks there are not two classes to
  separate: it falls back to Rocchio (and says so in :attr:`Direction.used`).

Marks are database positions (rows of ``database``). Marked images, and the ``exclude`` row
(a query's own entry), are never returned: the results are the best of the rest. Ties break as
:func:`cbir.search.exact.exact_topk` breaks them (score, then the lower database row), whose
top-k every ranking here goes through. Deterministic: the same inputs give the same lists.
Marks of several rounds accumulate: a round's ranking is the function of the query and the
union of every mark so far (round structure does not matter to the result).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from cbir.search.exact import exact_topk, l2_normalize
from cbir.settings import need

FEEDBACK_METHODS = ("rocchio", "svm")


@dataclass(frozen=True)
class FeedbackSettings:
    """``method`` (rocchio | svm), Rocchio's ``alpha, beta, gamma`` and the SVM's ``svm_c`` and ``seed``: every
    field given (their values live in ``conf/feedback/``; :meth:`from_config` reads them)."""

    method: str
    alpha: float
    beta: float
    gamma: float
    svm_c: float
    seed: int

    def __post_init__(self):
        if self.method not in FEEDBACK_METHODS:
            raise ValueError(f"unknown feedback method {self.method!r}; expected one of {', '.join(FEEDBACK_METHODS)}")
        for name in ("alpha", "beta", "gamma"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"feedback {name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not (np.isfinite(self.svm_c) and self.svm_c > 0):
            raise ValueError(f"feedback svm_c must be a number > 0, got {self.svm_c!r}")

    @classmethod
    def from_config(cls, cfg: Mapping, method: str | None = None) -> "FeedbackSettings":
        """From the ``feedback`` section of params (``method`` overrides its first ``methods`` entry)."""
        methods = list(need(cfg, "methods", "feedback"))
        return cls(method=method or methods[0], alpha=float(need(cfg, "alpha", "feedback")),
                   beta=float(need(cfg, "beta", "feedback")), gamma=float(need(cfg, "gamma", "feedback")),
                   svm_c=float(need(cfg, "svm_c", "feedback")), seed=int(need(cfg, "seed", "feedback")))


@dataclass(frozen=True)
class Marks:
    """One query's marks: database positions judged relevant and irrelevant (disjoint)."""

    relevant: tuple[int, ...] = ()
    irrelevant: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "relevant", tuple(int(r) for r in dict.fromkeys(self.relevant)))
        object.__setattr__(self, "irrelevant", tuple(int(r) for r in dict.fromkeys(self.irrelevant)))
        both = sorted(set(self.relevant) & set(self.irrelevant))
        if both:
            raise ValueError(f"database positions {both} are marked both relevant and irrelevant")

    @property
    def marked(self) -> tuple[int, ...]:
        return self.relevant + self.irrelevant

    def add(self, relevant: Sequence[int] = (), irrelevant: Sequence[int] = ()) -> "Marks":
        """These marks plus one more round's."""
        return Marks(self.relevant + tuple(relevant), self.irrelevant + tuple(irrelevant))


@dataclass
class Direction:
    """What a feedback method ranks by: ``scale * cosine(vector, x) + offset`` (``used``: the method that ran)."""

    vector: np.ndarray
    scale: float = 1.0
    offset: float = 0.0
    used: str = "rocchio"
    note: str = field(default="")


def rocchio(query: np.ndarray, relevant: np.ndarray, irrelevant: np.ndarray, alpha: float, beta: float,
            gamma: float) -> np.ndarray:
    """Rocchio's moved query, L2-normalised float32 ``[D]``.

    Args:
        query: the query vector ``[D]`` (or ``[1, D]``), unit norm.
        relevant: ``[r, D]`` vectors marked relevant (``r`` may be 0).
        irrelevant: ``[n, D]`` vectors marked irrelevant (``n`` may be 0).
    Returns:
        ``normalise(α·q + β·mean(relevant) − γ·mean(irrelevant))`` in float64 arithmetic, the mean
        terms dropped when empty; ``q`` itself when there are no marks or that sum has zero length.
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    relevant = np.asarray(relevant, dtype=np.float64).reshape(-1, q.size)
    irrelevant = np.asarray(irrelevant, dtype=np.float64).reshape(-1, q.size)
    if not len(relevant) and not len(irrelevant):  # no marks: the query itself (bit for bit)
        return l2_normalize(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    moved = alpha * q
    if len(relevant):
        moved = moved + beta * relevant.mean(axis=0)
    if len(irrelevant):
        moved = moved - gamma * irrelevant.mean(axis=0)
    norm = np.linalg.norm(moved)
    if not np.isfinite(norm) or norm == 0:
        return l2_normalize(q[None].astype(np.float32))[0]
    return (moved / norm).astype(np.float32)


def svm_hyperplane(positives: np.ndarray, negatives: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    """``(w, b)`` of a linear SVM separating ``positives`` (1) from ``negatives`` (0).

    scikit-learn ``SVC(kernel="linear", C=c, class_weight="balanced", random_state=seed)``, given the
    linear kernel as its Gram matrix ``X·Xᵀ`` (``kernel="precomputed"``: the same problem and the same
    ``w``, fitted faster for a few marks in many dimensions); ``w = Σ dual_coef_i · x_i``. Both sets
    must be non-empty. Deterministic for fixed inputs.
    """
    import sklearn
    from sklearn.svm import SVC  # imported where used: only the SVM re-ranker needs it

    x = np.concatenate([np.asarray(positives, np.float64), np.asarray(negatives, np.float64)])
    y = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(negatives), np.int64)])
    model = SVC(kernel="precomputed", C=c, class_weight="balanced", random_state=seed)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        model.fit(x @ x.T, y)
    w = model.dual_coef_[0] @ x[model.support_]
    # scikit-learn orders the classes 0, 1: its decision function is positive for class 1 (relevant)
    return w.astype(np.float64), float(model.intercept_[0])


def direction(query: np.ndarray, database: np.ndarray, marks: Marks,
              settings: FeedbackSettings) -> Direction:
    """The ranking direction of one query under ``settings`` given its ``marks`` (see the module docstring)."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    rel = database[list(marks.relevant)] if marks.relevant else np.zeros((0, q.size), np.float32)
    irr = database[list(marks.irrelevant)] if marks.irrelevant else np.zeros((0, q.size), np.float32)
    if settings.method == "svm":
        if len(rel) and len(irr):
            w, b = svm_hyperplane(np.concatenate([q[None], rel]), irr, settings.svm_c, settings.seed)
            norm = float(np.linalg.norm(w))
            if norm > 0 and np.isfinite(norm):
                return Direction((w / norm).astype(np.float32), norm, b, "svm")
        note = "svm needs relevant and irrelevant marks: Rocchio instead"
    else:
        note = ""
    moved = rocchio(q, rel, irr, settings.alpha, settings.beta, settings.gamma)
    return Direction(moved, 1.0, 0.0, "rocchio", note)


def rank(queries: np.ndarray, database: np.ndarray, marks: Sequence[Marks], k: int,
         settings: FeedbackSettings, exclude: np.ndarray | None = None,
         block_size: int = 1024) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Top-``k`` of every query after feedback, marked images (and ``exclude``) left out.

    Args:
        queries: ``[Q, D]`` unit-norm query vectors (the first-round queries).
        database: ``[N, D]`` unit-norm database vectors.
        marks: one :class:`Marks` per query (database positions; every mark so far).
        k: results per query (at most what is left once the marked rows are removed).
        exclude: int ``[Q]`` one more database position per query never returned (``-1`` none).
    Returns:
        ``(indices int64 [Q, k'], scores float32 [Q, k'], used)``: database positions best first,
        ``-1`` (score NaN) where a query has fewer rows left; ``k' = min(k, N)``; ``used[i]`` the
        method that ranked query ``i`` (``svm`` falls back to ``rocchio``, see :func:`direction`).
    """
    db = l2_normalize(database)
    q = l2_normalize(queries)
    n_q, n_db = q.shape[0], db.shape[0]
    if len(marks) != n_q:
        raise ValueError(f"{len(marks)} mark sets for {n_q} queries")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    exclude = np.full(n_q, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(n_q)
    hidden = [sorted(set(m.marked) | ({int(e)} if e >= 0 else set())) for m, e in zip(marks, exclude)]
    for rows in hidden:
        if rows and (rows[0] < 0 or rows[-1] >= n_db):
            raise ValueError(f"marked database positions must be in [0, {n_db}), got {rows}")
    kk = min(k, n_db)
    indices = np.full((n_q, kk), -1, np.int64)
    scores = np.full((n_q, kk), np.nan, np.float32)
    dirs = [direction(q[i], db, marks[i], settings) for i in range(n_q)]
    used = [d.used for d in dirs]
    if n_q == 0 or kk == 0:
        return indices, scores, used
    # block_size=1: exact_topk scores one query at a time, so a query's scores are bit for bit the same
    # whichever batch it comes in (the query tool ranks one query, the feedback stage all of them); the
    # top (k + marked) under the total order (score, row) starts with the top k of the unmarked rows
    vectors = np.stack([d.vector for d in dirs])
    want = min(n_db, kk + max(len(h) for h in hidden))
    step = max(1, min(block_size, (1 << 22) // max(1, want)))  # bounded [step, want] results at once
    for lo in range(0, n_q, step):
        top, cos = exact_topk(vectors[lo:lo + step], db, want, block_size=1)
        for j in range(top.shape[0]):
            i, d = lo + j, dirs[lo + j]
            keep = ~np.isin(top[j], hidden[i])
            rows = top[j][keep][:kk]
            indices[i, :len(rows)] = rows
            scores[i, :len(rows)] = d.scale * cos[j][keep][:kk].astype(np.float64) + d.offset
    return indices, scores, used


def rank_one(query: np.ndarray, database: np.ndarray, marks: Marks, k: int,
             settings: FeedbackSettings, exclude: int = -1,
             block_size: int = 1024) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`rank` for one query ``[D]`` or ``[1, D]``: ``(positions [k'], scores [k'], used)``, ``-1`` slots dropped."""
    idx, sc, used = rank(np.asarray(query, np.float32).reshape(1, -1), database, [marks], k, settings,
                         exclude=np.array([exclude]), block_size=block_size)
    keep = idx[0] >= 0
    return idx[0][keep], sc[0][keep], used[0]
