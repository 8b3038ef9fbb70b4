"""The evaluation stage: a challenger model against the current champion on the same holdout.

Both models are scored on the same holdout rows (`compute_metrics`); the difference on the primary
metric gets a paired bootstrap confidence interval (`paired_bootstrap_difference`); `decide` turns the
metrics, the interval and the customer's `PromotionThresholds` into PROMOTE, HOLD or REJECT with one
readable reason per gate; `evaluate` does all of it and returns an `EvaluationReport`.

Orientation: a "difference" or "improvement" is always challenger against champion, signed so that
positive means the challenger is better, whatever the metric's direction. `calibration_slope` has no
direction of its own (1.0 is perfect), so it is compared by its distance from 1, `abs(slope - 1)`, where
lower is better: a floor on it is a maximum distance, and its improvement is how much closer to 1 the
challenger is.

The improvement gate follows MLflow's `MetricThreshold` semantics (the same comparisons, the relative
change taken over the champion's magnitude, the 1e-10 fallback when the champion's value is 0; the tests
check agreement with `mlflow.validate_evaluation_results` on a grid of cases), but is implemented here
instead of calling MLflow, because:
- `MetricThreshold` refuses `min_absolute_change=0`, a `min_relative_change` above 1, and having no
  threshold at all, while 0 ("not worse than the champion") is the platform's default;
- MLflow reports a failure as one exception message, and each gate here needs its own pass/fail and reason;
- MLflow knows neither the calibration slope's two-sided orientation nor the confidence interval;
- importing mlflow costs about 2 s in a module that otherwise needs only numpy and scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from retrain_platform.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS, PromotionThresholds, Task

Decision = Literal["PROMOTE", "HOLD", "REJECT"]

PROMOTE: Decision = "PROMOTE"
HOLD: Decision = "HOLD"
REJECT: Decision = "REJECT"

FLOOR_GATE = "absolute floor"
IMPROVEMENT_GATE = "improvement over champion"
INTERVAL_GATE = "confidence interval"
SECONDARY_GATE = "secondary metrics"
HOLDOUT_GATE = "holdout size"

GREATER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
    "r2": True,
    # Compared as abs(slope - 1), the distance from a perfect slope: see `comparable_value`.
    "calibration_slope": False,
}

# MLflow's fallback when the champion's value is 0 and a relative change cannot be computed.
ZERO_BASELINE_MARGIN = 1e-10

# Bootstrap weights are built in chunks of at most this many cells (rounds x rows), about 40 MB.
MAX_WEIGHT_CELLS = 5_000_000

# A threshold metric (precision, recall, F1) resting on fewer rows than this is not compared: a champion that
# predicts three positives has a precision, but not one a challenger can be judged against.
MIN_SUPPORT_ROWS = 30

# A binary model's cut-off is chosen for the customer's decision objective, and at a cut-off accuracy,
# precision and recall trade against each other: a challenger whose cut-off moved loses one of them by
# construction. Of these metrics only the one the objective maximises holds a challenger back.
THRESHOLD_METRICS = ("accuracy", "precision", "recall", "f1")
OBJECTIVE_METRICS = {"f1": ("f1",), "precision": ("recall",), "recall": ("precision",), "cost": ()}

# A weighted variance below this fraction of the raw second moment is rounding noise, not spread.
DEGENERATE_VARIANCE = 1e-10


def metrics_for(task: Task) -> tuple[str, ...]:
    """The metrics computed for a task, in display order."""
    if task == "regression":
        return REGRESSION_METRICS
    if task in ("binary", "multiclass"):
        return CLASSIFICATION_METRICS
    raise ValueError(f"unknown task {task!r}: use 'binary', 'multiclass' or 'regression'")


def comparable_value(metric: str, value: float) -> float:
    """The value that is compared across models: the metric itself, or abs(slope - 1) for calibration_slope."""
    if metric == "calibration_slope":
        return abs(value - 1.0)
    return value


def improvement(metric: str, challenger_value: Any, champion_value: Any) -> Any:
    """How much better the challenger is (positive) or worse (negative); works on floats and arrays."""
    if metric == "calibration_slope":
        return np.abs(champion_value - 1.0) - np.abs(challenger_value - 1.0)
    if GREATER_IS_BETTER[metric]:
        return challenger_value - champion_value
    return champion_value - challenger_value


@dataclass(frozen=True, eq=False)
class ModelOutput:
    """What one model predicted on the holdout.

    Classification: `proba` is n x len(classes) with columns in the order of `classes` (as sklearn's
    `predict_proba` and `classes_`), `y_pred` the predicted labels; for a binary task the positive class
    is `classes[1]`, and `threshold` the model's own cut-off for it when it has one (None: 0.5).
    Regression: `y_pred` holds the predicted values and `proba`, `classes` are None.
    """

    y_pred: np.ndarray
    proba: np.ndarray | None = None
    classes: np.ndarray | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        y_pred = np.asarray(self.y_pred)
        if y_pred.ndim != 1:
            raise ValueError(f"y_pred must be one-dimensional, got shape {y_pred.shape}")
        object.__setattr__(self, "y_pred", y_pred)
        if (self.proba is None) != (self.classes is None):
            raise ValueError("proba and classes come together: give both or neither")
        if self.proba is None:
            return
        classes = np.asarray(self.classes)
        proba = np.asarray(self.proba, dtype=float)
        if proba.ndim == 1 and len(classes) == 2:
            proba = np.column_stack([1.0 - proba, proba])
        if proba.shape != (len(y_pred), len(classes)):
            raise ValueError(
                f"proba has shape {proba.shape}; expected ({len(y_pred)}, {len(classes)}) "
                f"for classes {classes.tolist()}"
            )
        if len(np.unique(classes)) != len(classes):
            raise ValueError(f"classes must be distinct, got {classes.tolist()}")
        object.__setattr__(self, "proba", proba)
        object.__setattr__(self, "classes", classes)

    @classmethod
    def from_proba(cls, proba: Any, classes: Sequence[Any], threshold: float | None = None) -> ModelOutput:
        """Classification output whose predicted label is the most probable class, or for a binary model
        with a decision threshold of its own, `classes[1]` wherever its probability reaches the threshold.

        A one-dimensional `proba` with two classes is read as the probability of `classes[1]`.
        """
        classes = np.asarray(classes)
        proba = np.asarray(proba, dtype=float)
        if proba.ndim == 1:
            proba = np.column_stack([1.0 - proba, proba])
        return cls(y_pred=predicted_labels(proba, classes, threshold), proba=proba, classes=classes, threshold=threshold)

    @classmethod
    def from_values(cls, values: Any) -> ModelOutput:
        """Regression output: the predicted values."""
        return cls(y_pred=np.asarray(values, dtype=float))

    @classmethod
    def from_estimator(cls, estimator: Any, X: Any, task: Task) -> ModelOutput:
        """Run a fitted sklearn-style estimator (or pipeline) on the holdout features."""
        if task == "regression":
            return cls.from_values(estimator.predict(X))
        threshold = getattr(estimator, "threshold", None)
        return cls.from_proba(estimator.predict_proba(X), estimator.classes_, threshold if task == "binary" else None)

    def __len__(self) -> int:
        return len(self.y_pred)


def predicted_labels(proba: np.ndarray, classes: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The label each row gets: the most probable class, or for two classes and a threshold, the positive
    class (`classes[1]`) wherever its probability reaches the threshold."""
    if threshold is not None and len(classes) == 2:
        return classes[(proba[:, 1] >= threshold).astype(int)]
    return classes[np.argmax(proba, axis=1)]


