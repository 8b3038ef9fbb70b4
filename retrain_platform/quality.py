"""Data-quality gates: great-expectations suites for training data and for the feature matrix.

The suites are real great-expectations 1.x `ExpectationSuite`s, validated against an in-memory
(ephemeral) context that is created once per process. `validate` turns GX's result into a
`QualityResult` that the Dagster layer can show as an asset check without knowing anything about GX.

Typical use::

    suite = training_data_suite(spec, now=pd.Timestamp.now(tz="UTC"))
    result = validate(prepare_for_validation(df, spec), suite)

great_expectations is imported inside functions because importing it costs seconds.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain_platform.spec import CustomerSpec

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

# Names GX resolves for the pandas backend: numpy dtypes, pandas nullable dtypes (checked on the
# column's dtype) and the Python types `int` / `float` (checked value by value on object columns).
NUMERIC_TYPE_NAMES = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
    "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64",
    "int", "float",
)  # fmt: skip

# New categories are expected now and then (the encoder ignores them); a flood of them is not.
CATEGORY_MOSTLY = 0.99

# Any finite float lies within these bounds, so only +inf / -inf fall outside.
_FINITE_BOUND = float(np.finfo(np.float64).max)

# The rules in a person's words, where the expectation's name does not say it.
FINITE_RULE = "values must be finite"
NOT_IN_FUTURE_RULE = "timestamps must not be in the future"

_DATA_SOURCE_NAME = "retrain_platform_quality"
_RESULT_FORMAT = "BASIC"
_EXAMPLES_SHOWN = 5
_SUMMARY_FAILURES_SHOWN = 3

# The data source's execution engine keeps one "active batch", so two threads validating at
# the same time could compute metrics on each other's frame.
_VALIDATION_LOCK = threading.Lock()


@dataclass(frozen=True)
class Failure:
    """One failed expectation: `column` is None for table-level rules such as the row count."""

    column: str | None
    rule: str
    message: str
    # What the rule asks, in a person's words ("values must be finite").
    requirement: str = ""


@dataclass
class QualityResult:
    """The outcome of validating one frame against one suite."""

    success: bool
    failures: list[Failure] = field(default_factory=list)
    evaluated: int = 0

    def summary(self) -> str:
        """One line for an asset check description: the first failing columns and their rules."""
        if self.success:
            return f"all {self.evaluated} expectations passed"
        shown = "; ".join(
            f"{failure.column or 'table'} ({failure.rule})" + (f" {failure.requirement}" if failure.requirement else "")
            for failure in self.failures[:_SUMMARY_FAILURES_SHOWN]
        )
        more = len(self.failures) - _SUMMARY_FAILURES_SHOWN
        suffix = f" and {more} more" if more > 0 else ""
        return f"{len(self.failures)} of {self.evaluated} expectations failed: {shown}{suffix}"

    def to_metadata(self) -> dict[str, Any]:
        """Plain values for Dagster metadata; `failures` is a markdown table."""
        return {
            "failures": _markdown_table(self.failures),
            "failed_expectations": len(self.failures),
            "evaluated_expectations": self.evaluated,
        }


def training_data_suite(
    spec: CustomerSpec,
    *,
    now: pd.Timestamp,
    allowed_categories: dict[str, list] | None = None,
    numeric_ranges: dict[str, tuple[float, float]] | None = None,
    labels_required: bool = True,
    min_rows: int | None = None,
) -> ExpectationSuite:
    """The expectations a customer's training data must meet before a model is trained on it.

    With `labels_required=False` and `min_rows=1` the same suite guards an inference batch, whose labels
    may come later.

    Validate the frame returned by `prepare_for_validation`, not the raw frame: the timestamp
    checks rely on timestamps being parsed (unparseable ones become NaT and fail the not-null rule)
    and on naive UTC times, which `now` is converted to as well (a naive `now` is read as UTC).

    `allowed_categories` maps a column to its known values: the label must stay within them
    exactly, any other column for at least `CATEGORY_MOSTLY` of its rows. `numeric_ranges` maps
    a column to its inclusive (min, max). Both may only name columns of the spec.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    if spec.features is None:
        raise ValueError(f"spec for {spec.customer!r} has no features: complete it with complete_spec first")
    allowed_categories = allowed_categories or {}
    numeric_ranges = numeric_ranges or {}
    columns = _spec_columns(spec)
    for argument, mapping in (("allowed_categories", allowed_categories), ("numeric_ranges", numeric_ranges)):
        unknown = sorted(set(mapping) - set(columns))
        if unknown:
            raise ValueError(f"{argument}: {unknown} are not columns of the spec for {spec.customer!r}")

    expectations: list = [gxe.ExpectColumnToExist(column=column) for column in columns]
    expectations.append(
        gxe.ExpectTableRowCountToBeBetween(min_value=spec.min_training_rows if min_rows is None else min_rows)
    )
    numeric_columns = spec.numeric_features + ([spec.label_column] if spec.task == "regression" else [])
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=list(NUMERIC_TYPE_NAMES))
        for column in numeric_columns
    ]
    # An infinity passes the type rule but no scaler or model takes it: one such row fails a whole training.
    # A declared range with both bounds already refuses one.
    bounded = {column for column, (low, high) in numeric_ranges.items() if low is not None and high is not None}
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=column, min_value=-_FINITE_BOUND, max_value=_FINITE_BOUND)
        for column in numeric_columns
        if column not in bounded
    ]
    if labels_required:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=spec.label_column))
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column=spec.timestamp_column),
        gxe.ExpectColumnValuesToBeBetween(column=spec.timestamp_column, max_value=_naive_utc(now)),
    ]
    if spec.id_column is not None:
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=spec.id_column),
            gxe.ExpectColumnValuesToBeUnique(column=spec.id_column),
        ]
    for column, values in allowed_categories.items():
        mostly = 1.0 if column == spec.label_column else CATEGORY_MOSTLY
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values), mostly=mostly))
    for column, (low, high) in numeric_ranges.items():
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
    purpose = "training_data" if labels_required else "inference_batch"
    return gx.ExpectationSuite(name=f"{purpose}_{spec.customer}", expectations=expectations)


