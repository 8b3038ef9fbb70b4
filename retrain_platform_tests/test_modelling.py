"""Features and candidate models: time-ordered splits, one frozen preprocessing, three tuned families."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, r2_score, roc_auc_score
from threadpoolctl import threadpool_limits

from retrain_platform.demo_data import make_benchmark_frame
from retrain_platform.modelling import (
    TRAINING_WINDOWS,
    Candidate,
    SearchSettings,
    best_candidate,
    build_preprocessor,
    coerce_types,
    content_hash,
    decision_threshold,
    feature_importance,
    make_features,
    refit_with_holdout,
    reusable_params,
    served_estimator,
    time_split,
    train_candidates,
    tune_threshold,
)
from retrain_platform.registry import FAMILY_TAG, FULL_SEARCH, PARAMS_TAG, REFIT, ROWS_TAG, SEARCH_TAG
from retrain_platform.spec import DecisionSettings, complete_spec, parse_spec

FAST = SearchSettings(n_iter=2, n_splits=3, n_jobs=1, seed=0)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_fit():
    """Gradient boosting's OpenMP threads spin badly when other processes share the CPUs; one keeps tests fast."""
    with threadpool_limits(limits=1):
        yield


def small_spec(**changes):
    return parse_spec(
        {
            "customer": "acme",
            "landing_table": "acme_events",
            "timestamp_column": "event_time",
            "label_column": "churned",
            "id_column": "event_id",
            "features": [
                {"name": "monthly_fee", "kind": "numeric"},
                {"name": "seats", "kind": "numeric"},
                {"name": "plan", "kind": "categorical"},
                {"name": "region_code", "kind": "categorical"},
            ],
            "task": "binary",
            "primary_metric": "roc_auc",
            **changes,
        }
    )


