"""The demo data: valid specs, well-formed frames, reproducibility, and each injected drift really there."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from retrain_platform.demo_data import (
    HISTORY_END,
    MAX_BATCHES,
    TIMESTAMP_LIMIT,
    DemoCustomer,
    demo_customers,
    generate_customer_frame,
    make_benchmark_frame,
)
from retrain_platform.spec import CustomerSpec, parse_spec

SEED = 0


@pytest.fixture(scope="module")
def customers() -> list[DemoCustomer]:
    return demo_customers(seed=SEED)


def by_name(customers: list[DemoCustomer], name: str) -> DemoCustomer:
    return next(c for c in customers if c.customer == name)


def early_late(customer: DemoCustomer) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.concat(customer.batches[: customer.drift_from], ignore_index=True),
        pd.concat(customer.batches[customer.drift_from :], ignore_index=True),
    )


def shift_in_std(reference: pd.Series, other: pd.Series) -> float:
    return abs(other.mean() - reference.mean()) / reference.std()


def model_frame(frame: pd.DataFrame, spec: CustomerSpec, categories: dict[str, list[str]]) -> pd.DataFrame:
    features = frame[spec.feature_names].copy()
    for column in spec.categorical_features:
        features[column] = pd.Categorical(features[column], categories=categories[column])
    return features


# --- shape of the data -------------------------------------------------------------------------------


def test_demo_has_varied_customers_tasks_and_drifts(customers):
    assert 4 <= len(customers) <= 5
    names = [c.customer for c in customers]
    assert len(set(names)) == len(names)
    specs = [parse_spec(c.spec) for c in customers]
    assert {"binary", "multiclass", "regression"} <= {s.task for s in specs}
    assert {"covariate_shift", "concept_drift", "new_category", "label_shift"} <= {c.drift_kind for c in customers}
    for customer in customers:
        assert customer.drift_from in (2, 3)
        assert customer.drift and "\n" not in customer.drift
        assert f"batches[{customer.drift_from}]" in customer.drift


def test_specs_parse_and_frames_hold_their_columns(customers):
    for customer in customers:
        spec = parse_spec(customer.spec)
        assert spec.landing_table == "landing_" + spec.customer.replace("-", "_")
        assert 6 <= len(spec.features) <= 10
        expected = [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column]
        assert len(customer.history) == 5_000
        assert len(customer.batches) == 6
        for frame in [customer.history, *customer.batches]:
            assert list(frame.columns) == expected
            assert frame.index.equals(pd.RangeIndex(len(frame)))
            for name in spec.numeric_features:
                assert pd.api.types.is_numeric_dtype(frame[name]), (spec.customer, name)
            for name in spec.categorical_features:
                assert frame[name].dtype == object, (spec.customer, name)
        assert all(len(batch) == 1_000 for batch in customer.batches)
        assert customer.history[spec.label_column].notna().all()


def test_features_are_realistic_mixes(customers):
    for customer in customers:
        spec = parse_spec(customer.spec)
        history = customer.history
        numeric, categorical = spec.numeric_features, spec.categorical_features
        assert numeric and categorical, spec.customer
        missing = history[numeric].isna().mean()
        assert ((missing > 0.01) & (missing < 0.08)).any(), spec.customer
        assert (history[numeric].skew().abs() > 1.0).any(), spec.customer
        levels = history[categorical].nunique()
        assert levels.max() >= 10, spec.customer
        widest = history[levels.idxmax()].value_counts(normalize=True)
        # A long tail: the top value is common, the rarest are rare.
        assert widest.iloc[0] > 0.1 and widest.iloc[-1] < 0.02, spec.customer


def test_ids_unique_and_timestamps_ordered_and_in_the_past(customers):
    for customer in customers:
        spec = parse_spec(customer.spec)
        frames = [customer.history, *customer.batches]
        ids = pd.concat([frame[spec.id_column] for frame in frames], ignore_index=True)
        assert ids.is_unique, spec.customer
        previous_end = None
        for frame in frames:
            stamps = frame[spec.timestamp_column]
            assert stamps.dtype == "datetime64[ns]"  # tz-naive
            assert stamps.is_monotonic_increasing
            if previous_end is not None:
                assert stamps.min() > previous_end
            previous_end = stamps.max()
        assert previous_end < TIMESTAMP_LIMIT
        history_stamps = customer.history[spec.timestamp_column]
        assert history_stamps.max() < HISTORY_END
        assert (history_stamps.max() - history_stamps.min()).days >= 115
        assert customer.batches[0][spec.timestamp_column].min() >= HISTORY_END


def test_timestamps_match_hour_features(customers):
    retail = by_name(customers, "corner-market")
    for frame in [retail.history, *retail.batches]:
        assert (frame["ordered_at"].dt.hour == frame["hour_of_day"]).all()
    delivery = by_name(customers, "swiftcart-delivery")
    assert (delivery.history["ordered_at"].dt.hour == delivery.history["order_hour"]).all()


def test_most_batches_allowed_still_end_before_the_limit():
    for customer in demo_customers(seed=1, history_rows=200, batch_rows=50, n_batches=MAX_BATCHES):
        assert customer.batches[-1][customer.spec["timestamp_column"]].max() < TIMESTAMP_LIMIT
    with pytest.raises(ValueError, match="n_batches"):
        demo_customers(n_batches=MAX_BATCHES + 1)


# --- reproducibility ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_frames(customers):
    again = demo_customers(seed=SEED)
    for first, second in zip(customers, again, strict=True):
        assert first.spec == second.spec
        assert first.drift == second.drift
        pd.testing.assert_frame_equal(first.history, second.history)
        for a, b in zip(first.batches, second.batches, strict=True):
            pd.testing.assert_frame_equal(a, b)


def test_different_seeds_give_different_data(customers):
    other = demo_customers(seed=SEED + 1)
    for first, second in zip(customers, other, strict=True):
        assert first.spec == second.spec
        label = first.label_column
        assert not first.history[label].equals(second.history[label])
        assert not first.batches[-1].drop(columns=[first.spec["id_column"]]).equals(
            second.batches[-1].drop(columns=[second.spec["id_column"]])
        )


# --- the injected drifts -----------------------------------------------------------------------------


def test_covariate_shift_moves_one_feature_only(customers):
    customer = by_name(customers, "lumen-streaming")
    spec = parse_spec(customer.spec)
    history = customer.history
    early, late = early_late(customer)
    assert shift_in_std(history["monthly_fee"], late["monthly_fee"]) > 1.0
    assert shift_in_std(history["monthly_fee"], early["monthly_fee"]) < 0.2
    for name in spec.numeric_features:
        if name != "monthly_fee":
            assert shift_in_std(history[name], late[name]) < 0.2, name
    for name in spec.categorical_features:
        shares = history[name].value_counts(normalize=True)
        late_shares = late[name].value_counts(normalize=True).reindex(shares.index, fill_value=0.0)
        assert (late_shares - shares).abs().max() < 0.05, name


def test_concept_drift_breaks_the_old_model_while_features_stay_put(customers):
    customer = by_name(customers, "northwind-lending")
    spec = parse_spec(customer.spec)
    history, label = customer.history, spec.label_column
    early, late = early_late(customer)
    model = make_pipeline(
        make_column_transformer(
            (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), spec.numeric_features),
            (OneHotEncoder(handle_unknown="ignore"), spec.categorical_features),
        ),
        LogisticRegression(max_iter=2_000),
    ).fit(history[spec.feature_names], history[label])

    def auc(frame: pd.DataFrame) -> float:
        return roc_auc_score(frame[label], model.predict_proba(frame[spec.feature_names])[:, 1])

    assert auc(early) > 0.75
    assert auc(early) - auc(late) > 0.05
    for name in spec.numeric_features:
        assert shift_in_std(history[name], late[name]) < 0.15, name
    for name in spec.categorical_features:
        shares = history[name].value_counts(normalize=True)
        late_shares = late[name].value_counts(normalize=True).reindex(shares.index, fill_value=0.0)
        assert (late_shares - shares).abs().max() < 0.04, name
    # The default rate stays about the same: the drift is in P(label | features), not in P(label).
    assert abs(late[label].mean() - history[label].mean()) < 0.04


def test_new_category_appears_in_late_batches(customers):
    customer = by_name(customers, "corner-market")
    early, late = early_late(customer)
    assert "bnpl" not in set(customer.history["payment_method"])
    assert "bnpl" not in set(early["payment_method"])
    share = (late["payment_method"] == "bnpl").mean()
    assert 0.22 < share < 0.28
    for batch in customer.batches[customer.drift_from :]:
        assert 0.18 < (batch["payment_method"] == "bnpl").mean() < 0.32


def test_label_rate_changes(customers):
    customer = by_name(customers, "atlas-support")
    label = customer.label_column
    early, late = early_late(customer)
    history_high = (customer.history[label] == "high").mean()
    assert abs((early[label] == "high").mean() - history_high) < 0.04
    assert (late[label] == "high").mean() - history_high > 0.15
    assert set(customer.history[label]) == {"low", "medium", "high"}


def test_regression_customer_gets_winter_weather(customers):
    customer = by_name(customers, "swiftcart-delivery")
    early, late = early_late(customer)
    history_snow = (customer.history["weather"] == "snow").mean()
    assert history_snow < 0.05
    assert abs((early["weather"] == "snow").mean() - history_snow) < 0.03
    assert (late["weather"] == "snow").mean() - history_snow > 0.15
    assert late["delivery_minutes"].mean() - customer.history["delivery_minutes"].mean() > 2.0
    for name in ("distance_km", "prep_minutes", "courier_active_orders"):
        assert shift_in_std(customer.history[name], late[name]) < 0.15, name


# --- learnability ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["lumen-streaming", "northwind-lending", "corner-market", "atlas-support", "swiftcart-delivery"]
)
def test_a_model_can_learn_the_history(customers, name):
    customer = by_name(customers, name)
    spec = parse_spec(customer.spec)
    history, label = customer.history, spec.label_column
    cut = int(len(history) * 0.8)  # rows are time-ordered: train on the past, test on the last 20%
    train, test = history.iloc[:cut], history.iloc[cut:]
    categories = {c: sorted(history[c].unique()) for c in spec.categorical_features}
    x_train, x_test = model_frame(train, spec, categories), model_frame(test, spec, categories)
    if spec.task == "regression":
        model = HistGradientBoostingRegressor(random_state=0, max_iter=60).fit(x_train, train[label])
        assert r2_score(test[label], model.predict(x_test)) > 0.4
    else:
        model = HistGradientBoostingClassifier(random_state=0, max_iter=60).fit(x_train, train[label])
        proba = model.predict_proba(x_test)
        if spec.task == "binary":
            score = roc_auc_score(test[label], proba[:, 1])
        else:
            score = roc_auc_score(test[label], proba, multi_class="ovr", labels=model.classes_)
        assert score > 0.7


# --- lower-level generators --------------------------------------------------------------------------


def test_generate_customer_frame_fills_its_window_and_numbering():
    frame = generate_customer_frame(
        "northwind-lending", 3_000, start="2026-01-01", end="2026-02-01", rng=np.random.default_rng(5), first_id=100
    )
    assert len(frame) == 3_000
    assert frame["loan_id"].tolist() == list(range(100, 3_100))
    assert frame["applied_at"].min() >= pd.Timestamp("2026-01-01")
    assert frame["applied_at"].max() < pd.Timestamp("2026-02-01")
    with pytest.raises(ValueError, match="unknown demo customer"):
        generate_customer_frame("nobody", 10, start="2026-01-01", end="2026-02-01")


def test_benchmark_frame_has_the_requested_shape_and_is_fast():
    started = time.perf_counter()
    frame, spec_data = make_benchmark_frame(rows=50_000, n_features=20, seed=0)
    elapsed = time.perf_counter() - started
    spec = parse_spec(spec_data)
    assert frame.shape == (50_000, 23)
    assert len(spec.numeric_features) == 16 and len(spec.categorical_features) == 4
    assert list(frame.columns) == [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column]
    assert frame[spec.id_column].is_unique
    assert set(frame[spec.label_column].unique()) == {0, 1}
    assert 0.1 < frame[spec.label_column].mean() < 0.5
    assert frame[spec.timestamp_column].max() < TIMESTAMP_LIMIT
    assert elapsed < 2.0  # generous: it takes well under a second
    pd.testing.assert_frame_equal(frame, make_benchmark_frame(rows=50_000, n_features=20, seed=0)[0])

    small, small_spec = make_benchmark_frame(rows=1_000, n_features=7, seed=3)
    assert small.shape == (1_000, 10)
    assert len(parse_spec(small_spec).features) == 7
