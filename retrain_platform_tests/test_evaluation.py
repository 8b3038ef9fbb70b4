import json
import math
import os

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from retrain_platform.evaluation import (
    MIN_SUPPORT_ROWS,
    THRESHOLD_METRICS,
    secondary_evidence,
    FLOOR_GATE,
    GREATER_IS_BETTER,
    HOLDOUT_GATE,
    IMPROVEMENT_GATE,
    INTERVAL_GATE,
    SECONDARY_GATE,
    DifferenceInterval,
    ModelOutput,
    _metric_on_weights,
    calibration_slope,
    compute_metrics,
    decide,
    evaluate,
    improvement,
    metrics_for,
    min_change_failures,
    paired_bootstrap_difference,
    required_gain,
    traded_metrics,
)
from retrain_platform.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS, PromotionThresholds


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def binary_holdout(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, n), rng


def binary_model(y, separation, rng, shift=0.0, noise=None):
    """Calibrated probabilities for a score whose class means are `separation` apart (unit variance)."""
    score = separation * y + (rng.normal(size=len(y)) if noise is None else noise)
    return ModelOutput.from_proba(sigmoid(separation * score - separation**2 / 2 + shift), [0, 1])


def multiclass_holdout_and_model(n, strength, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), y] += strength
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, ModelOutput.from_proba(proba, list(range(classes)))


def gate(report_or_verdict, name):
    return next(g for g in report_or_verdict.gates if g.name == name)


# --- metrics ---------------------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    output = ModelOutput.from_proba([0.1, 0.6, 0.4, 0.9], [0, 1])
    assert output.y_pred.tolist() == [0, 1, 0, 1]
    metrics = compute_metrics("binary", y, output)
    assert metrics["accuracy"] == 0.5
    assert metrics["precision"] == 0.5
    assert metrics["recall"] == 0.5
    assert metrics["f1"] == 0.5
    # positives 0.4, 0.9 against negatives 0.1, 0.6: 3 of 4 pairs ordered correctly
    assert metrics["roc_auc"] == 0.75
    assert metrics["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2)
    assert all(type(value) is float for value in metrics.values())
    assert set(metrics) == set(CLASSIFICATION_METRICS)


def test_binary_positive_class_is_classes_1_whatever_the_column_order():
    y = np.array(["yes", "yes", "no", "no"])
    # column order no/yes versus yes/no: the same model, so the same metrics
    sorted_columns = ModelOutput.from_proba([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1]], ["no", "yes"])
    reversed_columns = ModelOutput.from_proba([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]], ["yes", "no"])
    metrics = compute_metrics("binary", y, sorted_columns)
    assert metrics["recall"] == 0.5  # "yes" is the positive class: one of two found
    assert metrics["precision"] == 1.0
    assert metrics["roc_auc"] == 1.0
    assert metrics["log_loss"] == pytest.approx(log_loss(y, y_proba=[[0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1]]))
    flipped = compute_metrics("binary", y, reversed_columns)
    assert flipped["accuracy"] == metrics["accuracy"]
    assert flipped["log_loss"] == pytest.approx(metrics["log_loss"])
    # with classes ["yes", "no"] the positive class is "no", which the model ranks perfectly too
    assert flipped["recall"] == 1.0 and flipped["precision"] == pytest.approx(2 / 3)


def test_multiclass_metrics_by_hand():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    metrics = compute_metrics("multiclass", y, ModelOutput.from_proba(proba, [0, 1, 2]))
    assert metrics["accuracy"] == 0.75
    # per class precision 1, 1/2, 1; recall 1, 1, 1/2; f1 1, 2/3, 2/3
    assert metrics["precision"] == pytest.approx(2.5 / 3)
    assert metrics["recall"] == pytest.approx(2.5 / 3)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.3, 0.6])))


def test_multiclass_with_a_class_absent_from_the_holdout():
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
    metrics = compute_metrics("multiclass", y, ModelOutput.from_proba(proba, [0, 1, 2]))
    # class 2 never occurs, so ROC AUC averages classes 0 and 1 only:
    # class 0 ranks perfectly (1.0); class 1 scores 0.5, 0.1 against 0.2, 0.1: 2.5 of 4 pairs (0.625)
    assert metrics["roc_auc"] == pytest.approx((1.0 + 0.625) / 2)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.5, 0.5, 0.1])))
    assert metrics["accuracy"] == 0.75


