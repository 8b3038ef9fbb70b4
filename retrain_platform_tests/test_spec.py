"""Customer specs: ids and identifiers that reach SQL and Dagster, field-named errors, and inference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain_platform.spec import (
    DEFAULT_PRIMARY_METRIC,
    MAX_CLASSES_FOR_INFERENCE,
    CustomerSpec,
    SpecError,
    complete_spec,
    infer_kind,
    infer_task,
    parse_spec,
    validate_customer_id,
    validate_identifier,
)

BASE = {
    "customer": "acme",
    "landing_table": "acme_events",
    "timestamp_column": "event_time",
    "label_column": "churned",
}


def spec_data(**changes) -> dict:
    data = {**BASE, **changes}
    return {key: value for key, value in data.items() if value is not None}


def sample(rows: int = 60, **columns) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "event_time": pd.date_range("2025-01-01", periods=rows, freq="h"),
            "monthly_fee": rng.normal(30, 5, rows).round(2),
            "seats": rng.integers(1, 50, rows),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "autopay": rng.random(rows) < 0.5,
            "churned": np.arange(rows) % 2,
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


# --- customer ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("customer", ["acme", "a", "7eleven", "acme-corp_eu", "a" * 63, "x-1_2"])
def test_valid_customer_ids_are_returned_unchanged(customer):
    assert validate_customer_id(customer) == customer


@pytest.mark.parametrize(
    "customer",
    [
        "Acme",  # upper case: Dagster keys and MLflow names would differ in case only
        "-x",
        "_x",
        "a|b",  # breaks multi-partition keys
        "a,b",  # breaks UI backfills
        "x'; drop table customer_specs; --",
        "a b",
        "a.b",
        "a/b",
        "a" * 64,
        "",
    ],
)
def test_invalid_customer_ids_raise_a_clear_spec_error(customer):
    with pytest.raises(SpecError) as raised:
        validate_customer_id(customer)
    message = str(raised.value)
    assert "invalid customer id" in message
    assert repr(customer) in message
    assert "1 to 63 characters" in message


@pytest.mark.parametrize("customer", [None, 42, b"acme"])
def test_customer_id_must_be_a_string(customer):
    with pytest.raises(SpecError, match="invalid customer id"):
        validate_customer_id(customer)


def test_customer_id_with_a_trailing_newline_is_rejected():
    with pytest.raises(SpecError):
        validate_customer_id("acme\n")


@pytest.mark.parametrize("name", ["events", "MonthlyFee", "_private", "t1", "a" * 128])
def test_plain_identifiers_are_accepted(name):
    assert validate_identifier(name, "landing_table") == name


@pytest.mark.parametrize("name", ["my table", "1events", 'a"b', "a;b", "a-b", "", "a" * 129, "schema.table"])
def test_identifiers_that_are_not_plain_are_rejected_naming_the_field(name):
    with pytest.raises(SpecError, match=r"^landing_table: .* is not a plain identifier"):
        validate_identifier(name, "landing_table")


def test_identifier_with_a_trailing_newline_is_rejected():
    with pytest.raises(SpecError):
        validate_identifier("events\n", "landing_table")


# --- parse_spec ---------------------------------------------------------------------------------------


def test_parse_spec_applies_defaults():
    spec = parse_spec(spec_data())
    assert isinstance(spec, CustomerSpec)
    assert spec.mode == "auto"
    assert spec.training_window_days == 365
    assert spec.holdout_fraction == 0.2
    assert spec.features is None and spec.task is None and spec.primary_metric is None
    assert spec.thresholds.confidence == 0.95
    assert spec.model_name == "retrain-acme"


def test_parse_spec_round_trips_through_json():
    spec = parse_spec(
        spec_data(
            features=[{"name": "plan", "kind": "categorical", "allowed_values": ["basic", "pro"]}],
            task="binary",
            label_values=[0, 1],
            thresholds={"floor": 0.7, "min_absolute_change": 0.01},
        )
    )
    assert parse_spec(spec.model_dump(mode="json")) == spec
    assert spec.allowed_categories == {"plan": ["basic", "pro"], "churned": [0, 1]}


def _error(data: dict) -> str:
    with pytest.raises(SpecError) as raised:
        parse_spec(data)
    message = str(raised.value)
    assert message.startswith("invalid customer spec: ")
    return message


def test_missing_label_column_names_the_field():
    message = _error(spec_data(label_column=None))
    assert "label_column: Field required" in message


def test_unknown_mode_names_the_field_and_the_choices():
    message = _error(spec_data(mode="sometimes"))
    assert "mode:" in message
    assert "'auto', 'approve' or 'alert'" in message


def test_negative_training_window_names_the_field():
    message = _error(spec_data(training_window_days=-5))
    assert "training_window_days: Input should be greater than or equal to 1" in message


def test_holdout_fraction_out_of_range_names_the_field():
    assert "holdout_fraction:" in _error(spec_data(holdout_fraction=0.95))


def test_nested_threshold_errors_name_the_path():
    assert "thresholds.confidence:" in _error(spec_data(thresholds={"confidence": 1.5}))


def test_a_feature_listed_twice_is_rejected():
    features = [{"name": "plan", "kind": "categorical"}, {"name": "plan", "kind": "numeric"}]
    assert "features: a column is listed twice" in _error(spec_data(features=features))


def test_a_feature_that_is_the_label_is_rejected():
    features = [{"name": "plan", "kind": "categorical"}, {"name": "churned", "kind": "numeric"}]
    message = _error(spec_data(features=features))
    assert "features: ['churned'] is also the timestamp, label or id column" in message


def test_an_empty_feature_list_is_rejected():
    assert "at least one feature column" in _error(spec_data(features=[]))


def test_unknown_feature_kind_names_the_field():
    message = _error(spec_data(features=[{"name": "plan", "kind": "text"}]))
    assert "features.0.kind:" in message


@pytest.mark.parametrize("name", ["air temp", "wind-speed", "rel. humidity", "coût €", 'say "hi"', "Plan"])
def test_any_column_name_a_file_can_hold_is_a_valid_feature_and_label(name):
    spec = parse_spec(spec_data(label_column=f"{name} label", features=[{"name": name, "kind": "numeric"}]))
    assert spec.feature_names == [name]
    assert spec.label_column == f"{name} label"


def test_an_empty_feature_name_is_rejected_in_one_line_naming_the_field():
    message = _error(spec_data(features=[{"name": "", "kind": "numeric"}]))
    assert message == "invalid customer spec: features.0.name: '' is not a column name (a non-empty text is needed)"


def test_columns_differing_only_by_case_are_rejected_naming_both():
    message = _error(spec_data(features=[{"name": "plan", "kind": "categorical"}, {"name": "Plan", "kind": "numeric"}]))
    assert message == (
        "invalid customer spec: features: columns 'plan' and 'Plan' differ only by case, and the warehouse "
        "cannot keep both: rename or drop one of them"
    )


def test_invalid_drift_thresholds_are_rejected_in_one_line_naming_the_field():
    message = _error(spec_data(drift_thresholds={"dataset_share": "most", "bins": 3}))
    assert "\n" not in message
    assert message.startswith("invalid customer spec: drift_thresholds.dataset_share: ")
    assert "drift_thresholds.bins: " in message and "pydantic" not in message


def test_primary_metric_must_suit_the_task():
    message = _error(spec_data(task="binary", primary_metric="rmse"))
    assert "primary_metric: 'rmse' is not one of" in message
    assert "roc_auc" in message
    message = _error(spec_data(task="regression", primary_metric="roc_auc"))
    assert "primary_metric: 'roc_auc' is not one of" in message


def test_a_metric_no_task_knows_is_rejected_even_without_a_task():
    assert "primary_metric: 'auc' is not one of" in _error(spec_data(primary_metric="auc"))


def test_non_identifier_landing_table_names_the_field():
    message = _error(spec_data(landing_table="my table"))
    assert "landing_table" in message and "'my table' is not a plain identifier" in message


def test_invalid_customer_in_a_spec_names_the_field():
    assert "customer: invalid customer id 'Acme'" in _error(spec_data(customer="Acme"))


def test_unknown_keys_are_rejected():
    assert "labels: Extra inputs are not permitted" in _error(spec_data(labels="churned"))


def test_every_problem_is_reported_at_once():
    message = _error(spec_data(mode="sometimes", training_window_days=0))
    assert "mode:" in message and "training_window_days:" in message


# --- inference ----------------------------------------------------------------------------------------


def test_complete_spec_infers_features_and_kinds_from_the_data():
    spec = complete_spec(parse_spec(spec_data()), sample())
    assert spec.feature_names == ["monthly_fee", "seats", "plan", "autopay"]
    assert spec.kinds == {
        "monthly_fee": "numeric",
        "seats": "numeric",
        "plan": "categorical",
        "autopay": "categorical",  # bools are categories, not 0/1 quantities
    }
    assert spec.numeric_features == ["monthly_fee", "seats"]
    assert spec.categorical_features == ["plan", "autopay"]
    assert spec.task == "binary"
    assert spec.primary_metric == "roc_auc"


@pytest.mark.parametrize(
    "labels, classes",
    [
        (np.arange(60) % 2, [0, 1]),
        (np.where(np.arange(60) % 3 == 0, np.nan, np.arange(60) % 2), [0, 1]),  # 0.0/1.0 next to NULLs
        (np.array(["yes", "no", "maybe"] * 20), ["maybe", "no", "yes"]),
        (np.arange(60) % 2 == 0, [False, True]),
    ],
    ids=["ints", "floats-with-nulls", "text", "bools"],
)
def test_complete_spec_records_the_classes_of_a_classification_label(labels, classes):
    spec = complete_spec(parse_spec(spec_data()), sample(churned=labels))
    assert spec.label_values == classes
    assert parse_spec(spec.model_dump(mode="json")).label_values == classes


def test_complete_spec_records_no_classes_for_regression():
    spec = complete_spec(parse_spec(spec_data()), sample(churned=np.linspace(0, 100, 60)))
    assert spec.task == "regression" and spec.label_values is None


def test_complete_spec_leaves_out_the_id_column():
    frame = sample(account_id=[f"A{i}" for i in range(60)])
    spec = complete_spec(parse_spec(spec_data(id_column="account_id")), frame)
    assert "account_id" not in spec.feature_names
    assert "event_time" not in spec.feature_names and "churned" not in spec.feature_names


def test_complete_spec_keeps_what_the_user_declared():
    declared = parse_spec(
        spec_data(
            features=[{"name": "seats", "kind": "categorical"}],
            task="multiclass",
            primary_metric="accuracy",
        )
    )
    spec = complete_spec(declared, sample())
    assert spec.kinds == {"seats": "categorical"}
    assert spec.task == "multiclass" and spec.primary_metric == "accuracy"


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (pd.Series([1.5, 2.0, np.nan]), "numeric"),
        (pd.Series([1, 2, 3]), "numeric"),
        (pd.Series([True, False, True]), "categorical"),
        (pd.Series(["a", "b", None]), "categorical"),
        (pd.Series(["a", "b"], dtype="string"), "categorical"),
        (pd.Series(["a", "b"], dtype="category"), "categorical"),
        (pd.Series(pd.array([1, None], dtype="Int64")), "numeric"),
    ],
)
def test_infer_kind(values, kind):
    assert infer_kind(values) == kind


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        ([0, 1, 1, 0], "binary"),
        ([True, False, True], "binary"),
        (["yes", "no", "no"], "binary"),
        ([0.0, 1.0, np.nan, 1.0], "binary"),
        (["low", "medium", "high", "low"], "multiclass"),
        ([0, 1, 2, 3, 4, 2], "multiclass"),
        (list(range(MAX_CLASSES_FOR_INFERENCE)), "multiclass"),
        (list(range(MAX_CLASSES_FOR_INFERENCE + 1)), "regression"),
        ([12.5, 30.1, 7.25, 19.0], "regression"),
        ([1.0, 2.0, 2.5], "regression"),
    ],
)
def test_infer_task(labels, task):
    assert infer_task(pd.Series(labels)) == task


@pytest.mark.parametrize(
    ("label", "task", "metric"),
    [
        (np.arange(60) % 2, "binary", "roc_auc"),
        (np.array(["gold", "silver", "bronze"] * 20), "multiclass", "f1"),
        (np.arange(60) % 4, "multiclass", "f1"),
        (np.linspace(0.5, 99.5, 60), "regression", "rmse"),
    ],
)
def test_complete_spec_infers_task_and_default_primary_metric(label, task, metric):
    spec = complete_spec(parse_spec(spec_data()), sample(churned=label))
    assert (spec.task, spec.primary_metric) == (task, metric)
    assert DEFAULT_PRIMARY_METRIC[task] == metric


def test_a_declared_metric_that_does_not_suit_the_inferred_task_is_rejected():
    declared = parse_spec(spec_data(primary_metric="rmse"))  # fine until the task is known
    with pytest.raises(SpecError, match="primary_metric: 'rmse' is not one of"):
        complete_spec(declared, sample())


def test_a_label_with_one_distinct_value_is_rejected():
    with pytest.raises(SpecError, match="label_column: the label has 1 distinct value"):
        complete_spec(parse_spec(spec_data()), sample(churned=np.ones(60, dtype=int)))


def test_an_all_missing_label_is_rejected():
    with pytest.raises(SpecError, match="label_column: the label has 0 distinct value"):
        complete_spec(parse_spec(spec_data()), sample(churned=np.full(60, np.nan)))


@pytest.mark.parametrize(
    ("change", "field", "column"),
    [
        ({"label_column": "cancelled"}, "label_column", "cancelled"),
        ({"timestamp_column": "created_at"}, "timestamp_column", "created_at"),
        ({"id_column": "account_id"}, "id_column", "account_id"),
    ],
)
def test_complete_spec_names_a_missing_column(change, field, column):
    with pytest.raises(SpecError, match=rf"^{field}: column '{column}' is not in the data"):
        complete_spec(parse_spec(spec_data(**change)), sample())


def test_complete_spec_names_missing_feature_columns():
    declared = parse_spec(spec_data(features=[{"name": "plan", "kind": "categorical"}, {"name": "region", "kind": "categorical"}]))
    with pytest.raises(SpecError, match=r"features: column\(s\) \['region'\] are not in the data"):
        complete_spec(declared, sample())


def test_complete_spec_needs_a_feature_column():
    with pytest.raises(SpecError, match="features: the data has no column besides"):
        complete_spec(parse_spec(spec_data()), sample()[["event_time", "churned"]])
