import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from retrain_platform.performance import (
    estimate_accuracy,
    estimate_f1,
    estimate_precision,
    estimate_recall,
    estimate_roc_auc,
)


def calibrated_stream(rng: np.random.Generator, chunks: int, size: int = 10_000):
    """Chunks of (probability, label) where the label is drawn as Bernoulli(probability)."""
    for _ in range(chunks):
        x = rng.normal(size=size)
        proba = 1.0 / (1.0 + np.exp(-(0.4 + 1.6 * x)))
        yield proba, rng.random(size) < proba


def test_estimated_roc_auc_tracks_the_realized_one_on_a_stable_stream():
    gaps = [
        estimate_roc_auc(proba) - roc_auc_score(labels, proba)
        for proba, labels in calibrated_stream(np.random.default_rng(0), chunks=6)
    ]
    assert max(abs(g) for g in gaps) < 0.02


def test_estimated_threshold_metrics_track_the_realized_ones():
    for proba, labels in calibrated_stream(np.random.default_rng(1), chunks=4):
        predicted = proba >= 0.5
        assert estimate_accuracy(proba) == pytest.approx(accuracy_score(labels, predicted), abs=0.02)
        assert estimate_precision(proba) == pytest.approx(precision_score(labels, predicted), abs=0.02)
        assert estimate_recall(proba) == pytest.approx(recall_score(labels, predicted), abs=0.02)
        assert estimate_f1(proba) == pytest.approx(f1_score(labels, predicted), abs=0.02)


def test_multiclass_estimates_track_the_realized_ones():
    rng = np.random.default_rng(2)
    for _ in range(3):
        logits = rng.normal(size=(10_000, 4)) * 1.5
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        labels = (proba.cumsum(axis=1) > rng.random((10_000, 1))).argmax(axis=1)
        predicted = proba.argmax(axis=1)
        assert estimate_accuracy(proba) == pytest.approx(accuracy_score(labels, predicted), abs=0.02)
        assert estimate_f1(proba) == pytest.approx(f1_score(labels, predicted, average="macro"), abs=0.02)


def test_roc_auc_edge_cases():
    assert estimate_roc_auc([0.0, 0.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert estimate_roc_auc(np.full(100, 0.3)) == pytest.approx(0.5)
    assert np.isnan(estimate_roc_auc(np.ones(10)))
    proba = np.random.default_rng(3).random(1_000)
    assert estimate_roc_auc(np.c_[1 - proba, proba]) == estimate_roc_auc(proba)
    # Ties share one threshold, so a tied score does not depend on row order.
    tied = np.array([0.2, 0.8, 0.5, 0.5, 0.8, 0.2])
    assert estimate_roc_auc(tied) == pytest.approx(estimate_roc_auc(tied[::-1]))


def test_an_uninformative_model_scores_as_one():
    proba = np.full(1_000, 0.3)
    assert estimate_accuracy(proba) == pytest.approx(0.7)
    assert estimate_f1(proba) == 0.0
    assert estimate_accuracy(proba, threshold=0.2) == pytest.approx(0.3)


def test_bad_probabilities_are_rejected():
    with pytest.raises(ValueError, match="between 0 and 1"):
        estimate_roc_auc([0.2, 1.3])
    with pytest.raises(ValueError, match="sum to 1"):
        estimate_accuracy([[0.2, 0.2], [0.5, 0.5]])
    with pytest.raises(ValueError, match="no rows"):
        estimate_accuracy([])
    with pytest.raises(ValueError, match="3 classes"):
        estimate_roc_auc(np.full((5, 3), 1 / 3))