def test_a_holdout_label_the_model_never_saw_gives_a_large_finite_log_loss():
    y = np.array([0, 1, 2, 3])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    metrics = compute_metrics("multiclass", y, ModelOutput.from_proba(proba, [0, 1, 2]))
    assert 5 < metrics["log_loss"] < 20
    assert metrics["accuracy"] == 0.75


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    metrics = compute_metrics("regression", y, ModelOutput.from_values([1.0, 2.0, 3.0, 6.0]))
    assert metrics["rmse"] == pytest.approx(1.0)
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["r2"] == pytest.approx(1 - 4 / 5)
    assert set(metrics) == set(REGRESSION_METRICS)
    assert calibration_slope(y, 2 * y) == pytest.approx(0.5)
    assert calibration_slope(y, y + 10) == pytest.approx(1.0)
    assert math.isnan(calibration_slope(y, [2.0, 2.0, 2.0, 2.0]))


def test_mismatched_inputs_are_refused_with_a_clear_message():
    output = ModelOutput.from_proba([0.2, 0.8], [0, 1])
    with pytest.raises(ValueError, match="3 rows"):
        compute_metrics("binary", [0, 1, 1], output)
    with pytest.raises(ValueError, match="same type"):
        compute_metrics("binary", ["0", "1"], output)
    with pytest.raises(ValueError, match="proba"):
        compute_metrics("binary", [0, 1], ModelOutput.from_values([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        ModelOutput(y_pred=[0, 1], proba=np.ones((2, 3)) / 3, classes=[0, 1])


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_weighted_metrics_equal_sklearn_on_the_holdout_and_on_a_resample(task):
    rng = np.random.default_rng(3)
    n = 300
    if task == "binary":
        y, _ = binary_holdout(n, seed=3)
        output = binary_model(y, 1.0, rng)
    elif task == "multiclass":
        y, output = multiclass_holdout_and_model(n, 1.0, seed=3)
    else:
        y = rng.normal(size=n)
        output = ModelOutput.from_values(0.7 * y + rng.normal(scale=0.5, size=n))
    drawn = rng.integers(0, n, n)
    counts = np.bincount(drawn, minlength=n).astype(float)
    full = compute_metrics(task, y, output)
    resampled_output = (
        ModelOutput.from_values(output.y_pred[drawn])
        if task == "regression"
        else ModelOutput(output.y_pred[drawn], output.proba[drawn], output.classes)
    )
    resampled = compute_metrics(task, y[drawn], resampled_output)
    for metric in metrics_for(task):
        values = _metric_on_weights(task, metric, np.asarray(y), output)(np.vstack([np.ones(n), counts]))
        assert values[0] == pytest.approx(full[metric], abs=1e-12), metric
        assert values[1] == pytest.approx(resampled[metric], abs=1e-12), metric


def test_orientation_of_every_metric():
    assert not GREATER_IS_BETTER["log_loss"] and not GREATER_IS_BETTER["rmse"] and not GREATER_IS_BETTER["mae"]
    assert GREATER_IS_BETTER["roc_auc"] and GREATER_IS_BETTER["r2"]
    assert set(GREATER_IS_BETTER) == set(CLASSIFICATION_METRICS + REGRESSION_METRICS)
    assert improvement("rmse", 0.8, 1.0) == pytest.approx(0.2)
    assert improvement("roc_auc", 0.8, 0.7) == pytest.approx(0.1)
    # calibration slope: 0.95 is closer to 1 than 1.2
    assert improvement("calibration_slope", 0.95, 1.2) == pytest.approx(0.15)
    assert improvement("calibration_slope", 1.2, 0.95) == pytest.approx(-0.15)


# --- bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_point_and_is_deterministic():
    y, rng = binary_holdout(2000)
    champion, challenger = binary_model(y, 1.0, rng), binary_model(y, 1.3, rng)
    first = paired_bootstrap_difference("binary", "roc_auc", y, champion, challenger, rounds=300, seed=7)
    again = paired_bootstrap_difference("binary", "roc_auc", y, champion, challenger, rounds=300, seed=7)
    other_seed = paired_bootstrap_difference("binary", "roc_auc", y, champion, challenger, rounds=300, seed=8)
    expected = compute_metrics("binary", y, challenger)["roc_auc"] - compute_metrics("binary", y, champion)["roc_auc"]
    assert first.point == pytest.approx(expected, abs=1e-12)
    assert first.low < first.point < first.high
    assert first == again
    assert (other_seed.low, other_seed.high) != (first.low, first.high)
    assert first.rounds == 300 and first.confidence == 0.95


def test_bootstrap_interval_narrows_with_more_rows():
    widths = []
    for n in (200, 5000):
        y, rng = binary_holdout(n, seed=11)
        champion, challenger = binary_model(y, 1.0, rng), binary_model(y, 1.3, rng)
        interval = paired_bootstrap_difference("binary", "accuracy", y, champion, challenger, rounds=300)
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 3


def test_bootstrap_error_metric_is_oriented_so_positive_means_better():
    rng = np.random.default_rng(5)
    y = rng.normal(size=1000)
    champion = ModelOutput.from_values(y + rng.normal(size=1000))
    challenger = ModelOutput.from_values(y + 0.5 * rng.normal(size=1000))
    interval = paired_bootstrap_difference("regression", "rmse", y, champion, challenger)
    assert interval.point == pytest.approx(
        compute_metrics("regression", y, champion)["rmse"] - compute_metrics("regression", y, challenger)["rmse"]
    )
    assert 0 < interval.low < interval.point < interval.high


def test_bootstrap_skips_resamples_missing_a_class():
    rng = np.random.default_rng(2)
    y = np.array([0] * 40 + [1] * 40 + [2] * 2)
    champion = ModelOutput.from_proba(rng.dirichlet(np.ones(3), size=len(y)), [0, 1, 2])
    challenger = ModelOutput.from_proba(rng.dirichlet(np.ones(3), size=len(y)), [0, 1, 2])
    interval = paired_bootstrap_difference("multiclass", "roc_auc", y, champion, challenger, rounds=400)
    # class 2 has two rows, so about (1 - 2/82) ** 82 = 13% of resamples miss it
    assert 250 < interval.rounds < 400
    assert math.isfinite(interval.low) and interval.low <= interval.high


# --- decisions -------------------------------------------------------------------------------------


def test_first_model_needs_only_the_floor():
    y, rng = binary_holdout(500)
    model = binary_model(y, 1.5, rng)
    auc = compute_metrics("binary", y, model)["roc_auc"]
    above = evaluate("binary", "roc_auc", y, model, None, PromotionThresholds(floor=auc - 0.05))
    assert above.decision == "PROMOTE"
    assert [g.name for g in above.gates] == [FLOOR_GATE]
    assert above.gates[0].reason == f"roc_auc {auc:.4f} >= floor {auc - 0.05:.4f}"
    assert above.difference is None and above.champion_metrics is None

    below = evaluate("binary", "roc_auc", y, model, None, PromotionThresholds(floor=auc + 0.05))
    assert below.decision == "REJECT"
    assert "<" in below.gates[0].reason and not below.gates[0].passed

    no_floor = evaluate("binary", "roc_auc", y, model, None, PromotionThresholds())
    assert no_floor.decision == "PROMOTE" and no_floor.gates[0].reason == "no floor set"


def test_clearly_better_challenger_is_promoted():
    y, rng = binary_holdout(2000)
    challenger, champion = binary_model(y, 2.0, rng), binary_model(y, 0.8, rng)
    report = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds(floor=0.6))
    assert report.decision == "PROMOTE", report.to_markdown()
    assert all(g.passed for g in report.gates)
    assert [g.name for g in report.gates] == [FLOOR_GATE, IMPROVEMENT_GATE, INTERVAL_GATE, SECONDARY_GATE, HOLDOUT_GATE]
    assert report.difference.low > 0.1


def test_under_the_floor_a_clearly_better_challenger_replaces_a_champion_under_it_too():
    """After a concept change both models can miss the floor on the latest rows: rejecting the better one
    would keep serving the worse. The comparison decides, and the report says why the floor did not."""
    y, rng = binary_holdout(2000)
    challenger, champion = binary_model(y, 0.5, rng), binary_model(y, 0.1, rng)
    auc_challenger, auc_champion = roc_auc_score(y, challenger.proba[:, 1]), roc_auc_score(y, champion.proba[:, 1])
    floor = auc_challenger + 0.05
    report = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds(floor=floor))
    assert report.decision == "PROMOTE", report.to_markdown()
    floor_gate = gate(report, FLOOR_GATE)
    assert floor_gate.passed
    assert floor_gate.reason == (
        f"roc_auc {auc_challenger:.4f} < floor {floor:.4f}, but the champion misses it too "
        f"(roc_auc {auc_champion:.4f} < floor {floor:.4f}): the comparison decides"
    )
    # Under the floor and no better than the champion: the other gates still hold or reject it.
    same = evaluate("binary", "roc_auc", y, champion, challenger, PromotionThresholds(floor=floor))
    assert same.decision == "REJECT" and gate(same, FLOOR_GATE).passed
    # A champion that meets the floor is never replaced by one that misses it, however the two compare.
    kept = evaluate("binary", "roc_auc", y, champion, challenger, PromotionThresholds(floor=auc_challenger - 0.01))
    assert kept.decision == "REJECT" and not gate(kept, FLOOR_GATE).passed


def test_clearly_worse_challenger_is_rejected():
    y, rng = binary_holdout(2000)
    report = evaluate("binary", "roc_auc", y, binary_model(y, 0.8, rng), binary_model(y, 2.0, rng))
    assert report.decision == "REJECT"
    interval_gate = gate(report, INTERVAL_GATE)
    assert not interval_gate.passed and interval_gate.on_fail == "REJECT"
    assert "clearly worse" in interval_gate.reason
    assert report.difference.high < 0


def test_nearly_identical_challenger_is_held_inside_the_confidence_interval():
    y, rng = binary_holdout(2000)
    noise = rng.normal(size=len(y))
    champion = binary_model(y, 1.2, rng, noise=noise)
    challenger = binary_model(y, 1.2, rng, noise=noise + rng.normal(scale=0.01, size=len(y)))
    report = evaluate("binary", "roc_auc", y, challenger, champion)
    assert report.decision == "HOLD"
    assert report.difference.low < 0 < report.difference.high
    assert "inside the confidence interval" in gate(report, INTERVAL_GATE).reason


def test_better_primary_but_regressed_secondary_metric_is_held_and_named():
    y, rng = binary_holdout(2000)
    champion = binary_model(y, 1.0, rng)
    # a better ranking, but probabilities pushed down: few positives are predicted any more
    challenger = binary_model(y, 1.5, rng, shift=-3.0)
    report = evaluate("binary", "roc_auc", y, challenger, champion)
    assert report.decision == "HOLD"
    assert gate(report, INTERVAL_GATE).passed and gate(report, IMPROVEMENT_GATE).passed
    secondary = gate(report, SECONDARY_GATE)
    assert not secondary.passed
    assert "recall" in secondary.reason and "log_loss" in secondary.reason
    assert "roc_auc" not in secondary.reason


def test_a_precision_resting_on_a_handful_of_predicted_positives_is_not_comparable_and_promotes():
    """The corner-market case: at the 0.5 cut-off the champion predicted almost no positives, so its
    precision (1.0 on a few rows) "fell" against a clearly better challenger; that is no evidence."""
    y, rng = binary_holdout(1400, seed=3)
    champion = binary_model(y, 0.9, rng, shift=-2.2)
    challenger = binary_model(y, 1.6, rng)
    predicted = int(np.sum(champion.y_pred == 1))
    assert 0 < predicted < MIN_SUPPORT_ROWS
    champion_precision = compute_metrics("binary", y, champion)["precision"]
    assert champion_precision > compute_metrics("binary", y, challenger)["precision"] + 0.02

    report = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds(floor=0.6))
    assert report.decision == "PROMOTE", report.to_markdown()
    secondary = gate(report, SECONDARY_GATE)
    assert secondary.passed
    assert f"precision (the champion's rests on {predicted} rows)" in secondary.reason
    assert "not comparable" in secondary.reason


