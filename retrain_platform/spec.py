"""Customer specs: what a customer's data looks like and how its model is judged.

A spec is the only thing the platform needs to know about a tabular dataset. Anything the user does not
say (feature kinds, the task, the primary metric) is inferred from the data by `complete_spec`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CUSTOMER_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

Task = Literal["binary", "multiclass", "regression"]
FeatureKind = Literal["numeric", "categorical"]
Mode = Literal["auto", "approve", "alert"]
# auto: a PROMOTE verdict deploys; approve: it waits for `approve`; alert: nothing moves, an alert says so.
AUTO_MODE: Mode = "auto"
APPROVE_MODE: Mode = "approve"
ALERT_MODE: Mode = "alert"
MODES: tuple[Mode, ...] = (AUTO_MODE, APPROVE_MODE, ALERT_MODE)

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2", "calibration_slope")
DEFAULT_PRIMARY_METRIC = {"binary": "roc_auc", "multiclass": "f1", "regression": "rmse"}

# A numeric label with at most this many distinct values is read as classes, not as a quantity.
MAX_CLASSES_FOR_INFERENCE = 20


class SpecError(ValueError):
    """A spec or a customer id is invalid; the message names the field and the problem."""


def validate_customer_id(customer: str) -> str:
    if not isinstance(customer, str) or not CUSTOMER_ID_PATTERN.fullmatch(customer):
        raise SpecError(
            f"invalid customer id {customer!r}: use 1 to 63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return customer


def validate_identifier(name: str, field: str) -> str:
    """Table names the platform makes itself: only plain identifiers are accepted."""
    if not isinstance(name, str) or not IDENTIFIER_PATTERN.fullmatch(name):
        raise SpecError(f"{field}: {name!r} is not a plain identifier (letters, digits and '_')")
    return name


def validate_column_name(name: str, field: str) -> str:
    """Any name a CSV or Parquet file can hold (spaces, dashes, dots, accents): SQL quotes every column."""
    if not isinstance(name, str) or not name:
        raise SpecError(f"{field}: {name!r} is not a column name (a non-empty text is needed)")
    return name


def case_collision(names: Iterable[str]) -> tuple[str, str] | None:
    """The first two names that differ only by case: DuckDB matches names regardless of case, quoted or not,
    so it cannot store both (it silently renames one, and every later query by name misses it)."""
    seen: dict[str, str] = {}
    for name in names:
        folded = str(name).casefold()
        if folded in seen and seen[folded] != name:
            return seen[folded], str(name)
        seen.setdefault(folded, str(name))
    return None


def case_collision_message(first: str, second: str) -> str:
    return (
        f"columns {first!r} and {second!r} differ only by case, and the warehouse cannot keep both: "
        "rename or drop one of them"
    )


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: FeatureKind
    allowed_values: list[str] | None = None
    min_value: float | None = None
    max_value: float | None = None

    @field_validator("name")
    @classmethod
    def _column_name(cls, value: str) -> str:
        return validate_column_name(value, "name")


class PromotionThresholds(BaseModel):
    """When a challenger may replace the champion (MLflow `MetricThreshold` semantics).

    `floor` is the absolute bound on the primary metric (a minimum, or a maximum for error metrics);
    `min_absolute_change` and `min_relative_change` are the improvement over the champion that a
    challenger must show; `secondary_tolerance` is how much any other metric may get worse;
    `min_holdout_rows` is the smallest holdout on which a challenger may replace a champion (the same 100
    rows a batch's realized metric needs to count).
    """

    model_config = ConfigDict(extra="forbid")

    floor: float | None = None
    min_absolute_change: float = Field(default=0.0, ge=0.0)
    min_relative_change: float = Field(default=0.0, ge=0.0)
    secondary_tolerance: float = Field(default=0.02, ge=0.0)
    min_holdout_rows: int = Field(default=100, ge=1)
    bootstrap_rounds: int = Field(default=500, ge=50, le=20_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)


class DecisionSettings(BaseModel):
    """How a binary model turns a probability into a decision: the cut-off that serves `objective` best on
    the latest training rows is chosen at training and stored with the model.

    `f1` (the default) balances precision and recall; `cost` minimises `false_positive_cost` x false
    positives + `false_negative_cost` x false negatives; `precision` (`recall`) keeps that metric at least
    at `target` and makes the other as high as it can.
    """

    model_config = ConfigDict(extra="forbid")

    objective: Literal["f1", "cost", "precision", "recall"] = "f1"
    false_positive_cost: float = Field(default=1.0, gt=0.0)
    false_negative_cost: float = Field(default=1.0, gt=0.0)
    target: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _target_when_needed(self) -> DecisionSettings:
        if self.objective in ("precision", "recall") and self.target is None:
            raise ValueError(f"decision.objective {self.objective!r} needs decision.target (for example 0.9)")
        return self


class AutomationSettings(BaseModel):
    """When the platform reacts on its own: the retraining triggers, their cooldown and automatic rollback.

    `drift_consecutive_batches` is how many of the latest batches (measured by the current champion) must
    all show dataset drift; `cooldown_hours` is the least time between two trainings, whatever triggered
    them; `new_labels_threshold` is how many labelled rows a training would add before one is requested,
    and `new_labels_share` how many next to the last training set (1.0: as many rows again);
    `performance_drop` is how far (a share of the champion's holdout metric) its metric may fall on each of
    `performance_batches` latest batches before the performance trigger retrains, and half of it on the
    latest batch confirms a drift trigger (unless
    `drift_needs_confirmation` is off: drift alone then retrains);
    `min_labelled_rows` is how many labels a batch needs for its realized metric to count (below it, the
    label-free estimate is used); a freshly promoted champion whose realized primary metric is worse than
    the previous champion's by more than `rollback_tolerance` (in the metric's units) over its first
    `rollback_batches` labelled batches is rolled back; `scheduled_retraining` takes the customer into
    the weekly retraining schedule.
    """

    model_config = ConfigDict(extra="forbid")

    drift_consecutive_batches: int = Field(default=2, ge=1, le=100)
    cooldown_hours: float = Field(default=24.0, ge=0.0)
    new_labels_threshold: int = Field(default=1000, ge=1)
    new_labels_share: float = Field(default=1.0, ge=0.0)
    performance_drop: float = Field(default=0.05, ge=0.0, lt=1.0)
    performance_batches: int = Field(default=2, ge=1, le=100)
    drift_needs_confirmation: bool = True
    min_labelled_rows: int = Field(default=100, ge=1)
    rollback_tolerance: float = Field(default=0.02, ge=0.0)
    rollback_batches: int = Field(default=1, ge=1, le=100)
    scheduled_retraining: bool = True


class CustomerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str
    landing_table: str
    timestamp_column: str
    label_column: str
    id_column: str | None = None
    label_values: list[str | int | bool | float] | None = None
    features: list[FeatureSpec] | None = None
    task: Task | None = None
    primary_metric: str | None = None
    thresholds: PromotionThresholds = Field(default_factory=PromotionThresholds)
    training_window_days: int = Field(default=365, ge=1)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    min_training_rows: int = Field(default=200, ge=10)
    drift_thresholds: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of retrain_platform.drift.DriftThresholds, including per_feature ones",
    )
    mode: Mode = AUTO_MODE
    decision: DecisionSettings = Field(default_factory=DecisionSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    canary_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of online rows (by a stable hash of the row id) the challenger awaiting promotion answers",
    )
    labelling_queue_size: int = Field(
        default=50,
        ge=0,
        le=100_000,
        description="rows of each scored batch queued for experts to label, those the model is least sure of (0: none)",
    )
    source_table: str | None = Field(
        default=None,
        description="a table or view of the warehouse that an outside loader appends rows to: the rows appended "
        "since the last batch become a batch (`warehouse_source_sensor`), no file needed",
    )
    source_watermark_column: str | None = Field(
        default=None,
        description="the column of `source_table` that grows with every load (a load time or a sequence number); "
        "the timestamp column when unset",
    )
    source_batch_rows: int = Field(
        default=200_000,
        ge=1,
        description="the most rows of `source_table` one batch takes (more when rows share the last watermark "
        "value); a larger backlog becomes several batches, one per sensor tick",
    )

    @field_validator("customer")
    @classmethod
    def _customer_id(cls, value: str) -> str:
        return validate_customer_id(value)

    @field_validator("landing_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        return validate_identifier(value, "landing_table")

    @field_validator("timestamp_column", "label_column", "id_column", "source_table", "source_watermark_column")
    @classmethod
    def _column_names(cls, value: str | None, info) -> str | None:
        return None if value is None else validate_column_name(value, info.field_name)

    @field_validator("drift_thresholds")
    @classmethod
    def _drift_thresholds(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Imported here: drift pulls in scipy, which the many light users of this module do not need.
        from retrain_platform.drift import DriftThresholds

        try:
            DriftThresholds.model_validate(value)
        except ValidationError as exc:
            raise ValueError(_one_line(exc, prefix="drift_thresholds")) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CustomerSpec:
        reserved = {self.timestamp_column, self.label_column, self.id_column} - {None}
        if self.features is not None:
            names = [f.name for f in self.features]
            if len(set(names)) != len(names):
                raise ValueError("features: a column is listed twice")
            clash = reserved.intersection(names)
            if clash:
                raise ValueError(f"features: {sorted(clash)} is also the timestamp, label or id column")
            if not names:
                raise ValueError("features: at least one feature column is needed")
            collision = case_collision([*sorted(reserved), *names])
            if collision:
                raise ValueError(f"features: {case_collision_message(*collision)}")
        if self.source_table is not None and self.source_table.casefold() == self.landing_table.casefold():
            raise ValueError("source_table: it is the landing table; name the table the outside loader appends to")
        if self.primary_metric is not None:
            allowed = REGRESSION_METRICS if self.task == "regression" else CLASSIFICATION_METRICS
            if self.task is None:
                allowed = CLASSIFICATION_METRICS + REGRESSION_METRICS
            if self.primary_metric not in allowed:
                raise ValueError(f"primary_metric: {self.primary_metric!r} is not one of {list(allowed)}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features or []]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features or [] if f.kind == "numeric"]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features or [] if f.kind == "categorical"]

    @property
    def kinds(self) -> dict[str, str]:
        return {f.name: f.kind for f in self.features or []}

    @property
    def allowed_categories(self) -> dict[str, list]:
        """Declared value sets: for categorical features, and for the label of a classification task."""
        allowed: dict[str, list] = {f.name: f.allowed_values for f in self.features or [] if f.allowed_values}
        if self.label_values:
            allowed[self.label_column] = list(self.label_values)
        return allowed

    @property
    def numeric_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        return {
            f.name: (f.min_value, f.max_value)
            for f in self.features or []
            if f.min_value is not None or f.max_value is not None
        }

    @property
    def model_name(self) -> str:
        """The registered MLflow model that holds this customer's versions."""
        return f"retrain-{self.customer}"


def parse_spec(data: dict) -> CustomerSpec:
    """Validate a spec from plain data; the error names the field that is wrong."""
    try:
        return CustomerSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError("invalid customer spec: " + _one_line(exc)) from None


def _one_line(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as `field: problem; field: problem`, without its multi-line layout."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in [prefix, *error["loc"]] if part != "")
        message = " ".join(error["msg"].removeprefix("Value error, ").split())
        head, _, rest = message.partition(": ")
        if not where and rest:
            where, message = head, rest  # a check of the whole spec names its field in its message
        elif rest and (where == head or where.endswith(f".{head}")):
            message = rest
        where = where or "spec"
        # A nested model's own validation already names the full path of each field.
        problems.append(message if message.startswith(f"{where}.") else f"{where}: {message}")
    return "; ".join(problems)


def infer_task(labels: pd.Series) -> Task:
    labels = labels.dropna()
    distinct = labels.nunique()
    if distinct < 2:
        raise SpecError(f"label_column: the label has {distinct} distinct value(s); at least 2 are needed")
    if distinct == 2:
        return "binary"
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    if numeric:
        integral = bool((labels == labels.round()).all())
        if not integral or distinct > MAX_CLASSES_FOR_INFERENCE:
            return "regression"
    return "multiclass"


def infer_kind(values: pd.Series) -> FeatureKind:
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "categorical"
    return "numeric"


def complete_spec(spec: CustomerSpec, sample: pd.DataFrame) -> CustomerSpec:
    """Fill in what the spec left out (features, kinds, task, primary metric) from a data sample."""
    reserved = {spec.timestamp_column, spec.label_column, spec.id_column} - {None}
    for field, column in (
        ("timestamp_column", spec.timestamp_column),
        ("label_column", spec.label_column),
        ("id_column", spec.id_column),
    ):
        if column is not None and column not in sample.columns:
            raise SpecError(f"{field}: column {column!r} is not in the data (columns: {list(sample.columns)})")
    if spec.features is None:
        features = [
            {"name": column, "kind": infer_kind(sample[column])} for column in sample.columns if column not in reserved
        ]
        if not features:
            raise SpecError("features: the data has no column besides the timestamp, label and id")
    else:
        missing = [f.name for f in spec.features if f.name not in sample.columns]
        if missing:
            raise SpecError(f"features: column(s) {missing} are not in the data")
        features = [f.model_dump() for f in spec.features]
    task = spec.task or infer_task(sample[spec.label_column])
    primary = spec.primary_metric or DEFAULT_PRIMARY_METRIC[task]
    label_values = spec.label_values
    if label_values is None and task != "regression":
        label_values = class_values(sample[spec.label_column])
    return parse_spec(
        {
            **spec.model_dump(),
            "features": features,
            "task": task,
            "primary_metric": primary,
            "label_values": label_values,
        }
    )


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds: `3`, not `np.int64(3)`, in every message a user reads."""
    return value.item() if isinstance(value, np.generic) else value


def class_value(value: Any) -> str | int | float | bool:
    """A label as a plain value: 1.0 (an integer label read back as a float next to a NULL) is the class 1."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else float(value)
    return str(value)


def class_values(labels: pd.Series) -> list[str | int | float | bool]:
    """The distinct classes of a label column, as plain values, sorted."""
    values = {class_value(value) for value in labels.dropna().unique()}
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)
