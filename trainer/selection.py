"""Which hold-out samples a round hands the builder (``rounds.selection``), and whether it fires.

Pure functions over per-sample statistics of the hold-out predictions (:class:`Hardness`), so
every rule can be checked on a hand-made set of predictions:

- ``misclassified``: every top-1 mistake (the paper), hardest (highest loss) first;
- ``loss``: the highest cross-entropy of the true class, ``-log p_true``;
- ``entropy``: the highest entropy of the predictive distribution (the least confident);
- ``margin``: the smallest margin ``p_true - max_{j != true} p_j`` (score ``-margin``).

``k`` (or ``fraction`` of the hold-out) keeps the highest scores; ``drop_hardest`` then removes
that share of the selection from its hard end: a 2024 study found extremely hard samples (often
label noise or outliers) lower accuracy, while medium-hard ones help most. Ties are broken by
position in the hold-out, so a selection is deterministic.

A round *fires* only once the classifier is past ``start_epoch`` and ``min_holdout_acc``: before
that its mistakes are mostly noise. A round that does not fire selects nothing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .config import SelectionConfig, SelectionRule

__all__ = ["Hardness", "fires", "score", "select", "selection_record"]


@dataclass(frozen=True)
class Hardness:
    """Per-sample statistics of one split's predictions, in hold-out order.

    Attributes:
        labels, predicted: true and top-1 labels.
        prob_true: probability of the true class.
        loss: cross-entropy of the true class.
        entropy: entropy (nats) of the predictive distribution.
        margin: ``prob_true`` minus the highest probability of another class, in [-1, 1].
    """

    labels: np.ndarray
    predicted: np.ndarray
    prob_true: np.ndarray
    loss: np.ndarray
    entropy: np.ndarray
    margin: np.ndarray

    @classmethod
    def from_probs(cls, probs: np.ndarray, labels: np.ndarray) -> Hardness:
        """The statistics of probabilities ``probs`` (N, C) for true ``labels`` (N,).

        The trainer computes the same quantities from logits on its device (``evaluate.predict``).
        """
        probs = np.asarray(probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        rows = np.arange(len(labels))
        prob_true = probs[rows, labels]                                   # (N,)
        others = probs.copy()
        others[rows, labels] = -np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(probs > 0, probs * np.log(probs), 0.0)      # 0 log 0 = 0
        return cls(labels=labels, predicted=probs.argmax(axis=1), prob_true=prob_true,
                   loss=-np.log(np.maximum(prob_true, np.finfo(np.float64).tiny)), entropy=-plogp.sum(axis=1),
                   margin=prob_true - others.max(axis=1, initial=-np.inf))


def score(rule: SelectionRule, h: Hardness) -> np.ndarray:
    """Hardness of every sample under ``rule``, higher = harder (``misclassified`` ranks by loss)."""
    if rule in ("misclassified", "loss"):
        return np.asarray(h.loss, dtype=np.float64)
    if rule == "entropy":
        return np.asarray(h.entropy, dtype=np.float64)
    if rule == "margin":
        return -np.asarray(h.margin, dtype=np.float64)
    raise ValueError(f"unknown selection rule {rule!r}")


def select(h: Hardness, cfg: SelectionConfig) -> tuple[np.ndarray, int]:
    """The selected positions (into the hold-out), hardest first, and the number of candidates.

    1. Candidates: the mistakes for ``misclassified``, every sample otherwise.
    2. Rank them by :func:`score`, hardest first; ties by position.
    3. Keep the first ``k`` (or ``fraction`` of the hold-out, at least one).
    4. Drop the hardest ``floor(drop_hardest * n)`` of those ``n`` (``drop_hardest < 1``, so
       at least one stays).
    """
    n = len(h.labels)
    # 1. Candidates.
    if cfg.rule == "misclassified":
        candidates = np.flatnonzero(np.asarray(h.predicted) != np.asarray(h.labels))
    else:
        candidates = np.arange(n)
    # 2. Hardest first; lexsort's last key is the primary one, the position breaks ties.
    scores = score(cfg.rule, h)[candidates]
    ranked = candidates[np.lexsort((candidates, -scores))]
    # 3. The cap.
    cap = cfg.k if cfg.k is not None else (max(1, math.floor(cfg.fraction * n)) if cfg.fraction is not None else None)
    if cap is not None:
        ranked = ranked[:cap]
    # 4. The difficulty cap.
    drop = math.floor(cfg.drop_hardest * len(ranked))
    return ranked[drop:], len(candidates)


def fires(cfg: SelectionConfig, epoch: int, holdout_acc: float) -> tuple[bool, Optional[str]]:
    """Whether a round that ended after ``epoch`` at ``holdout_acc`` fires; if not, why."""
    if epoch < cfg.start_epoch:
        return False, f"epoch {epoch} < rounds.selection.start_epoch {cfg.start_epoch}"
    if cfg.min_holdout_acc is not None and not holdout_acc >= cfg.min_holdout_acc:   # NaN does not fire
        return False, f"hold-out accuracy {holdout_acc:.4f} < rounds.selection.min_holdout_acc {cfg.min_holdout_acc}"
    return True, None


def selection_record(cfg: SelectionConfig, fired: bool, reason: Optional[str], num_candidates: int) -> dict:
    """What the manifest header records under ``selection``."""
    return {**asdict(cfg), "fired": fired, "reason": reason, "num_candidates": num_candidates}