def test_a_secondary_metric_worse_on_a_point_but_not_beyond_its_interval_holds_nothing():
    y, rng = binary_holdout(300, seed=8)
    champion = binary_model(y, 1.0, rng)
    challenger = binary_model(y, 1.6, rng, shift=-0.7)
    values = {name: compute_metrics("binary", y, model) for name, model in (("old", champion), ("new", challenger))}
    assert values["old"]["recall"] - values["new"]["recall"] > 0.02  # the point estimate moved beyond tolerance

    report = evaluate("binary", "roc_auc", y, challenger, champion)
    secondary = gate(report, SECONDARY_GATE)
    evidence = secondary_evidence("binary", "roc_auc", y, champion, challenger, rounds=500, confidence=0.95)
    assert evidence["recall"].interval.high > -0.02  # but its interval does not lie beyond it
    assert secondary.passed, secondary.reason
    assert report.decision == "PROMOTE"


def cut_off_models(seed=4, n=1500):
    """A holdout with 30% positives, a champion cut at 0.2 (high recall, low precision), and a better-ranking
    challenger at a cut-off of the caller's choosing."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)

    def model(separation, threshold):
        score = separation * y + rng.normal(size=n)
        return ModelOutput.from_proba(sigmoid(separation * score - separation**2 / 2 - 0.85), [0, 1], threshold)

    return y, model(1.0, 0.2), lambda threshold: model(1.5, threshold)


def test_a_cut_off_chosen_for_f1_trades_recall_for_precision_without_holding_a_better_challenger():
    y, champion, challenger_at = cut_off_models()
    challenger = challenger_at(0.45)
    old, new = compute_metrics("binary", y, champion), compute_metrics("binary", y, challenger)
    assert old["recall"] - new["recall"] > 0.2 and new["f1"] > old["f1"]  # the cut-off moved: recall for precision

    without = evaluate("binary", "roc_auc", y, challenger, champion)
    assert without.decision == "HOLD" and "recall by" in gate(without, SECONDARY_GATE).reason

    report = evaluate("binary", "roc_auc", y, challenger, champion, objective="f1")
    assert report.decision == "PROMOTE", report.to_markdown()
    secondary = gate(report, SECONDARY_GATE)
    assert secondary.passed
    assert "not gated: accuracy, precision, recall (traded against each other at each model's cut-off, chosen for f1)" in (
        secondary.reason
    )


def test_a_challenger_whose_cut_off_ruins_the_objective_metric_is_held_on_it():
    y, champion, challenger_at = cut_off_models()
    challenger = challenger_at(0.85)
    report = evaluate("binary", "roc_auc", y, challenger, champion, objective="f1")
    assert gate(report, INTERVAL_GATE).passed  # a clearly better ranking
    assert report.decision == "HOLD"
    secondary = gate(report, SECONDARY_GATE)
    assert "worse beyond the tolerance of 0.0200: f1 by" in secondary.reason
    assert "recall by" not in secondary.reason


def test_a_precision_target_gates_recall_only():
    assert traded_metrics("binary", "precision") == ("accuracy", "precision", "f1")
    assert traded_metrics("binary", "recall") == ("accuracy", "recall", "f1")
    assert traded_metrics("binary", "cost") == THRESHOLD_METRICS
    assert traded_metrics("multiclass", "f1") == () and traded_metrics("binary", None) == ()
    y, champion, challenger_at = cut_off_models()
    report = evaluate("binary", "roc_auc", y, challenger_at(0.45), champion, objective="precision")
    assert report.decision == "HOLD"
    assert "recall by 0.24" in gate(report, SECONDARY_GATE).reason
    with pytest.raises(ValueError, match="unknown decision objective 'speed'"):
        traded_metrics("binary", "speed")


def test_gain_smaller_than_min_absolute_change_is_held():
    y, rng = binary_holdout(2000)
    challenger, champion = binary_model(y, 1.5, rng), binary_model(y, 1.0, rng)
    gain = compute_metrics("binary", y, challenger)["roc_auc"] - compute_metrics("binary", y, champion)["roc_auc"]
    too_much = PromotionThresholds(min_absolute_change=gain + 0.01)
    report = evaluate("binary", "roc_auc", y, challenger, champion, too_much)
    assert report.decision == "HOLD"
    improvement_gate = gate(report, IMPROVEMENT_GATE)
    assert not improvement_gate.passed and "absolute minimum" in improvement_gate.reason
    assert "reaches below the required improvement of" in gate(report, INTERVAL_GATE).reason

    relative = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds(min_relative_change=0.5))
    assert relative.decision == "HOLD" and "relative minimum" in gate(relative, IMPROVEMENT_GATE).reason
    low = report.difference.low
    just_enough = PromotionThresholds(min_absolute_change=low - 0.01)
    enough = evaluate("binary", "roc_auc", y, challenger, champion, just_enough)
    assert enough.decision == "PROMOTE"
    assert f"lies above the required improvement of {low - 0.01:.4f}" in gate(enough, INTERVAL_GATE).reason


def test_a_gain_above_the_minimum_on_its_point_but_not_across_its_interval_is_held():
    """The steady control's case: a model fitted on twice the rows of unchanged data is better by a sliver
    whose interval reaches below the spec's minimum improvement; that is no reason to replace a champion."""
    y, rng = binary_holdout(2000)
    challenger, champion = binary_model(y, 1.5, rng), binary_model(y, 1.0, rng)
    report = evaluate("binary", "roc_auc", y, challenger, champion)
    low, point = report.difference.low, report.difference.point
    assert report.decision == "PROMOTE" and 0 < low < point
    required = (low + point) / 2  # the point clears it, the interval does not
    held = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds(min_absolute_change=required))
    assert gate(held, IMPROVEMENT_GATE).passed
    interval = gate(held, INTERVAL_GATE)
    assert not interval.passed and interval.on_fail == "HOLD"
    assert f"reaches below the required improvement of {required:.4f}: the gain may be smaller" in interval.reason
    assert held.decision == "HOLD"
    # A relative minimum is taken of the champion's value, in the metric's units.
    champion_auc = held.champion_metrics["roc_auc"]
    relative = PromotionThresholds(min_relative_change=required / champion_auc)
    assert required_gain("roc_auc", champion_auc, relative) == pytest.approx(required)
    assert evaluate("binary", "roc_auc", y, challenger, champion, relative).decision == "HOLD"