def _check_inputs(task: Task, y_true: Any, output: ModelOutput) -> np.ndarray:
    metrics_for(task)
    y_true = np.asarray(y_true)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {y_true.shape}")
    if len(y_true) != len(output):
        raise ValueError(f"y_true has {len(y_true)} rows but the model output has {len(output)}")
    if len(y_true) == 0:
        raise ValueError("the holdout is empty")
    if task == "regression":
        if output.proba is not None:
            raise ValueError("a regression output holds predicted values, not probabilities")
        return y_true.astype(float)
    if output.proba is None:
        raise ValueError(f"a {task} output needs proba and classes (use ModelOutput.from_proba)")
    if task == "binary" and len(output.classes) != 2:
        raise ValueError(f"a binary model has two classes, got {output.classes.tolist()}")
    if not np.isin(y_true, output.classes).any():
        raise ValueError(
            f"none of the holdout labels {np.unique(y_true)[:10].tolist()} is among the model's classes "
            f"{output.classes.tolist()}; check that labels have the same type"
        )
    return y_true


def _aligned_proba(y_true: np.ndarray, output: ModelOutput) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities over the sorted union of the model's classes and the holdout labels.

    sklearn's log_loss reads probability columns in sorted label order, and a label the model never saw
    (new in the holdout) gets probability 0: a large but finite loss rather than an error.
    """
    labels = np.unique(np.concatenate([output.classes, np.unique(y_true)]))
    aligned = np.zeros((len(y_true), len(labels)))
    aligned[:, np.searchsorted(labels, output.classes)] = output.proba
    return labels, aligned


def _classes_scored_by_auc(y_true: np.ndarray, output: ModelOutput, task: Task) -> list[int]:
    """Columns of `proba` with a defined one-vs-rest ROC AUC: classes with positives and negatives in the holdout."""
    columns = [1] if task == "binary" else range(len(output.classes))
    counts = [(y_true == output.classes[column]).sum() for column in columns]
    return [column for column, count in zip(columns, counts) if 0 < count < len(y_true)]


def calibration_slope(y_true: Any, y_pred: Any) -> float:
    """Slope of the OLS regression of actual on predicted values: 1.0 is perfect, below 1 over-confident."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if len(y_pred) < 2 or np.ptp(y_pred) == 0:
        return math.nan
    centred = y_pred - y_pred.mean()
    return float(centred @ (y_true - y_true.mean()) / (centred @ centred))


