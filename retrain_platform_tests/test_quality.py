"""Data-quality suites: each rule catches its problem and names the column and the rule."""

from __future__ import annotations

import gc
import socket
import time
import weakref

import numpy as np
import pandas as pd
import pytest

from retrain_platform.quality import (
    QualityResult,
    features_suite,
    prepare_for_validation,
    training_data_suite,
    validate,
)
from retrain_platform.spec import CustomerSpec, FeatureSpec

NOW = pd.Timestamp("2025-06-01 12:00", tz="UTC")
ROWS = 200
ALLOWED = {"churned": [0, 1], "plan": ["basic", "pro", "team"]}
RANGES = {"monthly_spend": (0.0, 10_000.0)}


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any connection attempt by GX (usage statistics, version checks) is refused and recorded."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield
    assert attempts == [], f"great-expectations tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def spec() -> CustomerSpec:
    return CustomerSpec(
        customer="acme",
        landing_table="acme_events",
        timestamp_column="event_time",
        label_column="churned",
        id_column="account_id",
        features=[
            FeatureSpec(name="monthly_spend", kind="numeric"),
            FeatureSpec(name="seats", kind="numeric"),
            FeatureSpec(name="plan", kind="categorical"),
        ],
        task="binary",
        min_training_rows=50,
    )


@pytest.fixture()
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    times = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 100 * 24 * 3600, ROWS), unit="s")
    return pd.DataFrame(
        {
            "account_id": np.arange(ROWS),
            "event_time": times.strftime("%Y-%m-%dT%H:%M:%S"),
            "churned": rng.integers(0, 2, ROWS),
            "monthly_spend": rng.gamma(2.0, 50.0, ROWS),
            "seats": rng.integers(1, 40, ROWS),
            "plan": rng.choice(ALLOWED["plan"], ROWS),
        }
    )


def check(df: pd.DataFrame, spec: CustomerSpec) -> QualityResult:
    suite = training_data_suite(spec, now=NOW, allowed_categories=ALLOWED, numeric_ranges=RANGES)
    return validate(prepare_for_validation(df, spec), suite)


def only_failure(result: QualityResult, column: str | None, rule: str):
    assert not result.success
    assert [(f.column, f.rule) for f in result.failures] == [(column, rule)], result.failures
    failure = result.failures[0]
    assert rule in failure.message
    if column is not None:
        assert column in failure.message
    return failure


def test_valid_data_passes(frame, spec):
    result = check(frame, spec)

    assert result.success, result.failures
    assert result.failures == []
    suite = training_data_suite(spec, now=NOW, allowed_categories=ALLOWED, numeric_ranges=RANGES)
    assert result.evaluated == len(suite.expectations)
    assert "passed" in result.summary()


def test_datetime_timestamps_with_a_time_zone_pass(frame, spec):
    frame["event_time"] = pd.to_datetime(frame["event_time"]).dt.tz_localize("Europe/Berlin")

    assert check(frame, spec).success


def test_missing_column_is_reported_once(frame, spec):
    result = check(frame.drop(columns=["monthly_spend"]), spec)

    failure = only_failure(result, "monthly_spend", "expect_column_to_exist")
    assert "not in the data" in failure.message


def test_null_label(frame, spec):
    frame["churned"] = frame["churned"].astype(float)
    frame.loc[[3, 9], "churned"] = np.nan

    failure = only_failure(check(frame, spec), "churned", "expect_column_values_to_not_be_null")
    assert "2 of 200" in failure.message


def test_unknown_label_class_fails_even_once(frame, spec):
    frame.loc[5, "churned"] = 2

    failure = only_failure(check(frame, spec), "churned", "expect_column_values_to_be_in_set")
    assert "[2]" in failure.message


def test_out_of_range_numeric(frame, spec):
    frame.loc[11, "monthly_spend"] = 1e9

    failure = only_failure(check(frame, spec), "monthly_spend", "expect_column_values_to_be_between")
    assert "1000000000.0" in failure.message


def test_unknown_category_fails_above_the_mostly_threshold(frame, spec):
    frame.loc[:9, "plan"] = "enterprise"

    failure = only_failure(check(frame, spec), "plan", "expect_column_values_to_be_in_set")
    assert "'enterprise'" in failure.message
    assert "10 of 200" in failure.message


def test_a_rare_unknown_category_is_tolerated(frame, spec):
    frame.loc[0, "plan"] = "enterprise"

    assert check(frame, spec).success


def test_too_few_rows(frame, spec):
    failure = only_failure(check(frame.head(10), spec), None, "expect_table_row_count_to_be_between")
    assert "10 rows" in failure.message
    assert "at least 50" in failure.message


def test_duplicate_ids(frame, spec):
    frame.loc[20, "account_id"] = frame.loc[21, "account_id"]

    failure = only_failure(check(frame, spec), "account_id", "expect_column_values_to_be_unique")
    assert "2 of 200" in failure.message


def test_unparseable_timestamp_string(frame, spec):
    frame.loc[4, "event_time"] = "not a date"

    only_failure(check(frame, spec), "event_time", "expect_column_values_to_not_be_null")
    assert frame.loc[4, "event_time"] == "not a date"