def validate_customer_rows(
    rows: pd.DataFrame, spec: CustomerSpec, *, now: pd.Timestamp, labels_required: bool = True
) -> QualityResult:
    """Validate training rows (or, without the label rule, an inference batch) against the spec's suite,
    with the categories and ranges the spec declares."""
    allowed = spec.allowed_categories
    if not labels_required:
        allowed = {column: values for column, values in allowed.items() if column != spec.label_column}
    suite = training_data_suite(
        spec,
        now=now,
        allowed_categories=allowed or None,
        numeric_ranges=spec.numeric_ranges or None,
        labels_required=labels_required,
        min_rows=None if labels_required else 1,
    )
    return validate(prepare_for_validation(rows, spec), suite)


def features_suite(feature_names: list[str]) -> ExpectationSuite:
    """The transformed feature matrix must hold every feature, with no NaN and no infinity."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list = []
    for name in feature_names:
        expectations += [
            gxe.ExpectColumnToExist(column=name),
            gxe.ExpectColumnValuesToNotBeNull(column=name),
            gxe.ExpectColumnValuesToBeBetween(column=name, min_value=-_FINITE_BOUND, max_value=_FINITE_BOUND),
        ]
    return gx.ExpectationSuite(name="features", expectations=expectations)


def prepare_for_validation(df: pd.DataFrame, spec: CustomerSpec) -> pd.DataFrame:
    """The frame `training_data_suite` expects: `df` with its timestamp column parsed.

    Timestamps may arrive as datetimes or as strings. They become naive UTC datetimes; a value that
    cannot be parsed becomes NaT, which the suite's not-null rule reports. `df` is not modified.
    """
    if spec.timestamp_column not in df.columns:
        return df
    prepared = df.copy(deep=False)
    prepared[spec.timestamp_column] = _parse_timestamps(df[spec.timestamp_column])
    return prepared


def validate(df: pd.DataFrame, suite: ExpectationSuite) -> QualityResult:
    """Validate `df` against `suite` in the shared ephemeral GX context."""
    batch_definition = _batch_definition()
    with _VALIDATION_LOCK:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        outcome = batch.validate(suite, result_format=_RESULT_FORMAT)
    return _quality_result(outcome, suite)


@functools.cache
def _batch_definition() -> BatchDefinition:
    """The whole-dataframe batch definition of a process-wide ephemeral context, made once."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    asset = context.data_sources.add_pandas(_DATA_SOURCE_NAME).add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole_frame")


def _spec_columns(spec: CustomerSpec) -> list[str]:
    columns = [spec.timestamp_column, spec.label_column]
    if spec.id_column is not None:
        columns.append(spec.id_column)
    return columns + spec.feature_names


def _naive_utc(moment: pd.Timestamp) -> pd.Timestamp:
    moment = pd.Timestamp(moment)
    return moment if moment.tzinfo is None else moment.tz_convert("UTC").tz_localize(None)


def _parse_timestamps(values: pd.Series) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    # Cheapest first: ISO 8601, then one format inferred from the data, and only what both reject
    # is parsed element by element, which is much slower.
    for date_format in ("ISO8601", None, "mixed"):
        retry = parsed.isna() & values.notna()
        if not retry.any():
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            parsed[retry] = pd.to_datetime(values[retry], errors="coerce", utc=True, format=date_format)
    return parsed.dt.tz_localize(None)