def compute_metrics(task: Task, y_true: Any, prediction: ModelOutput) -> dict[str, float]:
    """Every metric of the task for one model on the holdout, as plain floats (nan where undefined).

    Binary: precision, recall and F1 for the positive class `classes[1]`. Multiclass: macro averages,
    and ROC AUC one-vs-rest macro over the classes present in the holdout. Regression: RMSE, MAE, R² and
    the calibration slope (actual on predicted).
    """
    y_true = _check_inputs(task, y_true, prediction)
    if task == "regression":
        y_pred = prediction.y_pred.astype(float)
        return {
            "rmse": float(root_mean_squared_error(y_true, y_pred)),
            "mae": float(mean_absolute_error(y_true, y_pred)),
            "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else math.nan,
            "calibration_slope": calibration_slope(y_true, y_pred),
        }

    y_pred = prediction.y_pred
    if task == "binary":
        positive = prediction.classes[1]
        actual, predicted = y_true == positive, y_pred == positive
        precision = precision_score(actual, predicted, zero_division=0)
        recall = recall_score(actual, predicted, zero_division=0)
        f1 = f1_score(actual, predicted, zero_division=0)
    else:
        precision = precision_score(y_true, y_pred, average="macro", zero_division=0)
        recall = recall_score(y_true, y_pred, average="macro", zero_division=0)
        f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)

    auc_columns = _classes_scored_by_auc(y_true, prediction, task)
    per_class_auc = [
        roc_auc_score(y_true == prediction.classes[column], prediction.proba[:, column]) for column in auc_columns
    ]
    labels, aligned = _aligned_proba(y_true, prediction)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(np.mean(per_class_auc)) if per_class_auc else math.nan,
        "log_loss": float(log_loss(y_true, y_proba=aligned, labels=labels)),
    }


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0 (sklearn's zero_division=0)."""
    result = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `weights` (rounds x n): the weighted Mann-Whitney statistic, ties counting half.

    Rows are grouped by distinct score once; each round then needs only sums over groups, so all
    rounds are computed together instead of sorting once per round.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_weights = weights[:, order]
    positives = sorted_weights * positive[order]
    negatives = sorted_weights - positives
    if len(starts) < len(scores):
        positives = np.add.reduceat(positives, starts, axis=1)
        negatives = np.add.reduceat(negatives, starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    auc = np.full(len(weights), np.nan)
    np.divide(wins, pairs, out=auc, where=pairs > 0)
    return auc


def _metric_on_weights(
    task: Task, metric: str, y_true: np.ndarray, output: ModelOutput
) -> Callable[[np.ndarray], np.ndarray]:
    """A function from row weights (rounds x n) to the metric of each round.

    A bootstrap resample is the holdout with every row counted as often as it was drawn, so each metric
    is written as weighted sums over rows: one matrix product evaluates every round at once. With all
    weights 1 it equals `compute_metrics`.
    """
    if task == "regression":
        y_pred = output.y_pred.astype(float)
        squared_error = (y_pred - y_true) ** 2
        if metric == "rmse":
            return lambda w: np.sqrt(w @ squared_error / w.sum(axis=1))
        if metric == "mae":
            absolute_error = np.abs(y_pred - y_true)
            return lambda w: w @ absolute_error / w.sum(axis=1)
        # Centring on the holdout means first keeps the weighted variances free of cancellation.
        y_centred = y_true - y_true.mean()
        if metric == "r2":

            def r2(w: np.ndarray) -> np.ndarray:
                raw = w @ y_centred**2
                total = raw - (w @ y_centred) ** 2 / w.sum(axis=1)
                residual = w @ squared_error
                constant = total <= DEGENERATE_VARIANCE * raw
                # sklearn's convention for a constant target: 1 if predicted exactly, else 0.
                fallback = np.where(residual == 0, 1.0, 0.0)
                return np.where(constant, fallback, 1.0 - _safe_divide(residual, np.where(constant, 1.0, total)))

            return r2
        if metric == "calibration_slope":
            p_centred = y_pred - y_pred.mean()

            def slope(w: np.ndarray) -> np.ndarray:
                size = w.sum(axis=1)
                p_sum = w @ p_centred
                raw = w @ p_centred**2
                variance = raw - p_sum**2 / size
                covariance = w @ (p_centred * y_centred) - p_sum * (w @ y_centred) / size
                degenerate = variance <= DEGENERATE_VARIANCE * raw
                return np.where(degenerate, np.nan, covariance / np.where(degenerate, 1.0, variance))

            return slope
        raise ValueError(f"unknown regression metric {metric!r}: use one of {list(REGRESSION_METRICS)}")

    y_pred, classes = output.y_pred, output.classes
    if metric == "accuracy":
        correct = (y_pred == y_true).astype(float)
        return lambda w: w @ correct / w.sum(axis=1)
    if metric in ("precision", "recall", "f1"):
        if task == "binary":
            labels = classes[1:]
        else:
            # sklearn's macro average runs over the labels seen in y_true or y_pred.
            labels = np.unique(np.concatenate([y_true, y_pred]))
        actual = (y_true[:, None] == labels[None, :]).astype(float)
        predicted = (y_pred[:, None] == labels[None, :]).astype(float)
        hits = actual * predicted

        def macro(w: np.ndarray) -> np.ndarray:
            true_positives, actual_count, predicted_count = w @ hits, w @ actual, w @ predicted
            if metric == "precision":
                per_label = _safe_divide(true_positives, predicted_count)
            elif metric == "recall":
                per_label = _safe_divide(true_positives, actual_count)
            else:
                per_label = _safe_divide(2 * true_positives, actual_count + predicted_count)
            if task == "binary":
                return per_label[:, 0]
            seen = (actual_count + predicted_count) > 0
            return (per_label * seen).sum(axis=1) / seen.sum(axis=1)

        return macro
    if metric == "roc_auc":
        columns = _classes_scored_by_auc(y_true, output, task)

        def auc(w: np.ndarray) -> np.ndarray:
            if not columns:
                return np.full(len(w), np.nan)
            per_class = [_weighted_auc(output.proba[:, column], y_true == classes[column], w) for column in columns]
            return np.mean(per_class, axis=0)

        return auc
    if metric == "log_loss":
        labels, aligned = _aligned_proba(y_true, output)
        eps = np.finfo(float).eps
        p_true = aligned[np.arange(len(y_true)), np.searchsorted(labels, y_true)]
        row_loss = -np.log(np.clip(p_true, eps, 1 - eps))
        return lambda w: w @ row_loss / w.sum(axis=1)
    raise ValueError(f"unknown classification metric {metric!r}: use one of {list(CLASSIFICATION_METRICS)}")


def _resample_weights(rng: np.random.Generator, n: int, rounds: int) -> np.ndarray:
    """How often each row was drawn in each round: n row indices drawn with replacement per round."""
    drawn = rng.integers(0, n, size=(rounds, n))
    flat = (drawn + (np.arange(rounds) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=rounds * n).reshape(rounds, n).astype(float)


@dataclass(frozen=True)
class DifferenceInterval:
    """The primary-metric difference (positive = challenger better) and its paired bootstrap interval."""

    metric: str
    point: float
    low: float
    high: float
    confidence: float
    rounds: int

    @property
    def challenger_better(self) -> bool:
        return self.low > 0

    @property
    def challenger_worse(self) -> bool:
        return self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "point": _json_float(self.point),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "confidence": self.confidence,
            "rounds": self.rounds,
        }


def _check_metric_and_confidence(task: Task, metric: str, confidence: float) -> None:
    if metric not in metrics_for(task):
        raise ValueError(f"{metric!r} is not a {task} metric: use one of {list(metrics_for(task))}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _class_indicator(task: Task, y_true: np.ndarray) -> np.ndarray | None:
    """Rows x classes present (1.0 where a row is of that class); a resample's weights times it count each
    class, so a resample that misses one is found. None for regression."""
    return None if task == "regression" else (y_true[:, None] == np.unique(y_true)[None, :]).astype(float)


def _percentile_interval(metric: str, point: float, differences: list[np.ndarray], confidence: float) -> DifferenceInterval:
    difference = np.concatenate(differences)
    difference = difference[~np.isnan(difference)]
    if difference.size == 0:
        return DifferenceInterval(metric, point, math.nan, math.nan, confidence, 0)
    tail = (1 - confidence) / 2
    low, high = np.quantile(difference, [tail, 1 - tail])
    return DifferenceInterval(metric, point, float(low), float(high), confidence, int(difference.size))


def paired_bootstrap_difference(
    task: Task,
    metric: str,
    y_true: Any,
    champion_output: ModelOutput,
    challenger_output: ModelOutput,
    rounds: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> DifferenceInterval:
    """Percentile interval of the metric difference, challenger against champion, on paired resamples.

    Each round draws holdout rows with replacement once and scores both models on that same draw, so
    the variation the two models share cancels out. For classification, rounds that miss a class present
    in the holdout are skipped (the metric would change meaning); `rounds` on the result is how many
    were used. The interval is nan when no round is usable.
    """
    _check_metric_and_confidence(task, metric, confidence)
    y_true = _check_inputs(task, y_true, champion_output)
    _check_inputs(task, y_true, challenger_output)
    n = len(y_true)
    champion_metric = _metric_on_weights(task, metric, y_true, champion_output)
    challenger_metric = _metric_on_weights(task, metric, y_true, challenger_output)
    everything = np.ones((1, n))
    point = float(improvement(metric, challenger_metric(everything), champion_metric(everything))[0])

    holdout_classes = _class_indicator(task, y_true)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(rounds, MAX_WEIGHT_CELLS // n))
    differences = []
    for start in range(0, rounds, chunk):
        weights = _resample_weights(rng, n, min(chunk, rounds - start))
        if holdout_classes is not None:
            weights = weights[(weights @ holdout_classes > 0).all(axis=1)]
        differences.append(improvement(metric, challenger_metric(weights), champion_metric(weights)))
    return _percentile_interval(metric, point, differences, confidence)


def unpaired_bootstrap_difference(
    task: Task,
    metric: str,
    champion_y: Any,
    champion_output: ModelOutput,
    challenger_y: Any,
    challenger_output: ModelOutput,
    rounds: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> DifferenceInterval:
    """Percentile interval of the metric difference, challenger against champion, when each model answered
    rows of its own (a canary split): each round resamples the two samples independently.

    The metric of each resample is computed as `paired_bootstrap_difference` does (`_metric_on_weights`);
    rounds in which either sample misses one of its own classes are skipped, and `rounds` on the result is
    how many were used. The interval is nan when no round is usable.
    """
    _check_metric_and_confidence(task, metric, confidence)
    arms = []
    for y_true, output in ((champion_y, champion_output), (challenger_y, challenger_output)):
        y_true = _check_inputs(task, y_true, output)
        arms.append((len(y_true), _metric_on_weights(task, metric, y_true, output), _class_indicator(task, y_true)))
    (n_champion, champion_metric, champion_classes), (n_challenger, challenger_metric, challenger_classes) = arms
    everything = np.ones((1, n_champion)), np.ones((1, n_challenger))
    point = float(improvement(metric, challenger_metric(everything[1]), champion_metric(everything[0]))[0])

    rng = np.random.default_rng(seed)
    chunk = max(1, min(rounds, MAX_WEIGHT_CELLS // max(n_champion, n_challenger)))
    differences = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        champion_weights = _resample_weights(rng, n_champion, size)
        challenger_weights = _resample_weights(rng, n_challenger, size)
        usable = np.ones(size, dtype=bool)
        if champion_classes is not None:
            usable &= (champion_weights @ champion_classes > 0).all(axis=1)
            usable &= (challenger_weights @ challenger_classes > 0).all(axis=1)
        challenger_values = challenger_metric(challenger_weights[usable])
        differences.append(improvement(metric, challenger_values, champion_metric(champion_weights[usable])))
    return _percentile_interval(metric, point, differences, confidence)


@dataclass(frozen=True)
class Gate:
    """One promotion check: whether it passed, why, and what failing it means (HOLD or REJECT)."""

    name: str
    passed: bool
    reason: str
    on_fail: Decision = HOLD

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason, "on_fail": self.on_fail}


@dataclass(frozen=True)
class Verdict:
    """The decision and the gates it follows from; `summary` is one sentence for people."""

    decision: Decision
    gates: list[Gate] = field(default_factory=list)
    summary: str = ""

    @property
    def failed_gates(self) -> list[Gate]:
        return [gate for gate in self.gates if not gate.passed]


def _format(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    sign = "+" if signed else ""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:{sign}.4f}"
    return f"{value:{sign}.4g}"


def _describe(metric: str, value: float) -> str:
    if metric == "calibration_slope":
        return f"calibration_slope {_format(value)} (distance from 1: {_format(comparable_value(metric, value))})"
    return f"{metric} {_format(value)}"


def _floor_gate(metric: str, value: float, floor: float | None) -> Gate:
    if floor is None:
        return Gate(FLOOR_GATE, True, "no floor set", on_fail=REJECT)
    compared = comparable_value(metric, value)
    if not math.isfinite(compared):
        return Gate(FLOOR_GATE, False, f"{metric} is undefined on this holdout, so the floor cannot be met", REJECT)
    if GREATER_IS_BETTER[metric]:
        passed = compared >= floor
        relation = ">=" if passed else "<"
    else:
        passed = compared <= floor
        relation = "<=" if passed else ">"
    kind = "maximum distance from 1" if metric == "calibration_slope" else "floor"
    return Gate(FLOOR_GATE, passed, f"{_describe(metric, value)} {relation} {kind} {_format(floor)}", REJECT)


def min_change_failures(
    challenger_value: float,
    champion_value: float,
    greater_is_better: bool,
    min_absolute_change: float,
    min_relative_change: float,
) -> list[str]:
    """Which of MLflow's `MetricThreshold` comparisons the challenger fails: "absolute", "relative" or none.

    Absolute: challenger >= champion + min_absolute_change (<= champion - change when lower is better).
    Relative: the change over abs(champion) >= min_relative_change, checked only when it is above 0;
    with a champion value of 0, the challenger must be better by 1e-10. The expressions match MLflow's so
    that floating-point edge cases agree.
    """
    failures = []
    if greater_is_better:
        if not challenger_value >= champion_value + min_absolute_change:
            failures.append("absolute")
    elif not challenger_value <= champion_value - min_absolute_change:
        failures.append("absolute")
    if min_relative_change > 0:
        if champion_value == 0:
            if greater_is_better:
                passed = challenger_value >= champion_value + ZERO_BASELINE_MARGIN
            else:
                passed = challenger_value <= champion_value - ZERO_BASELINE_MARGIN
        else:
            change = challenger_value - champion_value if greater_is_better else champion_value - challenger_value
            passed = change / abs(champion_value) >= min_relative_change
        if not passed:
            failures.append("relative")
    return failures


def _improvement_gate(
    metric: str, challenger_value: float, champion_value: float, thresholds: PromotionThresholds
) -> Gate:
    challenger_compared = comparable_value(metric, challenger_value)
    champion_compared = comparable_value(metric, champion_value)
    if not (math.isfinite(challenger_compared) and math.isfinite(champion_compared)):
        return Gate(IMPROVEMENT_GATE, False, f"{metric} is undefined for one of the models on this holdout")
    gain = float(improvement(metric, challenger_value, champion_value))
    direction = "improved" if gain > 0 else "worsened" if gain < 0 else "unchanged"
    change = f"{metric} {direction}"
    if gain != 0:
        change += f" by {_format(abs(gain))}"
    change += f" ({_format(champion_value)} -> {_format(challenger_value)})"
    if thresholds.min_absolute_change > 0:
        required = f"an improvement of at least {_format(thresholds.min_absolute_change)}"
    else:
        required = "no worse than the champion"
    if thresholds.min_relative_change > 0:
        required += f" and at least {thresholds.min_relative_change:.1%} relative"
    failures = min_change_failures(
        challenger_compared,
        champion_compared,
        GREATER_IS_BETTER[metric],
        thresholds.min_absolute_change,
        thresholds.min_relative_change,
    )
    if not failures:
        return Gate(IMPROVEMENT_GATE, True, f"{change}; required {required}")
    return Gate(IMPROVEMENT_GATE, False, f"{change}; fails the {' and '.join(failures)} minimum: required {required}")


def required_gain(metric: str, champion_value: float, thresholds: PromotionThresholds) -> float:
    """The improvement a challenger must show, in the metric's units: the larger of `min_absolute_change` and
    `min_relative_change` of the champion's value."""
    relative = thresholds.min_relative_change * abs(comparable_value(metric, champion_value))
    return max(thresholds.min_absolute_change, relative if math.isfinite(relative) else 0.0)


def _interval_gate(interval: DifferenceInterval, required: float = 0.0) -> Gate:
    """Passes when the whole interval lies above the required improvement: a challenger must show with
    evidence that it gains what the spec asks, not only that it is not worse (on stable data a model fitted
    on more rows is often better by a sliver, which is no reason to replace a champion)."""
    level = f"{interval.confidence:.0%}"
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        reason = f"the {level} interval of the {interval.metric} difference could not be estimated (no usable resample)"
        return Gate(INTERVAL_GATE, False, reason)
    bounds = (
        f"{level} interval of the {interval.metric} difference "
        f"[{_format(interval.low, True)}, {_format(interval.high, True)}] ({interval.rounds} paired resamples)"
    )
    if interval.low > required:
        cleared = "is above 0" if required == 0 else f"lies above the required improvement of {_format(required)}"
        return Gate(INTERVAL_GATE, True, f"{bounds} {cleared}")
    if interval.challenger_worse:
        return Gate(INTERVAL_GATE, False, f"{bounds} is below 0: the challenger is clearly worse", REJECT)
    if interval.challenger_better:
        reason = f"{bounds} reaches below the required improvement of {_format(required)}: the gain may be smaller"
        return Gate(INTERVAL_GATE, False, reason)
    return Gate(INTERVAL_GATE, False, f"{bounds} contains 0: the difference is inside the confidence interval")


@dataclass(frozen=True)
class SecondaryEvidence:
    """What a secondary metric's comparison rests on: its paired interval, or why it is not comparable."""

    metric: str
    interval: DifferenceInterval | None = None
    not_comparable: str | None = None


def metric_support(task: Task, metric: str, y_true: Any, output: ModelOutput) -> int | None:
    """How many rows a binary threshold metric rests on (precision: predicted positives; recall: actual
    positives; F1: the fewer of both); None for metrics that rest on every row."""
    if task != "binary" or metric not in ("precision", "recall", "f1"):
        return None
    positive = output.classes[1]
    predicted, actual = int(np.sum(output.y_pred == positive)), int(np.sum(np.asarray(y_true) == positive))
    return {"precision": predicted, "recall": actual, "f1": min(predicted, actual)}[metric]


def traded_metrics(task: Task, objective: str | None) -> tuple[str, ...]:
    """The threshold metrics a binary model's decision `objective` trades away: shown, never a gate."""
    if task != "binary" or objective is None:
        return ()
    if objective not in OBJECTIVE_METRICS:
        raise ValueError(f"unknown decision objective {objective!r}: use one of {list(OBJECTIVE_METRICS)}")
    return tuple(metric for metric in THRESHOLD_METRICS if metric not in OBJECTIVE_METRICS[objective])


def gated_secondaries(task: Task, primary_metric: str, objective: str | None = None) -> list[str]:
    traded = traded_metrics(task, objective)
    return [metric for metric in metrics_for(task) if metric != primary_metric and metric not in traded]


def secondary_evidence(
    task: Task,
    primary_metric: str,
    y_true: Any,
    champion_output: ModelOutput,
    challenger_output: ModelOutput,
    rounds: int,
    confidence: float,
    seed: int = 0,
    objective: str | None = None,
) -> dict[str, SecondaryEvidence]:
    """For each gated secondary metric, the paired bootstrap interval of its difference, or why there is none:
    a threshold metric that rests on fewer than `MIN_SUPPORT_ROWS` rows for either model is not comparable."""
    evidence = {}
    for metric in gated_secondaries(task, primary_metric, objective):
        thin = [
            (role, count)
            for role, output in (("champion", champion_output), ("challenger", challenger_output))
            if (count := metric_support(task, metric, y_true, output)) is not None and count < MIN_SUPPORT_ROWS
        ]
        if thin:
            role, count = thin[0]
            evidence[metric] = SecondaryEvidence(metric, not_comparable=f"the {role}'s rests on {count} rows")
            continue
        interval = paired_bootstrap_difference(
            task, metric, y_true, champion_output, challenger_output, rounds=rounds, confidence=confidence, seed=seed
        )
        evidence[metric] = SecondaryEvidence(metric, interval=interval)
    return evidence


def _secondary_gate(
    task: Task,
    primary_metric: str,
    challenger: dict[str, float],
    champion: dict[str, float],
    tolerance: float,
    evidence: dict[str, SecondaryEvidence] | None = None,
    objective: str | None = None,
) -> Gate:
    """Holds when another metric is worse beyond the tolerance: with evidence, only when its whole paired
    interval lies beyond it (a point estimate that moved on noise holds nothing); without, on the values.
    The threshold metrics a binary model's decision objective trades away are named, not gated."""
    worse, not_comparable = [], []
    for metric in gated_secondaries(task, primary_metric, objective):
        loss = -improvement(metric, challenger.get(metric, math.nan), champion.get(metric, math.nan))
        found = (evidence or {}).get(metric)
        if found is not None and found.not_comparable:
            not_comparable.append(f"{metric} ({found.not_comparable})")
            continue
        if not math.isfinite(loss):
            not_comparable.append(f"{metric} (undefined)")
            continue
        values = f"{_format(champion[metric])} -> {_format(challenger[metric])}"
        if found is not None and found.interval is not None:
            interval = found.interval
            if math.isfinite(interval.high) and interval.high < -tolerance:
                bounds = f"interval [{_format(interval.low, True)}, {_format(interval.high, True)}]"
                worse.append(f"{metric} by {_format(float(loss))} ({values}; {bounds})")
        elif found is None and loss > tolerance:
            worse.append(f"{metric} by {_format(float(loss))} ({values})")
    skipped = f"; not comparable: {', '.join(not_comparable)}" if not_comparable else ""
    traded = [metric for metric in traded_metrics(task, objective) if metric != primary_metric]
    if traded:
        skipped += (
            f"; not gated: {', '.join(traded)} (traded against each other at each model's cut-off, chosen for "
            f"{objective})"
        )
    if worse:
        reason = f"worse beyond the tolerance of {_format(tolerance)}: {'; '.join(worse)}{skipped}"
        return Gate(SECONDARY_GATE, False, reason)
    if evidence:
        reason = f"no other metric is worse by more than {_format(tolerance)} across its whole interval{skipped}"
    else:
        reason = f"no other metric is worse by more than {_format(tolerance)}{skipped}"
    return Gate(SECONDARY_GATE, True, reason)


def decide(
    task: Task,
    primary_metric: str,
    challenger_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    difference_interval: DifferenceInterval | None,
    thresholds: PromotionThresholds,
    secondary: dict[str, SecondaryEvidence] | None = None,
    holdout_rows: int | None = None,
    objective: str | None = None,
) -> Verdict:
    """PROMOTE, HOLD or REJECT a challenger, with every gate's outcome and reason.

    A failed floor or a challenger clearly worse (interval entirely below 0) rejects; any other failed
    gate holds. Without a champion only the floor applies, since there is nothing to compare with.
    Replacing a champion also needs a holdout of at least `thresholds.min_holdout_rows` rows. For a binary
    model, `objective` is the decision objective its cut-off was chosen for (see `traded_metrics`).
    """
    if primary_metric not in metrics_for(task):
        raise ValueError(f"{primary_metric!r} is not a {task} metric: use one of {list(metrics_for(task))}")
    gates = [_floor_gate(primary_metric, challenger_metrics[primary_metric], thresholds.floor)]
    if champion_metrics is None:
        if gates[0].passed:
            return Verdict(PROMOTE, gates, "first model for this customer, and it meets the floor")
        return Verdict(REJECT, gates, "first model for this customer, and it misses the floor")
    champion_floor = _floor_gate(primary_metric, champion_metrics[primary_metric], thresholds.floor)
    if not gates[0].passed and not champion_floor.passed and math.isfinite(challenger_metrics[primary_metric]):
        # Keeping the champion does not keep the floor when it misses it too on these rows (after a concept
        # change, say): rejecting would keep serving the worse model, so the comparison decides.
        gates[0] = Gate(
            FLOOR_GATE,
            True,
            f"{gates[0].reason}, but the champion misses it too ({champion_floor.reason}): the comparison decides",
            on_fail=REJECT,
        )
    if difference_interval is None:
        raise ValueError("comparing with a champion needs the bootstrap interval of the difference")
    gates += [
        _improvement_gate(
            primary_metric, challenger_metrics[primary_metric], champion_metrics[primary_metric], thresholds
        ),
        _interval_gate(
            difference_interval, required_gain(primary_metric, champion_metrics[primary_metric], thresholds)
        ),
        _secondary_gate(
            task,
            primary_metric,
            challenger_metrics,
            champion_metrics,
            thresholds.secondary_tolerance,
            secondary,
            objective,
        ),
    ]
    if holdout_rows is not None:
        gates.append(_holdout_gate(holdout_rows, thresholds.min_holdout_rows))
    failed = [gate for gate in gates if not gate.passed]
    if not failed:
        return Verdict(PROMOTE, gates, "the challenger passed every gate")
    decision = REJECT if any(gate.on_fail == REJECT for gate in failed) else HOLD
    names = ", ".join(gate.name for gate in failed)
    consequence = "the champion keeps serving" if decision == HOLD else "the challenger is discarded"
    return Verdict(decision, gates, f"failed {names}; {consequence}")


def _holdout_gate(rows: int, needed: int) -> Gate:
    # A percentile bootstrap interval is too narrow on a small sample: below `needed` rows a "significant"
    # gain is too often one that the next batches do not confirm.
    if rows >= needed:
        return Gate(HOLDOUT_GATE, True, f"{rows:,} holdout rows >= {needed:,}")
    return Gate(
        HOLDOUT_GATE,
        False,
        f"{rows:,} holdout rows < {needed:,}: too few to trust the comparison (raise holdout_fraction or the "
        "training window)",
    )


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class EvaluationReport:
    """Everything the evaluation stage decided and why, for the MLflow run and the Dagster UI."""

    customer: str
    task: Task
    primary_metric: str
    challenger_version: str | None
    champion_version: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    difference: DifferenceInterval | None
    verdict: Verdict
    thresholds: PromotionThresholds
    holdout_rows: int
    # The cut-off each binary model predicts the positive class at (None: 0.5, a model without its own).
    decision_thresholds: dict[str, float | None] = field(default_factory=dict)

    @property
    def gates(self) -> list[Gate]:
        return self.verdict.gates

    @property
    def decision(self) -> Decision:
        return self.verdict.decision

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (nan becomes None)."""
        champion = None
        if self.champion_metrics is not None:
            champion = {name: _json_float(value) for name, value in self.champion_metrics.items()}
        return {
            "customer": self.customer,
            "task": self.task,
            "primary_metric": self.primary_metric,
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
            "holdout_rows": self.holdout_rows,
            "challenger_metrics": {name: _json_float(value) for name, value in self.challenger_metrics.items()},
            "champion_metrics": champion,
            "difference": None if self.difference is None else self.difference.to_dict(),
            "decision": self.verdict.decision,
            "summary": self.verdict.summary,
            "gates": [gate.to_dict() for gate in self.gates],
            "thresholds": self.thresholds.model_dump(),
            "decision_thresholds": self.decision_thresholds,
        }

    def _threshold_lines(self) -> list[str]:
        if not self.decision_thresholds:
            return []
        shown = ", ".join(
            f"{role} {'0.5 (default)' if value is None else _format(value)}" for role, value in self.decision_thresholds.items()
        )
        return [f"Decision thresholds (threshold metrics are computed at each model's own): {shown}.", ""]

    def to_markdown(self) -> str:
        """Metrics table, gates table and the verdict line, for the Dagster UI."""
        challenger = f"v{self.challenger_version}" if self.challenger_version is not None else "challenger"
        champion = f"v{self.champion_version}" if self.champion_version is not None else "champion"
        if self.champion_metrics is None:
            title = f"### Evaluation of {challenger} for `{self.customer}` (no champion yet)"
        else:
            title = f"### Evaluation of {challenger} against {champion} for `{self.customer}`"
        lines = [
            title,
            "",
            f"Task `{self.task}`, primary metric **{self.primary_metric}**, holdout of {self.holdout_rows:,} rows.",
            "",
            *self._threshold_lines(),
            "| metric | champion | challenger | difference (+ = challenger better) |",
            "|---|---:|---:|---:|",
        ]
        for metric in metrics_for(self.task):
            new = self.challenger_metrics.get(metric, math.nan)
            old = math.nan if self.champion_metrics is None else self.champion_metrics.get(metric, math.nan)
            gain = "n/a"
            if self.champion_metrics is not None:
                gain = _format(float(improvement(metric, new, old)), signed=True)
            name = metric
            if metric == self.primary_metric:
                name = f"**{metric}**"
                if self.difference is not None:
                    gain += f" [{_format(self.difference.low, True)}, {_format(self.difference.high, True)}]"
            lines.append(f"| {name} | {_format(old)} | {_format(new)} | {gain} |")
        lines += ["", "| gate | result | reason |", "|---|---|---|"]
        for gate in self.gates:
            result = "pass" if gate.passed else f"FAIL ({gate.on_fail})"
            lines.append(f"| {gate.name} | {result} | {_cell(gate.reason)} |")
        lines += ["", f"**Verdict: {self.verdict.decision}**: {_cell(self.verdict.summary)}"]
        return "\n".join(lines)


def evaluate(
    task: Task,
    primary_metric: str,
    y_true: Any,
    challenger_output: ModelOutput,
    champion_output: ModelOutput | None,
    thresholds: PromotionThresholds | None = None,
    *,
    customer: str = "",
    challenger_version: str | int | None = None,
    champion_version: str | int | None = None,
    seed: int = 0,
    objective: str | None = None,
) -> EvaluationReport:
    """Score the challenger (and the champion, if any) on the holdout and decide on promotion; `objective` is
    a binary customer's decision objective (`spec.decision.objective`)."""
    thresholds = thresholds or PromotionThresholds()
    challenger_metrics = compute_metrics(task, y_true, challenger_output)
    champion_metrics, difference, secondary = None, None, None
    if champion_output is not None:
        champion_metrics = compute_metrics(task, y_true, champion_output)
        difference = paired_bootstrap_difference(
            task,
            primary_metric,
            y_true,
            champion_output,
            challenger_output,
            rounds=thresholds.bootstrap_rounds,
            confidence=thresholds.confidence,
            seed=seed,
        )
        secondary = secondary_evidence(
            task, primary_metric, y_true, champion_output, challenger_output,
            rounds=thresholds.bootstrap_rounds, confidence=thresholds.confidence, seed=seed, objective=objective,
        )  # fmt: skip
    verdict = decide(
        task, primary_metric, challenger_metrics, champion_metrics, difference, thresholds, secondary,
        holdout_rows=len(challenger_output), objective=objective,
    )  # fmt: skip
    return EvaluationReport(
        customer=customer,
        task=task,
        primary_metric=primary_metric,
        challenger_version=None if challenger_version is None else str(challenger_version),
        champion_version=None if champion_version is None else str(champion_version),
        challenger_metrics=challenger_metrics,
        champion_metrics=champion_metrics,
        difference=difference,
        verdict=verdict,
        thresholds=thresholds,
        holdout_rows=len(challenger_output),
        decision_thresholds=(
            {"challenger": challenger_output.threshold}
            | ({"champion": champion_output.threshold} if champion_output is not None else {})
            if task == "binary"
            else {}
        ),
    )
