"""Label-free performance estimates for classifiers from their predicted probabilities.

Labels often arrive weeks after predictions. If the model is calibrated (of the rows scored p, a share p is
positive) and only the inputs have drifted, not the relation between inputs and label, each row's
probability says how likely its prediction is right, and the expected metric over a batch follows from the
probabilities alone. This is confidence-based performance estimation (CBPE, as in NannyML). A miscalibrated
model, or concept drift, makes the estimates wrong: compare them with realised metrics when labels arrive.

Binary functions take the probability of the positive class, one value per row; multiclass ones take an
(n_rows, n_classes) array of probabilities whose rows sum to 1.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "estimate_accuracy",
    "estimate_f1",
    "estimate_precision",
    "estimate_recall",
    "estimate_roc_auc",
]



def _probabilities(proba: ArrayLike) -> np.ndarray:
    values = np.asarray(proba, dtype=np.float64)
    if values.size == 0:
        raise ValueError("proba: no rows to estimate from")
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim not in (1, 2):
        raise ValueError(
            f"proba: expected one probability per row or a row of class probabilities, got shape {values.shape}"
        )
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("proba: probabilities must be finite and between 0 and 1")
    if values.ndim == 2 and not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("proba: each row of class probabilities must sum to 1")
    return values


def _positive(proba: ArrayLike) -> np.ndarray:
    values = _probabilities(proba)
    if values.ndim == 2:
        if values.shape[1] != 2:
            raise ValueError(f"proba: expected the positive-class probability, got {values.shape[1]} classes")
        values = values[:, 1]
    return values


def estimate_roc_auc(proba_positive: ArrayLike) -> float:
    """Expected ROC AUC of a calibrated binary classifier, without labels.

    Each row counts as p of a positive and 1 - p of a negative. Sorting by score and summing those
    fractions gives the expected true and false positive rates at every threshold (rows with equal scores
    share one threshold); the area under that curve is the estimate. NaN when all p are 0 or all are 1.
    """
    p = _positive(proba_positive)
    order = np.argsort(-p, kind="stable")
    scores = p[order]
    positives = np.cumsum(scores)
    negatives = np.cumsum(1.0 - scores)
    # Only the last row of a run of equal scores is a threshold of the curve.
    last_of_run = np.flatnonzero(np.diff(scores, append=-np.inf) != 0)
    if positives[-1] <= 0.0 or negatives[-1] <= 0.0:
        return float("nan")
    tpr = np.concatenate(([0.0], positives[last_of_run] / positives[-1]))
    fpr = np.concatenate(([0.0], negatives[last_of_run] / negatives[-1]))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def estimate_accuracy(proba: ArrayLike, threshold: float = 0.5) -> float:
    """Expected accuracy without labels.

    Binary (one probability per row): the prediction is positive when p >= `threshold` and is right with
    probability p, otherwise with 1 - p. Multiclass: the prediction is the most probable class, right with
    its probability, so the estimate is the mean of each row's largest probability.
    """
    values = _probabilities(proba)
    if values.ndim == 2:
        return float(values.max(axis=1).mean())
    return float(np.where(values >= threshold, values, 1.0 - values).mean())


def _expected_confusion(proba: ArrayLike, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected true positives, false positives and false negatives per class (one class when binary)."""
    values = _probabilities(proba)
    if values.ndim == 1:
        predicted = values >= threshold
        true_positive = values[predicted].sum()
        false_positive = (1.0 - values[predicted]).sum()
        false_negative = values[~predicted].sum()
        return np.array([true_positive]), np.array([false_positive]), np.array([false_negative])
    predicted = np.zeros_like(values, dtype=bool)
    predicted[np.arange(len(values)), values.argmax(axis=1)] = True
    true_positive = np.where(predicted, values, 0.0).sum(axis=0)
    false_positive = np.where(predicted, 1.0 - values, 0.0).sum(axis=0)
    false_negative = np.where(predicted, 0.0, values).sum(axis=0)
    return true_positive, false_positive, false_negative


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denominator > 0, numerator / denominator, 0.0)
    return float(per_class.mean())


def estimate_precision(proba: ArrayLike, threshold: float = 0.5) -> float:
    """Expected precision without labels (binary: positive class at `threshold`; multiclass: macro average)."""
    tp, fp, _ = _expected_confusion(proba, threshold)
    return _ratio(tp, tp + fp)


def estimate_recall(proba: ArrayLike, threshold: float = 0.5) -> float:
    """Expected recall without labels (binary: positive class at `threshold`; multiclass: macro average)."""
    tp, _, fn = _expected_confusion(proba, threshold)
    return _ratio(tp, tp + fn)


def estimate_f1(proba: ArrayLike, threshold: float = 0.5) -> float:
    """Expected F1 without labels (binary: positive class at `threshold`; multiclass: macro average).

    Computed from the expected confusion counts, as CBPE does; with a few thousand rows it is close to the
    expectation of F1 itself.
    """
    tp, fp, fn = _expected_confusion(proba, threshold)
    return _ratio(2.0 * tp, 2.0 * tp + fp + fn)


def estimate_metrics(scores: ArrayLike, task: str, threshold: float | None = None) -> dict[str, float]:
    """Every label-free estimate for a task: `scores` are the positive-class probabilities of a binary
    model (cut at `threshold`, 0.5 by default) or the class probabilities of a multiclass one."""
    cut = 0.5 if threshold is None else threshold
    if task == "regression":
        return {}
    estimated = {"accuracy": estimate_accuracy(scores, cut)}
    if task == "binary":
        estimated["roc_auc"] = estimate_roc_auc(scores)
        estimated["f1"] = estimate_f1(scores, cut)
    return estimated