def _quality_result(outcome: ExpectationSuiteValidationResult, suite: ExpectationSuite) -> QualityResult:
    order = {_expectation_key(e.configuration): i for i, e in enumerate(suite.expectations)}
    failed = [result for result in outcome.results if not result.success]
    # GX returns results grouped by its own plan; reports read better in the suite's order.
    failed.sort(key=lambda r: order.get(_expectation_key(r.expectation_config), len(order)))
    # A rule that crashed on a column already reported missing or mistyped adds only noise.
    explained = {
        r.expectation_config.kwargs.get("column")
        for r in failed
        if r.expectation_config.type in ("expect_column_to_exist", "expect_column_values_to_be_in_type_list")
    }
    failures = [
        _failure(result)
        for result in failed
        if _exception_message(result) is None or result.expectation_config.kwargs.get("column") not in explained
    ]
    return QualityResult(
        success=bool(outcome.success),
        failures=failures,
        evaluated=int(outcome.statistics["evaluated_expectations"]),
    )


def _expectation_key(config: ExpectationConfiguration) -> tuple[str, str]:
    return config.type, repr(sorted((k, v) for k, v in config.kwargs.items() if k != "batch_id"))


def _exception_message(result: ExpectationValidationResult) -> str | None:
    info = result.exception_info or {}
    # GX reports one flat dict, or one dict per metric that failed to compute.
    candidates = [info] if "raised_exception" in info else list(info.values())
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate.get("raised_exception"):
            return str(candidate.get("exception_message") or "unknown error")
    return None


def _failure(result: ExpectationValidationResult) -> Failure:
    config = result.expectation_config
    column = config.kwargs.get("column")
    expected = _expected(config.type, config.kwargs)
    observed = _observed(result, config.type, config.kwargs)
    where = f"column {column!r}" if column is not None else "table"
    return Failure(
        column=column,
        rule=config.type,
        message=f"{where}: {config.type} failed ({expected}): {observed}",
        requirement=expected,
    )


def _expected(rule: str, kwargs: dict) -> str:
    if rule == "expect_column_to_exist":
        return "the column must exist"
    if rule == "expect_column_values_to_not_be_null":
        return "no nulls allowed"
    if rule == "expect_column_values_to_be_unique":
        return "values must be unique"
    if rule == "expect_column_values_to_be_in_type_list":
        return "values must be numeric"
    if rule == "expect_column_values_to_be_in_set":
        return f"values must be in {_preview(kwargs.get('value_set') or [])}{_mostly(kwargs)}"
    if rule == "expect_table_row_count_to_be_between":
        return f"rows must be {_bounds(kwargs)}"
    if rule == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if low == -_FINITE_BOUND and high == _FINITE_BOUND:
            return FINITE_RULE
        if low is None and _is_moment(high):
            return f"{NOT_IN_FUTURE_RULE} (at most {high})"
        return f"values must be {_bounds(kwargs)}"
    return f"expected {kwargs}"


def _observed(result: ExpectationValidationResult, rule: str, kwargs: dict) -> str:
    error = _exception_message(result)
    if error is not None:
        return f"the check could not run: {error}"
    details = result.result or {}
    if "unexpected_count" in details:
        count = details["unexpected_count"]
        total = details.get("element_count")
        percent = details.get("unexpected_percent") or 0.0
        text = f"{count} of {total} values unexpected ({percent:.3g}%)"
        examples = _distinct(details.get("partial_unexpected_list") or [])
        if examples and rule != "expect_column_values_to_not_be_null":
            text += f", e.g. {_preview(examples)}"
        return text
    if "observed_value" in details:
        observed = details["observed_value"]
        if rule == "expect_column_values_to_be_in_type_list":
            return f"column type is {_plain(observed)!r}"
        if rule == "expect_table_row_count_to_be_between":
            return f"{observed} rows"
        return f"observed {_plain(observed)!r}"
    if rule == "expect_column_to_exist":
        return f"column {kwargs.get('column')!r} is not in the data"
    return "failed"


def _is_moment(value: Any) -> bool:
    # GX may hand the bound back as the timestamp it was given or as its ISO text.
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "isoformat"):
        return True
    return isinstance(value, str) and not pd.isna(pd.to_datetime(value, errors="coerce"))


def _bounds(kwargs: dict) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _mostly(kwargs: dict) -> str:
    mostly = kwargs.get("mostly")
    return "" if mostly is None or mostly >= 1.0 else f" for at least {mostly:.0%} of rows"


def _distinct(values: list) -> list:
    seen: list = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _preview(values: list) -> str:
    shown = ", ".join(repr(_plain(value)) for value in list(values)[:_EXAMPLES_SHOWN])
    return f"[{shown}, ...]" if len(values) > _EXAMPLES_SHOWN else f"[{shown}]"


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return str(value)
    return value.item() if isinstance(value, np.generic) else value


def _markdown_table(failures: list[Failure]) -> str:
    if not failures:
        return "No failed expectations."
    rows = ["| column | rule | problem |", "| --- | --- | --- |"]
    for failure in failures:
        cells = (failure.column or "(table)", failure.rule, failure.message)
        rows.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(rows)