def test_regression_error_metric_orientation():
    rng = np.random.default_rng(4)
    y = rng.normal(size=1500)
    accurate = ModelOutput.from_values(y + 0.5 * rng.normal(size=1500))
    sloppy = ModelOutput.from_values(y + 1.0 * rng.normal(size=1500))
    better = evaluate("regression", "rmse", y, accurate, sloppy, PromotionThresholds(floor=0.8))
    assert better.decision == "PROMOTE", better.to_markdown()
    assert better.difference.point > 0
    assert "<= floor" in gate(better, FLOOR_GATE).reason
    assert "rmse improved" in gate(better, IMPROVEMENT_GATE).reason

    worse = evaluate("regression", "rmse", y, sloppy, accurate)
    assert worse.decision == "REJECT"
    # rmse is a maximum: the sloppy model's rmse of about 1.0 is above a floor of 0.8
    first = evaluate("regression", "rmse", y, sloppy, None, PromotionThresholds(floor=0.8))
    assert first.decision == "REJECT" and "> floor" in first.gates[0].reason


def test_calibration_slope_floor_is_a_maximum_distance_from_one():
    y = np.arange(10.0)
    half_slope = compute_metrics("regression", y, ModelOutput.from_values(2 * y))
    verdict = decide("regression", "calibration_slope", half_slope, None, None, PromotionThresholds(floor=0.2))
    assert verdict.decision == "REJECT" and "distance from 1: 0.5000" in verdict.gates[0].reason
    verdict = decide("regression", "calibration_slope", half_slope, None, None, PromotionThresholds(floor=0.6))
    assert verdict.decision == "PROMOTE"