def small_frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "event_id": np.arange(rows),
            "event_time": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.permutation(rows) * 60, "min"),
            "monthly_fee": rng.normal(30, 5, rows),
            "seats": rng.integers(1, 40, rows),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "region_code": rng.choice([10, 20, 30], rows),  # int-coded category
        }
    )
    frame["churned"] = ((frame["monthly_fee"] > 30) ^ (frame["plan"] == "team")).astype(int)
    frame.loc[rng.choice(rows, rows // 20, replace=False), "monthly_fee"] = np.nan
    return frame


# --- time_split ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.5])
def test_time_split_puts_the_latest_rows_in_the_holdout(fraction):
    spec = small_spec(holdout_fraction=fraction)
    frame = small_frame(200)  # timestamps are shuffled
    train, holdout, cutoff = time_split(frame, spec)
    assert len(holdout) == round(200 * fraction)
    assert len(train) + len(holdout) == 200
    assert train["event_time"].max() <= holdout["event_time"].min()
    assert cutoff == holdout["event_time"].min()
    assert sorted(pd.concat([train, holdout])["event_id"]) == list(range(200))
    assert train["event_time"].is_monotonic_increasing and holdout["event_time"].is_monotonic_increasing


def test_time_split_keeps_one_row_on_each_side_of_a_tiny_frame():
    train, holdout, _ = time_split(small_frame(2), small_spec(holdout_fraction=0.1))
    assert (len(train), len(holdout)) == (1, 1)
    assert train["event_time"].iloc[0] < holdout["event_time"].iloc[0]


def test_time_split_does_not_modify_the_input():
    frame = small_frame(50)
    before = frame.copy()
    time_split(frame, small_spec())
    pd.testing.assert_frame_equal(frame, before)


# --- coerce_types and the preprocessor ---------------------------------------------------------------


def test_coerce_types_gives_each_feature_the_type_of_its_kind():
    frame = pd.DataFrame(
        {
            "fee": ["1.5", "2", "oops", None],
            "seats": [1, 2, 3, 4],
            "region_code": [10, 20, 10, 30],
            "autopay": [True, False, True, None],
            "plan": ["basic", None, "pro", "team"],
        }
    )
    coerced = coerce_types(frame, ["fee", "seats"], ["region_code", "autopay", "plan"])
    assert coerced["fee"].dtype == np.float64 and coerced["seats"].dtype == np.float64
    np.testing.assert_array_equal(coerced["fee"], [1.5, 2.0, np.nan, np.nan])
    assert coerced["region_code"].tolist() == ["10", "20", "10", "30"]
    assert coerced["autopay"].tolist()[:3] == ["True", "False", "True"]
    assert pd.isna(coerced["autopay"].iloc[3]) and pd.isna(coerced["plan"].iloc[1])
    assert all(dtype == object for dtype in coerced[["region_code", "autopay", "plan"]].dtypes)
    assert frame["region_code"].tolist() == [10, 20, 10, 30]  # the input is left alone


def test_int_coded_categories_with_missing_values_keep_their_text():
    coerced = coerce_types(pd.DataFrame({"region_code": [10.0, np.nan, 20.0]}), [], ["region_code"])
    assert coerced["region_code"].tolist()[::2] == ["10", "20"]


def test_a_nullable_integer_category_with_missing_values_is_encoded():
    spec = small_spec()
    frame = small_frame(200)
    preprocessor = build_preprocessor(spec).fit(frame[spec.feature_names])
    frame["region_code"] = pd.array([10, None] * 100, dtype="Int64")
    output = preprocessor.transform(frame[spec.feature_names])
    assert np.isfinite(output).all()


def test_the_preprocessor_handles_unseen_categories_and_missing_values():
    spec = small_spec()
    train = small_frame(200)
    preprocessor = build_preprocessor(spec).fit(train[spec.feature_names])
    names = list(preprocessor.get_feature_names_out())
    assert names[:2] == ["monthly_fee", "seats"]
    assert {"plan_basic", "plan_pro", "plan_team", "region_code_10", "region_code_20", "region_code_30"} <= set(names)

    new = pd.DataFrame(
        {
            "monthly_fee": [np.nan, 31.0, np.nan],
            "seats": [np.nan, 3, 5],
            "plan": ["enterprise", None, "pro"],  # unseen and missing
            "region_code": [99, 10, np.nan],
        }
    )
    output = preprocessor.transform(new)
    assert output.shape == (3, len(names))
    assert np.isfinite(output).all()
    row = dict(zip(names, output[0]))
    assert row["plan_basic"] == row["plan_pro"] == row["plan_team"] == 0.0
    # A missing number is imputed with the training median, which scales to about 0.
    assert abs(row["monthly_fee"] - preprocessor.transform(train[spec.feature_names])[:, 0].mean()) < 0.2


def test_the_preprocessor_ignores_extra_columns():
    spec = small_spec()
    frame = small_frame(200)
    preprocessor = build_preprocessor(spec).fit(frame[spec.feature_names])
    np.testing.assert_array_equal(preprocessor.transform(frame), preprocessor.transform(frame[spec.feature_names]))


def test_the_preprocessor_reads_columns_by_name_not_position():
    spec = small_spec()
    frame = small_frame(200)
    preprocessor = build_preprocessor(spec).fit(frame[spec.feature_names])
    shuffled = frame[["seats", "monthly_fee", "plan", "region_code"]]  # numbers swapped: no error, wrong values
    np.testing.assert_array_equal(preprocessor.transform(shuffled), preprocessor.transform(frame[spec.feature_names]))


def test_make_features_fits_on_the_training_part_only():
    spec = small_spec()
    features = make_features(small_frame(200), spec)
    scaler = features.preprocessor.named_steps["columns"].named_transformers_["numeric"].named_steps["scale"]
    fee = features.train["monthly_fee"]
    assert scaler.mean_[0] == pytest.approx(fee.fillna(fee.median()).mean())  # imputed, then scaled
    assert scaler.mean_[1] == pytest.approx(features.train["seats"].mean())
    assert features.classes == [0, 1]
    assert features.cutoff == features.holdout["event_time"].min()
    assert features.transform(features.holdout).shape == (len(features.holdout), len(features.feature_names_out))


def test_make_features_has_no_classes_for_regression():
    frame = small_frame(200)
    spec = small_spec(task="regression", primary_metric="rmse")
    assert make_features(frame.assign(churned=frame["seats"] * 1.5), spec).classes is None


# --- candidates ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark():
    frame, raw_spec = make_benchmark_frame(rows=3000, n_features=10, seed=0)
    spec = complete_spec(parse_spec(raw_spec), frame)
    features = make_features(frame, spec)
    return features, train_candidates(features, FAST)


def test_three_families_searched_with_finite_cv_and_validation_scores(benchmark):
    _, training = benchmark
    assert [c.family for c in training.candidates] == ["logistic_regression", "hist_gradient_boosting", "random_forest"]
    for candidate in training.candidates:
        assert candidate.scorer == "roc_auc" and candidate.searched
        assert np.isfinite(candidate.cv_score) and np.isfinite(candidate.cv_std)
        assert 0.5 < candidate.cv_score <= 1.0
        assert candidate.cv_score == max(candidate.cv_results["mean_test_score"])
        assert len(candidate.cv_results["mean_test_score"]) == FAST.n_iter
        assert candidate.best_params and candidate.fit_seconds > 0
        # Each window was scored on the latest validation rows; the family keeps its best one.
        assert set(candidate.validation_by_window) == {name for name, _ in TRAINING_WINDOWS}
        assert candidate.validation_score == max(candidate.validation_by_window.values())
        assert candidate.validation_by_window[candidate.window] == candidate.validation_score


def test_the_winner_has_the_best_validation_score_and_is_refit_on_its_window(benchmark):
    features, training = benchmark
    assert training.winner is best_candidate(training.candidates)
    assert training.winner.validation_score == max(c.validation_score for c in training.candidates)
    assert best_candidate(list(reversed(training.candidates))) is training.winner
    share = dict(TRAINING_WINDOWS)[training.winner.window]
    assert training.train_rows == int(round(len(features.train) * share))
    assert training.validation_rows == len(features.train) // (FAST.n_splits + 1)
    served = training.model.estimator.estimator  # FixedThresholdClassifier(FrozenEstimator(pipeline))
    params = served.named_steps["model"].get_params()
    assert all(params[key] == value for key, value in training.winner.best_params.items())


def test_best_candidate_prefers_the_smaller_error():
    """Error metrics arrive negated (neg_root_mean_squared_error), so the larger number is the smaller error."""
    made = [
        Candidate(family, {}, cv_score=0.0, cv_std=0.0, scorer="neg_root_mean_squared_error", fit_seconds=0.0, validation_score=score)
        for family, score in (("a", -3.0), ("b", -1.5), ("c", -2.0))
    ]
    assert best_candidate(made).family == "b"


def test_the_binary_model_predicts_at_its_own_threshold(benchmark):
    features, training = benchmark
    model = training.model
    assert training.threshold is not None and 0.0 < training.threshold < 1.0
    assert decision_threshold(model) == training.threshold
    holdout = features.X_holdout  # raw, untransformed feature columns
    assert holdout.dtypes.map(str).isin(["float64", "object"]).all()
    scores = model.predict_proba(holdout)[:, 1]
    assert roc_auc_score(features.y_holdout, scores) > 0.7
    np.testing.assert_array_equal(model.predict(holdout), (scores >= training.threshold).astype(int))


def test_the_served_model_is_the_winner_refit_with_the_holdout_rows(benchmark):
    """Same family, hyper-parameters, window share and threshold as the judged model, fit on the latest
    labelled rows too; the preprocessing is still the one fitted on the training rows."""
    features, training = benchmark
    served, rows = refit_with_holdout(features, training)
    window = training.winner.window_share
    assert rows == int(round((len(features.train) + len(features.holdout)) * window))
    assert rows > training.train_rows
    judged_model, served_model = served_estimator(training.model), served_estimator(served)
    assert type(served_model) is type(judged_model)
    assert served_model.get_params() == judged_model.get_params()
    assert decision_threshold(served) == training.threshold
    assert served.estimator.estimator.named_steps["preprocess"].estimator is features.preprocessor
    # It has learnt from the holdout: it ranks those rows better than the model that never saw them.
    holdout, y = features.X_holdout, features.y_holdout
    judged_auc = roc_auc_score(y, training.model.predict_proba(holdout)[:, 1])
    assert roc_auc_score(y, served.predict_proba(holdout)[:, 1]) > judged_auc


def test_the_threshold_serves_the_objective_on_the_validation_rows():
    """F1 at the tuned cut-off beats F1 at 0.5 on rare positives, and a cost ratio moves the cut-off."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 3))
    y = (X[:, 0] + rng.normal(scale=1.0, size=4000) > 2.0).astype(int)  # about 5% positives
    model = LogisticRegression().fit(X[:2000], y[:2000])
    f1 = tune_threshold(model, X[2000:], y[2000:], DecisionSettings())
    assert f1 < 0.5
    at_half = f1_score(y[2000:], model.predict(X[2000:]))
    tuned = f1_score(y[2000:], (model.predict_proba(X[2000:])[:, 1] >= f1).astype(int))
    assert tuned > at_half
    costly_misses = tune_threshold(model, X[2000:], y[2000:], DecisionSettings(objective="cost", false_negative_cost=20))
    costly_alarms = tune_threshold(model, X[2000:], y[2000:], DecisionSettings(objective="cost", false_positive_cost=20))
    assert costly_misses < f1 < costly_alarms
    precise = tune_threshold(model, X[2000:], y[2000:], DecisionSettings(objective="precision", target=0.8))
    predicted = model.predict_proba(X[2000:])[:, 1] >= precise
    assert precision_score(y[2000:], predicted) >= 0.8


def test_a_retraining_refits_known_hyper_parameters_without_searching(benchmark):
    features, training = benchmark
    known = {c.family: c.best_params for c in training.candidates}
    refit = train_candidates(features, SearchSettings(n_iter=2, n_splits=3, n_jobs=1, known_params=known))
    assert all(not c.searched and np.isnan(c.cv_score) and not c.cv_results for c in refit.candidates)
    assert {c.family: c.best_params for c in refit.candidates} == known
    assert refit.winner.family == training.winner.family and refit.winner.window == training.winner.window
    # Between searches only the family the last search chose is refit.
    chosen = {training.winner.family: training.winner.best_params}
    alone = train_candidates(features, SearchSettings(n_iter=2, n_splits=3, n_jobs=1, known_params=chosen))
    assert [c.family for c in alone.candidates] == [training.winner.family]


def test_reusable_params_follow_the_full_search_cadence():
    searched = {SEARCH_TAG: FULL_SEARCH, PARAMS_TAG: '{"ridge": {"alpha": 0.5}}', ROWS_TAG: "1000"}
    chose = {**searched, PARAMS_TAG: '{"ridge": {"alpha": 0.5}, "random_forest": {"max_depth": 4}}', FAMILY_TAG: "ridge"}
    assert reusable_params([chose], 1000, 4) == {"ridge": {"alpha": 0.5}}
    refit = {SEARCH_TAG: REFIT}
    assert reusable_params([], 1000, 4) is None
    assert reusable_params([searched], 1100, 4) == {"ridge": {"alpha": 0.5}}
    assert reusable_params([refit, refit, searched], 1100, 4) == {"ridge": {"alpha": 0.5}}
    assert reusable_params([refit, refit, refit, searched], 1100, 4) is None  # the fourth training searches again
    assert reusable_params([searched], 2500, 4) is None  # the training set more than doubled
    assert reusable_params([searched], 1000, 1) is None  # every training searches


def test_the_pipeline_predicts_rows_with_unseen_categories_and_missing_values(benchmark):
    features, training = benchmark
    spec = features.spec
    rows = features.X_holdout.head(5).copy()
    rows[spec.categorical_features] = "never_seen_before"
    rows[spec.numeric_features[0]] = np.nan
    probabilities = training.model.predict_proba(rows)
    assert probabilities.shape == (5, 2)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_the_model_shares_the_frozen_preprocessing(benchmark):
    features, training = benchmark
    step = training.model.estimator.estimator.named_steps["preprocess"]
    assert isinstance(step, FrozenEstimator)
    assert step.estimator is features.preprocessor


def test_refitting_a_model_does_not_refit_its_preprocessing(benchmark):
    features, training = benchmark
    spec = features.spec
    before = features.transform(features.holdout)
    pipeline = copy.deepcopy(training.model.estimator.estimator)
    shifted = features.train.copy()
    shifted[spec.numeric_features] = shifted[spec.numeric_features] * 10 + 100
    pipeline.fit(shifted[spec.feature_names], features.y_train)
    after = pipeline.named_steps["preprocess"].transform(features.holdout[spec.feature_names])
    np.testing.assert_array_equal(after, before)


def test_regression_uses_ridge_gradient_boosting_and_random_forest():
    rng = np.random.default_rng(3)
    rows = 600
    frame = pd.DataFrame(
        {
            "order_time": pd.date_range("2025-01-01", periods=rows, freq="2h"),
            "distance_km": rng.uniform(1, 20, rows),
            "items": rng.integers(1, 10, rows),
            "weather": rng.choice(["sun", "rain", "snow"], rows, p=[0.6, 0.3, 0.1]),
        }
    )
    frame["delivery_minutes"] = (
        10 + 2.5 * frame["distance_km"] + frame["items"] + frame["weather"].map({"sun": 0, "rain": 5, "snow": 15})
    ) + rng.normal(0, 2, rows)
    spec = complete_spec(
        parse_spec(
            {
                "customer": "swiftcart",
                "landing_table": "deliveries",
                "timestamp_column": "order_time",
                "label_column": "delivery_minutes",
            }
        ),
        frame,
    )
    assert (spec.task, spec.primary_metric) == ("regression", "rmse")
    features = make_features(frame, spec)
    training = train_candidates(features, FAST)
    candidates = training.candidates
    assert [c.family for c in candidates] == ["ridge", "hist_gradient_boosting", "random_forest"]
    assert all(c.scorer == "neg_root_mean_squared_error" for c in candidates)
    assert all(np.isfinite(c.cv_score) and c.cv_score < 0 for c in candidates)
    assert training.threshold is None
    predictions = training.model.predict(features.X_holdout)
    assert np.isfinite(predictions).all()
    assert r2_score(features.y_holdout, predictions) > 0.8
    # The linear truth is found by ridge, whose RMSE is close to the noise.
    ridge = candidates[0]
    assert -ridge.cv_score < 4


def test_multiclass_scores_with_macro_f1():
    rng = np.random.default_rng(5)
    rows = 450
    frame = pd.DataFrame(
        {
            "created": pd.date_range("2025-01-01", periods=rows, freq="h"),
            "words": rng.integers(5, 300, rows),
            "channel": rng.choice(["email", "chat", "phone"], rows),
        }
    )
    frame["priority"] = np.where(frame["channel"] == "phone", "high", np.where(frame["words"] > 150, "medium", "low"))
    spec = complete_spec(
        parse_spec({"customer": "atlas", "landing_table": "tickets", "timestamp_column": "created", "label_column": "priority"}),
        frame,
    )
    assert (spec.task, spec.primary_metric) == ("multiclass", "f1")
    features = make_features(frame, spec)
    assert features.classes == ["high", "low", "medium"]
    training = train_candidates(features, SearchSettings(n_iter=1, n_splits=2, n_jobs=1))
    assert len(training.candidates) == 3 and all(c.scorer == "f1_macro" for c in training.candidates)
    assert training.winner.cv_score > 0.8 and training.threshold is None
    assert set(training.model.predict(features.X_holdout)) <= {"high", "low", "medium"}


# --- content_hash -------------------------------------------------------------------------------------


def test_content_hash_is_stable_for_equal_frames():
    first, second = small_frame(100), small_frame(100)
    assert content_hash(first) == content_hash(second)
    assert content_hash(first) == content_hash(first.set_axis(range(500, 600)))  # the index is not content
    assert len(content_hash(first)) == 16


def test_content_hash_changes_when_one_value_changes():
    frame = small_frame(100)
    changed = frame.copy()
    changed.loc[42, "plan"] = "gold"
    assert content_hash(changed) != content_hash(frame)
    nudged = frame.copy()
    nudged.loc[7, "seats"] += 1
    assert content_hash(nudged) != content_hash(frame)


def test_content_hash_sees_column_names_and_row_order():
    frame = small_frame(100)
    assert content_hash(frame.rename(columns={"plan": "tier"})) != content_hash(frame)
    assert content_hash(frame.iloc[::-1]) != content_hash(frame)


# --- worker processes ---------------------------------------------------------------------------------


def train_in_a_child(done) -> None:
    frame, raw_spec = make_benchmark_frame(rows=600, n_features=4, seed=1)
    features = make_features(frame, complete_spec(parse_spec(raw_spec), frame))
    train_candidates(features, SearchSettings(n_iter=2, n_splits=2, n_jobs=2, seed=0))
    done.set()


def test_a_run_worker_process_that_searched_in_parallel_exits_when_it_is_done():
    # A Dagster run worker is a multiprocessing child; it joins its children at exit, so idle joblib workers
    # (kept 300 s by default) held every finished run alive for five minutes.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    done = context.Event()
    child = context.Process(target=train_in_a_child, args=(done,))
    child.start()
    child.join(timeout=120)
    try:
        assert done.is_set() and not child.is_alive() and child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()


def test_feature_importance_finds_the_feature_the_label_depends_on():
    rng = np.random.default_rng(4)
    rows = 1200
    frame = pd.DataFrame(
        {
            "at": pd.date_range("2025-01-01", periods=rows, freq="h"),
            "signal": rng.normal(size=rows),
            "noise": rng.normal(size=rows),
            "colour": rng.choice(["red", "blue"], rows),
        }
    )
    frame["label"] = (frame["signal"] + rng.normal(scale=0.3, size=rows) > 0).astype(int)
    spec = complete_spec(parse_spec({"customer": "imp", "landing_table": "t", "timestamp_column": "at", "label_column": "label"}), frame)
    features = make_features(frame, spec)
    training = train_candidates(features, SearchSettings(n_iter=1, n_splits=2, n_jobs=1))
    importance = feature_importance(training.model, features)
    assert set(importance) == {"signal", "noise", "colour"}
    assert sum(importance.values()) == pytest.approx(1.0)
    assert importance["signal"] > 0.9
