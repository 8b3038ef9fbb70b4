"""The canary's verdict: the champion's and the challenger's online answers judged on the labels that came later.

`serving` sends a `canary_fraction` of a customer's rows to the `challenger` and logs every answer to
`online_predictions`. Once labels for those row ids reach the customer's landing table (late labels through
`ingest`), `compare_arms` joins the two, computes the customer's primary metric per arm with the evaluation
stage's code, and asks whether the challenger's arm is better by at least the gain the spec requires, with the
whole bootstrap interval of the difference above it (the arms answered different rows, so the two samples are
resampled independently), and whether it still meets the spec's floor. Below `min_labelled_rows` labelled rows
per arm it refuses to judge, and says so. `promote_if_better` turns a significant verdict into a promotion through
`deployment.promote_challenger`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from retrain_platform import deployment, ledger
from retrain_platform.evaluation import (
    GREATER_IS_BETTER,
    DifferenceInterval,
    ModelOutput,
    comparable_value,
    compute_metrics,
    required_gain,
    unpaired_bootstrap_difference,
)
from retrain_platform.monitoring import PREDICTION, SCORE
from retrain_platform.registry import CHALLENGER, CHAMPION, ModelRegistry
from retrain_platform.serving import CHALLENGER_ARM, CHAMPION_ARM, ONLINE_PREDICTIONS_TABLE
from retrain_platform.spec import CustomerSpec, class_value, class_values
from retrain_platform.warehouse import Warehouse, quote

CANARY_TRIGGER = "canary"
LABEL = "label"
# Multiclass rows are logged with their top probability only: these metrics need every class's.
NEEDS_ALL_PROBABILITIES = ("roc_auc", "log_loss")


class CanaryVerdict(StrEnum):
    """What the canary says about the challenger."""

    BETTER = "challenger better"
    NOT_SIGNIFICANT = "not significant"
    WORSE = "challenger worse"
    BELOW_FLOOR = "challenger below the floor"
    TOO_FEW_LABELS = "too few labels"
    NO_CANARY = "no canary"


@dataclass(frozen=True)
class ArmResult:
    """One arm of the canary: the version that answered, its answered and labelled rows, its realized metric."""

    arm: str
    model_version: str | None
    answered_rows: int
    labelled_rows: int
    metric_value: float | None


@dataclass(frozen=True)
class CanaryComparison:
    """The two arms on realized metrics, the interval of their difference and the verdict, with one reason."""

    customer: str
    task: str
    metric: str
    champion: ArmResult
    challenger: ArmResult
    min_labelled_rows: int
    required_gain: float | None
    difference: DifferenceInterval | None
    verdict: CanaryVerdict
    reason: str

    @property
    def significant(self) -> bool:
        """Whether the challenger's arm is better by the required gain across the whole interval."""
        return self.verdict == CanaryVerdict.BETTER

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (nan becomes null)."""
        return {
            "customer": self.customer,
            "task": self.task,
            "metric": self.metric,
            "arms": {arm.arm: {**asdict(arm), "metric_value": _json_float(arm.metric_value)}
                     for arm in (self.champion, self.challenger)},  # fmt: skip
            "min_labelled_rows": self.min_labelled_rows,
            "required_gain": _json_float(self.required_gain),
            "difference": None if self.difference is None else self.difference.to_dict(),
            "verdict": str(self.verdict),
            "significant": self.significant,
            "reason": self.reason,
        }


def min_labelled_rows(spec: CustomerSpec) -> int:
    """Labelled rows each arm needs before the canary is judged: as many as a batch's realized metric needs to
    count (`automation.min_labelled_rows`) and a holdout needs to replace a champion (`thresholds.min_holdout_rows`)."""
    return max(spec.automation.min_labelled_rows, spec.thresholds.min_holdout_rows)


def labelled_answers(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    """The customer's logged online answers whose row has a label in the landing table: row_id, arm,
    model_version, prediction, score, predicted_at and `label`."""
    columns = ["row_id", "arm", "model_version", PREDICTION, SCORE, "predicted_at", LABEL]
    if spec.id_column is None or not (
        warehouse.table_exists(ONLINE_PREDICTIONS_TABLE) and warehouse.table_exists(spec.landing_table)
    ):
        return pd.DataFrame(columns=columns)
    key, label = quote(spec.id_column), quote(spec.label_column)
    # The log keeps ids as text; the landing table as the file typed them (an integer id is 7 there, "7" here).
    return warehouse.query(
        f'select p."row_id", p."arm", p."model_version", p.{quote(PREDICTION)}, p.{quote(SCORE)}, p."predicted_at", '
        f"l.{label} as {quote(LABEL)} "
        f"from {quote(ONLINE_PREDICTIONS_TABLE)} p join {quote(spec.landing_table)} l "
        f'on cast(l.{key} as varchar) = p."row_id" '
        f'where p."customer" = ? and l.{label} is not null order by p."predicted_at"',
        [spec.customer],
    )


def answered_rows(warehouse: Warehouse, spec: CustomerSpec) -> dict[tuple[str, str], int]:
    """Distinct row ids answered online, per (arm, model version), labelled or not."""
    if not warehouse.table_exists(ONLINE_PREDICTIONS_TABLE):
        return {}
    counts = warehouse.query(
        f'select "arm", "model_version", count(distinct "row_id") as "rows" from {quote(ONLINE_PREDICTIONS_TABLE)} '
        'where "customer" = ? group by 1, 2',
        [spec.customer],
    )
    return {(str(row.arm), str(row.model_version)): int(row.rows) for row in counts.itertuples()}


def compare_arms(
    warehouse: Warehouse,
    spec: CustomerSpec,
    champion_version: str | None,
    challenger_version: str | None,
    *,
    seed: int = 0,
) -> CanaryComparison:
    """Judge the canary of `challenger_version` against `champion_version` on the labels stored since.

    Only the answers those two versions gave count (an answer of an older champion says nothing about this
    one); a row answered twice by one arm counts once, with its latest answer. The metric is the spec's
    primary metric (`evaluation.compute_metrics`), the interval `evaluation.unpaired_bootstrap_difference`
    with the spec's `bootstrap_rounds` and `confidence`, and the required gain `evaluation.required_gain`.
    """
    task, metric = spec.task, spec.primary_metric
    if task is None or metric is None:
        raise ValueError(f"the spec of {spec.customer} has no task or primary metric yet: train the customer first")
    needed = min_labelled_rows(spec)
    champion_version = None if champion_version is None else str(champion_version)
    challenger_version = None if challenger_version is None else str(challenger_version)
    answered = answered_rows(warehouse, spec)

    versions = {CHAMPION_ARM: champion_version, CHALLENGER_ARM: challenger_version}
    labelled: dict[str, pd.DataFrame] = {}

    def result(
        verdict: CanaryVerdict,
        reason: str,
        values: dict[str, float] | None = None,
        difference: DifferenceInterval | None = None,
        gain: float | None = None,
    ) -> CanaryComparison:
        arms = {
            arm: ArmResult(
                arm, version, answered.get((arm, str(version)), 0), len(labelled.get(arm, ())), (values or {}).get(arm)
            )
            for arm, version in versions.items()
        }
        return CanaryComparison(
            customer=spec.customer, task=task, metric=metric, champion=arms[CHAMPION_ARM],
            challenger=arms[CHALLENGER_ARM], min_labelled_rows=needed, required_gain=gain, difference=difference,
            verdict=verdict, reason=reason,
        )  # fmt: skip

    if champion_version is None:
        return result(CanaryVerdict.NO_CANARY, f"{spec.customer} has no champion")
    if challenger_version is None or challenger_version == champion_version:
        reason = f"{spec.customer} has no challenger apart from its champion (version {champion_version})"
        return result(CanaryVerdict.NO_CANARY, f"{reason}: nothing is in canary")
    if spec.id_column is None:
        reason = f"{spec.customer} has no id column: a late label cannot find its online answer"
        return result(CanaryVerdict.NO_CANARY, reason)

    answers = labelled_answers(warehouse, spec)
    for arm, version in versions.items():
        mine = answers[(answers["arm"] == arm) & (answers["model_version"].astype(str) == version)]
        labelled[arm] = mine.drop_duplicates("row_id", keep="last")
    if spec.canary_fraction <= 0 and answered.get((CHALLENGER_ARM, challenger_version), 0) == 0:
        reason = f"canary_fraction of {spec.customer} is 0: the challenger answers no rows"
        return result(CanaryVerdict.NO_CANARY, reason)

    thin = [f"{arm} {len(labelled[arm]):,}" for arm in versions if len(labelled[arm]) < needed]
    if thin:
        reason = (
            f"too few labelled online rows to judge ({', '.join(thin)} < {needed:,} per arm, the spec's "
            "min_labelled_rows / min_holdout_rows): ingest the labels of rows served online, then ask again"
        )
        return result(CanaryVerdict.TOO_FEW_LABELS, reason)
    if task == "multiclass" and metric in NEEDS_ALL_PROBABILITIES:
        raise ValueError(
            f"{spec.customer}: the online log keeps each multiclass row's top probability only, so its primary metric "
            f"{metric} cannot be computed from it"
        )

    classes = _classes(spec, labelled)
    outputs = {arm: _output(task, frame, classes) for arm, frame in labelled.items()}
    truths = {arm: _truth(task, frame) for arm, frame in labelled.items()}
    values = {arm: compute_metrics(task, truths[arm], outputs[arm])[metric] for arm in labelled}
    thresholds = spec.thresholds
    difference = unpaired_bootstrap_difference(
        task, metric, truths[CHAMPION_ARM], outputs[CHAMPION_ARM], truths[CHALLENGER_ARM], outputs[CHALLENGER_ARM],
        rounds=thresholds.bootstrap_rounds, confidence=thresholds.confidence, seed=seed,
    )  # fmt: skip
    gain = required_gain(metric, values[CHAMPION_ARM], thresholds)
    verdict, reason = _judge(metric, values, difference, gain, thresholds.floor)
    return result(verdict, reason, values, difference, gain)


def current_canary(
    warehouse: Warehouse, registry: ModelRegistry, spec: CustomerSpec, *, seed: int = 0
) -> CanaryComparison:
    """`compare_arms` for the versions the `champion` and `challenger` aliases point at now."""
    champion = registry.alias_version(spec.model_name, CHAMPION)
    challenger = registry.alias_version(spec.model_name, CHALLENGER)
    return compare_arms(warehouse, spec, champion, challenger, seed=seed)


def promote_if_better(
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: CustomerSpec,
    comparison: CanaryComparison,
    *,
    now: datetime,
    by: str,
    dagster_run_id: str | None = None,
) -> ledger.LedgerEntry | None:
    """Promote the challenger when `comparison` found its arm significantly better, by the approval's moves and
    ledger row (action `approve`, trigger `canary: <by>`); None, and nothing changes, otherwise. Raises
    `deployment.DeploymentError` when an alias moved since the comparison."""
    if not comparison.significant:
        return None
    return deployment.promote_challenger(
        warehouse,
        registry,
        spec,
        comparison.challenger.model_version,
        now=now,
        reasons=f"canary: {comparison.reason}",
        trigger=f"{CANARY_TRIGGER}: {by}",
        expected_champion=comparison.champion.model_version,
        dagster_run_id=dagster_run_id,
    )


def _judge(
    metric: str, values: dict[str, float], difference: DifferenceInterval, gain: float, floor: float | None
) -> tuple[CanaryVerdict, str]:
    level = f"{difference.confidence:.0%}"
    values_text = (
        f"{metric} champion {_format(values[CHAMPION_ARM])}, challenger {_format(values[CHALLENGER_ARM])}"
        + ("" if GREATER_IS_BETTER[metric] else " (lower is better)")
    )
    if not (math.isfinite(difference.low) and math.isfinite(difference.high)):
        reason = f"{values_text}; the {level} interval of the difference could not be estimated"
        return CanaryVerdict.NOT_SIGNIFICANT, reason
    bounds = (
        f"{values_text}; {level} interval of the difference [{_format(difference.low, True)}, "
        f"{_format(difference.high, True)}] ({difference.rounds} unpaired resamples)"
    )
    required = "0" if gain == 0 else f"the required gain of {_format(gain)}"
    if difference.low > gain:
        if floor is not None and not _meets_floor(metric, values[CHALLENGER_ARM], floor):
            return CanaryVerdict.BELOW_FLOOR, f"{bounds} lies above {required}, but misses the floor {_format(floor)}"
        return CanaryVerdict.BETTER, f"{bounds} lies above {required}"
    if difference.high < 0:
        return CanaryVerdict.WORSE, f"{bounds} lies below 0: the challenger is worse online"
    return CanaryVerdict.NOT_SIGNIFICANT, f"{bounds} reaches {required} or below: no significant gain online"


def _meets_floor(metric: str, value: float, floor: float) -> bool:
    compared = comparable_value(metric, value)
    if not math.isfinite(compared):
        return False
    return compared >= floor if GREATER_IS_BETTER[metric] else compared <= floor


def _classes(spec: CustomerSpec, labelled: dict[str, pd.DataFrame]) -> list[str]:
    # Text on both sides: the log holds predictions as text, the landing table labels as the file typed them.
    if spec.label_values:
        values = list(spec.label_values)
    else:
        values = class_values(pd.concat([frame[LABEL] for frame in labelled.values()], ignore_index=True))
    return [str(class_value(value)) for value in values]


def _truth(task: str, frame: pd.DataFrame) -> np.ndarray:
    if task == "regression":
        return frame[LABEL].astype(float).to_numpy()
    return np.array([str(class_value(value)) for value in frame[LABEL]], dtype=object)


def _output(task: str, frame: pd.DataFrame, classes: list[str]) -> ModelOutput:
    if task == "regression":
        return ModelOutput.from_values(frame[PREDICTION].astype(float).to_numpy())
    # serving logs str(class_value(prediction)), the form `_truth` gives the labels.
    predicted = frame[PREDICTION].astype(str).to_numpy(dtype=object)
    classes_array = np.array(classes, dtype=object)
    if task == "binary":
        positive = frame[SCORE].astype(float).to_numpy()
        proba = np.column_stack([1.0 - positive, positive])
    else:
        # Only the top probability is logged: the predicted class carries it, which threshold metrics ignore.
        proba = (predicted[:, None] == classes_array[None, :]).astype(float)
    return ModelOutput(y_pred=predicted, proba=proba, classes=classes_array)


def _format(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:{'+' if signed else ''}.4f}"


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