def test_decide_needs_the_interval_when_there_is_a_champion():
    metrics = {"rmse": 1.0, "mae": 1.0, "r2": 0.5, "calibration_slope": 1.0}
    with pytest.raises(ValueError, match="interval"):
        decide("regression", "rmse", metrics, metrics, None, PromotionThresholds())
    with pytest.raises(ValueError, match="not a regression metric"):
        decide("regression", "roc_auc", metrics, None, None, PromotionThresholds())
    interval = DifferenceInterval("rmse", 0.0, math.nan, math.nan, 0.95, 0)
    verdict = decide("regression", "rmse", metrics, metrics, interval, PromotionThresholds())
    assert verdict.decision == "HOLD" and "could not be estimated" in gate(verdict, INTERVAL_GATE).reason


def test_min_change_agrees_with_mlflow_metric_threshold():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.models import EvaluationResult, MetricThreshold
    from mlflow.models.evaluation.validation import ModelValidationFailedException, validate_evaluation_results

    cases = [
        (candidate, baseline, absolute, relative, greater)
        for candidate, baseline in [
            (0.85, 0.8), (0.81, 0.8), (0.8, 0.8), (0.75, 0.8), (-0.1, -0.2), (0.3, 0.0), (-0.3, 0.0), (1.0, 2.0)
        ]
        for absolute in (0.0, 0.01, 0.05)
        for relative in (0.0, 0.05, 0.5)
        for greater in (True, False)
        if absolute or relative
    ]
    for candidate, baseline, absolute, relative, greater in cases:
        threshold = MetricThreshold(
            min_absolute_change=absolute or None, min_relative_change=relative or None, greater_is_better=greater
        )
        try:
            validate_evaluation_results(
                {"m": threshold}, EvaluationResult({"m": candidate}, {}), EvaluationResult({"m": baseline}, {})
            )
            mlflow_passed = True
        except ModelValidationFailedException:
            mlflow_passed = False
        # min_absolute_change=0 means "not worse" here; MLflow cannot express it, so compare only where it can
        ours = min_change_failures(candidate, baseline, greater, absolute, relative)
        if absolute == 0:
            ours = [failure for failure in ours if failure != "absolute"]
        assert (not ours) == mlflow_passed, (candidate, baseline, absolute, relative, greater)


