"""Data profile: exact counts and quantiles, associations that find leakage and ignore noise, label balance
per period, the three tasks, sampling that keeps row counts exact, and the JSON, markdown and chart outputs."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from retrain_platform.demo_data import demo_customers
from retrain_platform.profiling import COLUMN_FIELDS, DataProfile, label_association, profile_frame
from retrain_platform.spec import SpecError, complete_spec, parse_spec


def spec_for(frame: pd.DataFrame, **fields):
    data = {
        "customer": "acme",
        "landing_table": "acme_events",
        "timestamp_column": "event_time",
        "label_column": "churned",
        **fields,
    }
    return complete_spec(parse_spec(data), frame)


def column(profile: DataProfile, name: str) -> pd.Series:
    return profile.columns.set_index("column").loc[name]


def warnings_about(profile: DataProfile, text: str) -> list[str]:
    return [warning for warning in profile.warnings if text in warning]


@pytest.fixture
def small_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 9],
            "event_time": [
                "2024-01-03", "2024-01-20T08:30:00Z", "2024-02-02", "2024-02-10", "not a date",
                "2024-02-28", None, "2024-03-01", "2024-03-05", "2024-03-09",
            ],  # fmt: skip
            "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, np.nan, np.nan],
            "plan": ["a", "a", "a", "a", "b", "b", "b", "c", None, "a"],
            "churned": [0, 1, 0, 0, 1, 0, 0, 1, 0, None],
        }
    )


@pytest.fixture
def small_profile(small_frame) -> DataProfile:
    return profile_frame(small_frame, spec_for(small_frame, id_column="event_id"))


def monthly_frame(rows_per_month: int, positive_shares: list[float], seed: int = 0) -> pd.DataFrame:
    """`rows_per_month` rows in each month from January 2024, an exact share of positive labels per month."""
    rng = np.random.default_rng(seed)
    parts = []
    for month, share in enumerate(positive_shares, start=1):
        start = pd.Timestamp(2024, month, 1)
        positives = round(rows_per_month * share)
        parts.append(
            pd.DataFrame(
                {
                    "event_time": start + pd.to_timedelta(rng.integers(0, 27 * 86_400, rows_per_month), unit="s"),
                    "churned": rng.permutation(np.r_[np.ones(positives), np.zeros(rows_per_month - positives)]),
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True).astype({"churned": "int64"})
    rows = len(frame)
    frame["noise"] = rng.normal(0.0, 1.0, rows)
    frame["noise_plan"] = rng.choice(["a", "b", "c", "d", "e"], rows)
    return frame


# --- the columns table ------------------------------------------------------------------------------


def test_columns_table_has_one_row_per_spec_column_in_a_fixed_order(small_profile):
    assert tuple(small_profile.columns.columns) == COLUMN_FIELDS
    assert small_profile.columns[["column", "role", "kind"]].values.tolist() == [
        ["amount", "feature", "numeric"],
        ["plan", "feature", "categorical"],
        ["churned", "label", "categorical"],
        ["event_time", "timestamp", "timestamp"],
        ["event_id", "id", "id"],
    ]


def test_numeric_feature_has_exact_missing_share_distinct_count_and_quantiles(small_profile):
    amount = column(small_profile, "amount")
    values = np.arange(1.0, 9.0)
    assert amount["dtype"] == "float64"
    assert amount["missing_share"] == pytest.approx(0.2)
    assert amount["distinct"] == 8
    assert amount["mean"] == pytest.approx(4.5)
    assert amount["std"] == pytest.approx(np.std(values, ddof=1))
    assert amount["min"] == 1.0 and amount["max"] == 8.0
    assert amount["p05"] == pytest.approx(np.quantile(values, 0.05))
    assert amount["median"] == pytest.approx(4.5)
    assert amount["p95"] == pytest.approx(np.quantile(values, 0.95))
    assert amount["top_values"] == ""


def test_categorical_feature_and_label_report_their_top_values(small_profile):
    plan = column(small_profile, "plan")
    assert plan["missing_share"] == pytest.approx(0.1)
    assert plan["distinct"] == 3
    assert plan["top_values"] == "a 56%, b 33%, c 11%"  # of the 9 non-missing values
    assert math.isnan(plan["mean"])
    label = column(small_profile, "churned")
    assert label["top_values"] == "0 67%, 1 33%"  # float labels 0.0 and 1.0 read as classes "0" and "1"
    assert label["distinct"] == 2
    assert label["missing_share"] == pytest.approx(0.1)


def test_timestamp_row_counts_unparseable_values_as_missing(small_profile):
    timestamp = column(small_profile, "event_time")
    assert timestamp["missing_share"] == pytest.approx(0.2)
    assert math.isnan(timestamp["min"]) and math.isnan(timestamp["max"])
    assert small_profile.time_range == (pd.Timestamp("2024-01-03"), pd.Timestamp("2024-03-09"))


def test_headline_counts(small_profile):
    assert small_profile.customer == "acme"
    assert small_profile.rows == 10
    assert small_profile.labelled_rows == 9
    assert small_profile.task == "binary"
    assert small_profile.sample_rows is None


def test_associations_need_ten_complete_rows(small_profile):
    features = small_profile.columns[small_profile.columns["role"] == "feature"]
    assert features["association"].isna().all()  # 8 and 8 rows have both the feature and the label
    assert features["association_method"].tolist() == ["gini", "cramer_v"]


def test_a_repeated_id_is_reported(small_profile):
    assert warnings_about(small_profile, "`event_id` repeats values")


def test_timestamps_are_read_as_naive_utc_whatever_their_zone():
    frame = pd.DataFrame(
        {
            "event_time": pd.date_range("2024-01-31 23:30", periods=12, freq="h", tz="Europe/Paris"),
            "x": np.arange(12.0),
            "churned": [0, 1] * 6,
        }
    )
    profile = profile_frame(frame, spec_for(frame))
    assert profile.time_range == (pd.Timestamp("2024-01-31 22:30"), pd.Timestamp("2024-02-01 09:30"))
    assert profile.label_balance["period"].tolist() == ["2024-01", "2024-02"]
    assert profile.label_balance["rows"].tolist() == [2, 10]


# --- associations and their warnings ---------------------------------------------------------------


@pytest.fixture(scope="module")
def leaky_profile() -> DataProfile:
    frame = monthly_frame(1_000, [0.3, 0.3, 0.3])
    frame["churned_copy"] = frame["churned"].astype(float)
    frame["churned_word"] = frame["churned"].map({0: "stayed", 1: "left"})
    frame["constant"] = 7.0
    frame["mostly_missing"] = np.where(np.arange(len(frame)) % 10 < 6, np.nan, 1.0 * np.arange(len(frame)))
    frame["session"] = [f"s{i}" for i in range(len(frame))]
    return profile_frame(frame, spec_for(frame))


def test_a_feature_equal_to_the_label_is_flagged_as_leakage(leaky_profile):
    assert column(leaky_profile, "churned_copy")["association"] == pytest.approx(1.0)
    assert column(leaky_profile, "churned_copy")["association_method"] == "gini"
    assert column(leaky_profile, "churned_word")["association"] == pytest.approx(1.0)
    assert column(leaky_profile, "churned_word")["association_method"] == "cramer_v"
    assert warnings_about(leaky_profile, "`churned_copy` almost determines the label")
    assert warnings_about(leaky_profile, "`churned_word` almost determines the label")


def test_independent_features_have_an_association_near_zero(leaky_profile):
    assert column(leaky_profile, "noise")["association"] < 0.1
    assert column(leaky_profile, "noise_plan")["association"] < 0.1
    assert not warnings_about(leaky_profile, "`noise")


def test_constant_mostly_missing_and_id_like_columns_warn(leaky_profile):
    assert warnings_about(leaky_profile, "`constant` is constant")
    assert math.isnan(column(leaky_profile, "constant")["association"])
    assert warnings_about(leaky_profile, "`mostly_missing` is 60% missing")
    assert column(leaky_profile, "mostly_missing")["missing_share"] == pytest.approx(0.6)
    assert warnings_about(leaky_profile, "`session` looks like an identifier")
    assert not warnings_about(leaky_profile, "`noise_plan` looks like an identifier")


def test_label_association_drops_incomplete_rows_and_names_its_method():
    feature = pd.Series([1.0, 2.0, np.nan, 4.0] * 10)
    label = pd.Series([0, 1, 1, None] * 10)
    value, method = label_association(feature, label, "numeric", "binary")
    assert method == "gini"
    assert value == pytest.approx(1.0)  # the complete rows are (1, 0) and (2, 1)
    assert math.isnan(label_association(feature.iloc[:8], label.iloc[:8], "numeric", "binary")[0])


# --- label balance over time -------------------------------------------------------------------------


def test_label_balance_per_month_and_a_warning_when_the_share_moves():
    frame = monthly_frame(500, [0.1, 0.6])
    profile = profile_frame(frame, spec_for(frame))
    balance = profile.label_balance
    assert balance["period"].tolist() == ["2024-01", "2024-02"]
    assert balance["rows"].tolist() == [500, 500]
    assert balance["labelled_rows"].tolist() == [500, 500]
    assert balance["share:1"].tolist() == pytest.approx([0.1, 0.6])
    assert balance["share:0"].tolist() == pytest.approx([0.9, 0.4])
    moved = warnings_about(profile, "`churned` in 2024-")
    assert len(moved) == 2  # overall 35%: both months are 25 points away, one warning each
    assert "2024-01: class '1' is 10%" in moved[0] and "35% overall" in moved[0]
    assert "2024-02: class '1' is 60%" in moved[1]


def test_a_steady_label_does_not_warn():
    frame = monthly_frame(500, [0.3, 0.32, 0.28])
    profile = profile_frame(frame, spec_for(frame))
    assert profile.warnings == []


def test_weekly_periods():
    frame = monthly_frame(200, [0.5])
    profile = profile_frame(frame, spec_for(frame), period="W")
    assert len(profile.label_balance) >= 4
    assert profile.label_balance["rows"].sum() == 200
    assert profile.label_balance["period"].iloc[0].startswith("2024-01-01/")


# --- the other tasks -----------------------------------------------------------------------------------


def test_regression_uses_spearman_and_eta_and_reports_the_label_mean_per_period():
    rng = np.random.default_rng(3)
    rows = 400
    x = rng.normal(0.0, 1.0, rows)
    group = np.where(np.arange(rows) % 2 == 0, "north", "south")
    y = 2.0 * x + np.where(group == "north", 0.0, 1.5) + rng.normal(0.0, 1.0, rows)
    frame = pd.DataFrame(
        {
            "event_time": pd.date_range("2024-01-01", periods=rows, freq="6h"),
            "distance": x,
            "zone": group,
            "minutes": y,
        }
    )
    profile = profile_frame(frame, spec_for(frame, label_column="minutes", task="regression"))

    distance = column(profile, "distance")
    assert distance["association_method"] == "spearman"
    assert distance["association"] == pytest.approx(abs(spearmanr(x, y).statistic))
    zone = column(profile, "zone")
    assert zone["association_method"] == "eta"
    overall = y.mean()
    between = sum((group == g).sum() * (y[group == g].mean() - overall) ** 2 for g in ("north", "south"))
    assert zone["association"] == pytest.approx(math.sqrt(between / ((y - overall) ** 2).sum()))

    label = column(profile, "minutes")
    assert label["kind"] == "numeric"
    assert label["mean"] == pytest.approx(y.mean()) and label["top_values"] == ""
    expected = frame.groupby(frame["event_time"].dt.to_period("M"))["minutes"].agg(["mean", "std"])
    assert profile.label_balance["label_mean"].tolist() == pytest.approx(expected["mean"].tolist())
    assert profile.label_balance["label_std"].tolist() == pytest.approx(expected["std"].tolist())
    assert not [name for name in profile.label_balance.columns if name.startswith("share:")]


def test_eta_of_two_separated_groups_matches_the_hand_computed_value():
    groups = pd.Series(["a"] * 5 + ["b"] * 5)
    numbers = pd.Series(np.arange(1.0, 11.0))
    value, method = label_association(groups, numbers, "categorical", "regression")
    assert method == "eta"
    assert value == pytest.approx(math.sqrt(62.5 / 82.5))


def test_multiclass_bins_numeric_features_and_warns_about_a_rare_class():
    rng = np.random.default_rng(5)
    rows = 3_000
    severity = rng.normal(0.0, 1.0, rows)
    priority = np.select([severity < -0.5, severity < 0.8], ["low", "medium"], "high").astype(object)
    priority[:60] = "urgent"  # 2% of the rows
    frame = pd.DataFrame(
        {
            "event_time": pd.date_range("2024-01-01", periods=rows, freq="h"),
            "severity": severity,
            "channel": rng.choice(["email", "chat", "phone"], rows),
            "priority": priority,
        }
    )
    profile = profile_frame(frame, spec_for(frame, label_column="priority"))
    assert profile.task == "multiclass"
    assert column(profile, "severity")["association_method"] == "cramer_v_binned"
    assert column(profile, "severity")["association"] > 0.6
    assert column(profile, "channel")["association_method"] == "cramer_v"
    assert column(profile, "channel")["association"] < 0.1
    shares = [name for name in profile.label_balance.columns if name.startswith("share:")]
    assert shares == ["share:high", "share:low", "share:medium", "share:urgent"]
    assert profile.label_balance[shares].sum(axis=1).tolist() == pytest.approx([1.0] * len(profile.label_balance))
    assert warnings_about(profile, "class 'urgent' of `priority` is 2.0% of labelled rows")
    assert not warnings_about(profile, "class 'low'")


# --- sampling ----------------------------------------------------------------------------------------


def test_a_sample_describes_values_but_rows_and_missing_shares_stay_exact():
    frame = monthly_frame(2_000, [0.2, 0.4, 0.3])
    frame.loc[frame.index % 7 == 0, "noise"] = np.nan
    frame.loc[frame.index % 3 == 0, "churned"] = np.nan
    spec = spec_for(frame)
    profile = profile_frame(frame, spec, max_rows=1_000, seed=1)

    assert profile.rows == 6_000
    assert profile.sample_rows == 1_000
    assert profile.labelled_rows == int(frame["churned"].notna().sum())
    assert column(profile, "noise")["missing_share"] == pytest.approx(frame["noise"].isna().mean())
    assert profile.label_balance["rows"].tolist() == [2_000, 2_000, 2_000]
    full = profile_frame(frame, spec)
    pd.testing.assert_frame_equal(profile.label_balance, full.label_balance)
    assert column(profile, "churned")["top_values"] == column(full, "churned")["top_values"]
    assert column(profile, "noise")["median"] != column(full, "noise")["median"]
    assert column(profile, "noise")["median"] == pytest.approx(column(full, "noise")["median"], abs=0.15)
    assert column(profile, "noise_plan")["distinct"] == 5

    again = profile_frame(frame, spec, max_rows=1_000, seed=1)
    pd.testing.assert_frame_equal(again.columns, profile.columns)
    assert "random sample of 1,000 rows" in profile.to_markdown()


# --- outputs -----------------------------------------------------------------------------------------


def test_to_dict_is_strict_json_and_reads_back(small_profile):
    text = json.dumps(small_profile.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["time_range"] == ["2024-01-03T00:00:00", "2024-03-09T00:00:00"]
    assert data["columns"][1]["mean"] is None
    assert data["label_balance"][0] == {
        "period": "2024-01",
        "rows": 2,
        "labelled_rows": 2,
        "share:0": 0.5,
        "share:1": 0.5,
    }
    restored = DataProfile.from_dict(data)
    pd.testing.assert_frame_equal(restored.columns, small_profile.columns)
    pd.testing.assert_frame_equal(restored.label_balance, small_profile.label_balance)
    assert restored.time_range == small_profile.time_range
    assert restored.warnings == small_profile.warnings


def test_markdown_shows_the_headline_columns_balance_and_warnings(small_profile):
    text = small_profile.to_markdown()
    assert text.startswith("**acme**: 10 rows, 9 labelled (90%), from 2024-01-03 00:00:00 to 2024-03-09 00:00:00")
    assert "task binary" in text
    for name in ("amount", "plan", "churned", "event_time", "event_id"):
        assert f"| {name} " in text
    assert "a 56%, b 33%, c 11%" in text
    assert "| 2024-02 " in text
    for warning in small_profile.warnings:
        assert f"- {warning}" in text


def test_chart_is_an_inline_png(small_profile, leaky_profile):
    for profile in (small_profile, leaky_profile):
        chart = profile.chart_markdown()
        prefix = "![data profile](data:image/png;base64,"
        assert chart.startswith(prefix) and chart.endswith(")")
        assert base64.b64decode(chart[len(prefix) : -1]).startswith(b"\x89PNG")


def test_regression_and_empty_profiles_still_chart():
    frame = pd.DataFrame({"event_time": [None] * 20, "x": np.arange(20.0), "minutes": np.arange(20.0) % 7})
    profile = profile_frame(frame, spec_for(frame, label_column="minutes", task="regression"))
    assert profile.label_balance.empty and profile.time_range == (None, None)
    assert "No timestamped rows." in profile.to_markdown()
    assert base64.b64decode(profile.chart_markdown().split(",", 1)[1][:-1]).startswith(b"\x89PNG")
    json.dumps(profile.to_dict(), allow_nan=False)


# --- inputs ------------------------------------------------------------------------------------------


def test_an_incomplete_spec_or_a_missing_column_is_refused(small_frame):
    with pytest.raises(SpecError, match="complete_spec"):
        profile_frame(small_frame, parse_spec({**spec_for(small_frame).model_dump(), "task": None}))
    with pytest.raises(SpecError, match="amount"):
        profile_frame(small_frame.drop(columns="amount"), spec_for(small_frame))


def test_clean_demo_histories_raise_no_warnings():
    for customer in demo_customers(history_rows=2_000, n_batches=0):
        spec = complete_spec(parse_spec(customer.spec), customer.history)
        profile = profile_frame(customer.history, spec)
        assert profile.warnings == [], customer.customer
        assert profile.rows == 2_000
        features = profile.columns[profile.columns["role"] == "feature"]
        assert features["association"].between(0.0, 1.0).all(), customer.customer