def test_timestamps_in_other_formats_parse(frame, spec):
    frame.loc[0, "event_time"] = "03/15/2025 08:30"
    frame.loc[1, "event_time"] = "2025-03-15 08:30:00+02:00"

    prepared = prepare_for_validation(frame, spec)

    assert prepared.loc[0, "event_time"] == pd.Timestamp("2025-03-15 08:30")
    assert prepared.loc[1, "event_time"] == pd.Timestamp("2025-03-15 06:30")
    assert check(frame, spec).success


def test_timestamp_in_the_future(frame, spec):
    frame.loc[7, "event_time"] = "2031-01-01T00:00:00"

    failure = only_failure(check(frame, spec), "event_time", "expect_column_values_to_be_between")
    assert "2031-01-01" in failure.message


def test_non_numeric_value_in_a_numeric_column(frame, spec):
    frame["seats"] = frame["seats"].astype(object)
    frame.loc[2, "seats"] = "abc"

    failure = only_failure(check(frame, spec), "seats", "expect_column_values_to_be_in_type_list")
    assert "'abc'" in failure.message


def test_a_range_check_that_cannot_run_on_a_mistyped_column_is_not_reported_again(frame, spec):
    frame["monthly_spend"] = frame["monthly_spend"].astype(object)
    frame.loc[2, "monthly_spend"] = "abc"

    only_failure(check(frame, spec), "monthly_spend", "expect_column_values_to_be_in_type_list")


def test_suite_rejects_columns_outside_the_spec(spec):
    with pytest.raises(ValueError, match="numeric_ranges"):
        training_data_suite(spec, now=NOW, numeric_ranges={"monthly_spnd": (0, 1)})


def test_suite_needs_a_completed_spec():
    bare = CustomerSpec(customer="acme", landing_table="t", timestamp_column="ts", label_column="y")

    with pytest.raises(ValueError, match="complete_spec"):
        training_data_suite(bare, now=NOW)


def feature_matrix() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(rng.normal(size=(100, 4)), columns=["f0", "f1", "f2", "f3"])


def test_features_suite_passes_a_finite_matrix():
    matrix = feature_matrix()

    assert validate(matrix, features_suite(list(matrix.columns))).success


def test_features_suite_catches_nan():
    matrix = feature_matrix()
    matrix.loc[5, "f1"] = np.nan

    only_failure(validate(matrix, features_suite(list(matrix.columns))), "f1", "expect_column_values_to_not_be_null")


@pytest.mark.parametrize("infinity", [np.inf, -np.inf])
def test_features_suite_catches_infinity(infinity):
    matrix = feature_matrix()
    matrix.loc[8, "f2"] = infinity

    failure = only_failure(
        validate(matrix, features_suite(list(matrix.columns))), "f2", "expect_column_values_to_be_between"
    )
    assert "finite" in failure.message
    assert "inf" in failure.message


def test_summary_and_metadata_name_the_failing_columns_and_rules(frame, spec):
    frame.loc[5, "churned"] = 2
    frame.loc[20, "account_id"] = frame.loc[21, "account_id"]

    result = check(frame, spec)

    summary = result.summary()
    assert "\n" not in summary
    assert "account_id (expect_column_values_to_be_unique)" in summary
    assert "churned (expect_column_values_to_be_in_set)" in summary
    assert summary.startswith(f"2 of {result.evaluated} expectations failed")
    metadata = result.to_metadata()
    assert metadata["failed_expectations"] == 2
    assert metadata["evaluated_expectations"] == result.evaluated
    table = metadata["failures"].splitlines()
    assert table[0] == "| column | rule | problem |"
    assert len(table) == 4
    assert any("| churned | expect_column_values_to_be_in_set |" in row for row in table)


def test_repeated_validations_do_not_keep_old_frames(frame, spec):
    suite = training_data_suite(spec, now=NOW)
    refs = []
    for _ in range(4):
        prepared = prepare_for_validation(frame.copy(), spec)
        refs.append(weakref.ref(prepared))
        assert validate(prepared, suite).success
        del prepared
    gc.collect()

    # GX's execution engine holds on to the latest batch until the next validation replaces it.
    assert sum(ref() is not None for ref in refs) <= 1


def test_fifty_thousand_rows_validate_well_under_two_seconds():
    rng = np.random.default_rng(0)
    rows = 50_000
    numeric = [f"n{i}" for i in range(15)]
    categorical = [f"c{i}" for i in range(2)]
    wide = CustomerSpec(
        customer="wide",
        landing_table="wide_events",
        timestamp_column="ts",
        label_column="y",
        id_column="id",
        features=[FeatureSpec(name=c, kind="numeric") for c in numeric]
        + [FeatureSpec(name=c, kind="categorical") for c in categorical],
        task="binary",
    )
    df = pd.DataFrame({c: rng.normal(size=rows) for c in numeric})
    for c in categorical:
        df[c] = rng.choice(["a", "b", "c"], rows)
    df["y"] = rng.integers(0, 2, rows)
    df["id"] = np.arange(rows)
    df["ts"] = (pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**7, rows), unit="s")).astype(str)
    suite = training_data_suite(
        wide,
        now=NOW,
        allowed_categories={"y": [0, 1], **{c: ["a", "b", "c"] for c in categorical}},
        numeric_ranges={c: (-10.0, 10.0) for c in numeric},
    )
    validate(prepare_for_validation(df.head(100), wide), suite)

    started = time.perf_counter()
    result = validate(prepare_for_validation(df, wide), suite)
    elapsed = time.perf_counter() - started

    assert result.success, result.failures
    assert elapsed < 2.0