# --- report ----------------------------------------------------------------------------------------


def test_report_serialises_and_renders():
    y, rng = binary_holdout(1000)
    report = evaluate(
        "binary",
        "roc_auc",
        y,
        binary_model(y, 1.5, rng),
        binary_model(y, 1.0, rng),
        PromotionThresholds(floor=0.6),
        customer="acme",
        challenger_version=7,
        champion_version="6",
    )
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["decision"] == report.decision and data["challenger_version"] == "7"
    assert data["difference"]["low"] == pytest.approx(report.difference.low)
    assert [g["name"] for g in data["gates"]] == [g.name for g in report.gates]
    assert data["thresholds"]["floor"] == 0.6

    markdown = report.to_markdown()
    assert f"**Verdict: {report.decision}**" in markdown
    for metric in CLASSIFICATION_METRICS:
        assert f"| {metric} |" in markdown or f"| **{metric}** |" in markdown
    for g in report.gates:
        assert g.name in markdown
    assert "v7 against v6" in markdown


def test_report_of_a_first_model_with_an_undefined_metric_is_still_strict_json():
    y = np.array([1, 1, 1, 1])  # one class only: ROC AUC is undefined
    model = ModelOutput.from_proba([0.2, 0.7, 0.9, 0.6], [0, 1])
    report = evaluate("binary", "accuracy", y, model, None, customer="solo")
    assert math.isnan(report.challenger_metrics["roc_auc"])
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["challenger_metrics"]["roc_auc"] is None and data["champion_metrics"] is None
    markdown = report.to_markdown()
    assert "no champion yet" in markdown and "**Verdict: PROMOTE**" in markdown


def test_a_holdout_too_small_to_trust_holds_even_a_clearly_better_challenger():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 80)
    strong = np.clip(y * 0.8 + rng.normal(0.1, 0.1, 80), 0, 1)
    weak = rng.uniform(0, 1, 80)
    champion = ModelOutput.from_proba(weak, [0, 1])
    challenger = ModelOutput.from_proba(strong, [0, 1])
    small = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds())
    assert small.decision == "HOLD"
    (gate,) = [g for g in small.gates if g.name == HOLDOUT_GATE]
    assert not gate.passed and gate.reason.startswith("80 holdout rows < 100: too few to trust the comparison")
    assert [g.name for g in small.gates if not g.passed] == [HOLDOUT_GATE]
    allowed = evaluate("binary", "roc_auc", y, challenger, champion, PromotionThresholds(min_holdout_rows=50))
    assert allowed.decision == "PROMOTE"
