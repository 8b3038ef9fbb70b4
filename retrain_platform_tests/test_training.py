"""The training chain as real Dagster runs: a DuckDB warehouse and a sqlite MLflow registry under tmp_path,
a temporary Dagster instance, demo customers at a small size.

One binary customer (lumen-streaming), trained once per session, is re-trained on a copy on the same data and
on corrupt data; the approve-mode customer gets its own platform, the regression and multiclass customers a
copy of their session's training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score, root_mean_squared_error

from retrain_platform import ledger
from retrain_platform.defs.training import (
    CHAMPION_SERVES_AS_TRAINED,
    FEATURES_ARE_FINITE,
    TRAINING_DATA_QUALITY,
    snapshot_table,
)
from retrain_platform.modelling import decision_threshold
from retrain_platform.monitoring import prediction_scores
from retrain_platform.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, THRESHOLD_TAG
from retrain_platform.status import STATUS_KEYS, customer_status
from retrain_platform.warehouse import quote

CUSTOMER = "lumen-streaming"
ALL_CHECKS = {TRAINING_DATA_QUALITY, FEATURES_ARE_FINITE, CHAMPION_SERVES_AS_TRAINED}
TRAINING_ASSETS = {"training_dataset", "features", "candidate_models", "evaluation_report", "deployed_model"}


# ---------------------------------------------------------------------------------------------------
# Reading a run result


def job_assets(platform, job: str = "train_customer") -> set[str]:
    return {key.to_user_string() for key in platform.defs.resolve_job_def(job).asset_layer.selected_asset_keys}


def materialized(result) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def materialization(result, asset: str):
    found = [
        event.materialization
        for event in result.get_asset_materialization_events()
        if event.asset_key.to_user_string() == asset
    ]
    assert len(found) == 1, f"{asset} materialized {len(found)} times in run {result.run_id}"
    return found[0]


def metadata(result, asset: str) -> dict:
    return {key: value.value for key, value in materialization(result, asset).metadata.items()}


def check_evaluations(result) -> dict:
    evaluations = result.get_asset_check_evaluations()
    by_name = {evaluation.check_name: evaluation for evaluation in evaluations}
    assert len(by_name) == len(evaluations), "a check was evaluated twice in one run"
    return by_name


def step_errors(result) -> dict[str, list[str]]:
    """Step key -> the first line of each error it raised (retried attempts included), for messages."""
    errors: dict[str, list[str]] = {}
    for event in result.all_events:
        if event.is_step_failure or event.is_step_up_for_retry:
            error = event.event_specific_data.error
            while error.cause is not None and error.message.startswith("dagster."):
                error = error.cause
            errors.setdefault(event.step_key, []).append(error.message.splitlines()[0])
    return errors


def status_of(platform, customer: str) -> dict:
    rows = [row for row in customer_status(platform.warehouse, platform.registry) if row["customer"] == customer]
    assert len(rows) == 1
    assert tuple(rows[0]) == STATUS_KEYS
    return rows[0]


def served_holdout_metric(platform, spec, judged: bool = True) -> float:
    """The champion loaded from the registry, scored independently (sklearn) on the snapshot's latest rows:
    as it was judged (its twin trained without those rows, by default), or as it serves (refit on them)."""
    snapshot = platform.warehouse.query(
        f"select * from {quote(snapshot_table(spec.customer))} where customer = ?", [spec.customer]
    )
    snapshot[spec.timestamp_column] = pd.to_datetime(snapshot[spec.timestamp_column])
    ordered = snapshot.sort_values(spec.timestamp_column, kind="stable").reset_index(drop=True)
    holdout = ordered.iloc[int(round(len(ordered) * (1 - spec.holdout_fraction))) :]
    champion = platform.registry.alias_version(spec.model_name, CHAMPION)
    registry = platform.registry
    model = registry.load_evaluated(spec.model_name, champion) if judged else registry.load(spec.model_name, champion)
    X, y = holdout[spec.feature_names], holdout[spec.label_column].to_numpy()
    if spec.task == "regression":
        assert spec.primary_metric == "rmse"
        return float(root_mean_squared_error(y, model.predict(X)))
    if spec.task == "binary":
        assert spec.primary_metric == "roc_auc"
        return float(roc_auc_score(y == model.classes_[1], model.predict_proba(X)[:, 1]))
    assert spec.primary_metric == "f1"
    return float(f1_score(y, model.predict(X), average="macro", zero_division=0))


def utc_now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def expected_snapshot_rows(history: pd.DataFrame, spec) -> int:
    """Labelled rows within `training_window_days` of the latest timestamp."""
    labelled = history[history[spec.label_column].notna()]
    timestamps = labelled[spec.timestamp_column]
    return int((timestamps >= timestamps.max() - pd.Timedelta(days=spec.training_window_days)).sum())


# ---------------------------------------------------------------------------------------------------
# One binary customer, trained once for the module


@dataclass
class Observed:
    """A run and the platform's state right after it (later tests of the module change that state)."""

    result: object
    ledger: pd.DataFrame
    versions: list[str]
    champion: str | None
    challenger: str | None
    previous_champion: str | None
    status: dict


def observe(platform, spec, result) -> Observed:
    registry = platform.registry
    return Observed(
        result=result,
        ledger=ledger.history(platform.warehouse, spec.customer),
        versions=registry.versions(spec.model_name),
        champion=registry.alias_version(spec.model_name, CHAMPION),
        challenger=registry.alias_version(spec.model_name, CHALLENGER),
        previous_champion=registry.alias_version(spec.model_name, PREVIOUS_CHAMPION),
        status=status_of(platform, spec.customer),
    )


@pytest.fixture(scope="module")
def streaming(trained_customer, copy_platform, tmp_path_factory):
    """A copy of the session's trained lumen-streaming, which the module trains again (on good and bad data)."""
    lumen = trained_customer(CUSTOMER)
    with copy_platform(lumen, tmp_path_factory.mktemp("streaming")) as platform:
        yield platform, lumen.spec


@pytest.fixture(scope="module")
def first_training(trained_customer, streaming) -> Observed:
    """The session's first training of lumen-streaming, observed on the copy before the module changes it."""
    platform, spec = streaming
    return observe(platform, spec, trained_customer(CUSTOMER).result)


@pytest.fixture(scope="module")
def second_training(streaming, first_training) -> Observed:
    platform, spec = streaming
    return observe(platform, spec, platform.train(spec.customer))


@pytest.mark.slow
def test_first_training_runs_the_whole_chain_and_promotes_version_1(streaming, first_training):
    platform, spec = streaming
    first = first_training
    result = first.result

    assert result.success
    # Everything the job selects: the five training assets and the drift baseline kept with the model.
    assert materialized(result) == job_assets(platform) >= TRAINING_ASSETS | {"drift_baseline"}
    checks = check_evaluations(result)
    assert set(checks) == ALL_CHECKS
    assert {name: check.passed for name, check in checks.items()} == dict.fromkeys(ALL_CHECKS, True)
    assert checks[TRAINING_DATA_QUALITY].description.startswith("all ")

    # The registry: one version, both aliases on it.
    assert first.versions == ["1"]
    assert first.champion == "1"
    assert first.challenger == "1"
    assert first.previous_champion is None

    # The snapshot: every labelled row in the window, all new; its content hash is the data version.
    dataset = materialization(result, "training_dataset")
    dataset_meta = metadata(result, "training_dataset")
    rows = expected_snapshot_rows(platform.demo[CUSTOMER].history, spec)
    assert 0 < rows < len(platform.demo[CUSTOMER].history)  # the 90-day window cuts the 120-day history
    assert dataset_meta["rows"] == rows
    assert dataset_meta["new_labelled_rows"] == rows
    assert dataset_meta["table"] == snapshot_table(CUSTOMER)
    assert len(dataset_meta["content_hash"]) == 16
    assert dataset.tags["dagster/data_version"] == dataset_meta["content_hash"]
    stored = platform.warehouse.query(f"select count(*) as n from {quote(snapshot_table(CUSTOMER))}")
    assert int(stored["n"].iloc[0]) == rows

    # The evaluation: no champion yet, so only the floor applies, and it is met.
    evaluation = metadata(result, "evaluation_report")
    assert evaluation["verdict"] == "PROMOTE"
    assert evaluation["challenger_version"] == "1"
    assert evaluation["champion_version"] == "None"
    holdout_metric = evaluation["challenger_roc_auc"]
    assert spec.thresholds.floor <= holdout_metric <= 1.0

    deployed = metadata(result, "deployed_model")
    assert deployed["action"] == "promote"
    assert deployed["champion_version"] == "1"
    assert deployed["champion_uri"] == f"models:/{spec.model_name}@champion"

    # The ledger: one row that says what happened, in which run, on which data.
    assert len(first.ledger) == 1
    row = first.ledger.iloc[0]
    assert row["customer"] == CUSTOMER
    assert row["model_name"] == spec.model_name
    assert row["action"] == "promote"
    assert row["verdict"] == "PROMOTE"
    assert pd.isna(row["from_version"])
    assert row["to_version"] == "1"
    assert row["champion_after"] == "1"
    assert row["dagster_run_id"] == result.run_id
    assert row["data_version"] == dataset_meta["content_hash"]
    assert row["trigger"] == "test"
    assert "absolute floor: pass" in row["reasons"]
    models = metadata(result, "candidate_models")
    assert models["hyper_parameters"] == "searched"
    assert row["reasons"].startswith(f"challenger: {models['challenger_family']} on {models['training_window'].split(' (')[0]}")

    # The decision threshold travels with the version: a tag, and the cut-off the served model predicts at.
    threshold = float(platform.registry.version_tags(spec.model_name, "1")[THRESHOLD_TAG])
    assert models["decision_threshold"] == pytest.approx(threshold, rel=1e-5)
    served = platform.registry.load(spec.model_name, CHAMPION)
    assert decision_threshold(served) == pytest.approx(threshold, rel=1e-5)
    rows = platform.demo[CUSTOMER].history.tail(300)[spec.feature_names]
    positive = served.predict_proba(rows)[:, 1] >= decision_threshold(served)
    np.testing.assert_array_equal(served.predict(rows), served.classes_[positive.astype(int)])
    predicted, _ = prediction_scores(served, rows, spec.task)
    np.testing.assert_array_equal(predicted, served.predict(rows))
    assert "Decision thresholds" in metadata(result, "evaluation_report")["report"]

    # Status reports the champion and its holdout metric, which is what the served model really scores.
    status = first.status
    assert status["mode"] == "auto"
    assert status["champion_version"] == "1"
    assert status["primary_metric"] == "roc_auc"
    assert status["champion_metric"] == pytest.approx(holdout_metric, abs=1e-12)
    assert status["last_verdict"] == "PROMOTE"
    assert status["promotions"] == 1
    assert served_holdout_metric(platform, spec) == pytest.approx(holdout_metric, abs=1e-9)
    # The version that serves was refit with the holdout rows: it has learnt from them, so it scores them
    # better than its twin that was judged without them.
    assert served_holdout_metric(platform, spec, judged=False) > holdout_metric
    assert "serves refit on" in ledger.history(platform.warehouse, spec.customer)["reasons"].iloc[-1]


@pytest.mark.slow
def test_second_run_on_the_same_data_compares_with_the_champion_on_the_same_holdout(
    streaming, first_training, second_training
):
    platform, spec = streaming
    first, second = first_training, second_training
    assert second.result.success
    assert {name: check.passed for name, check in check_evaluations(second.result).items()} == dict.fromkeys(
        ALL_CHECKS, True
    )

    # Same data: same rows, none new, same content hash and so the same data version.
    before, after = metadata(first.result, "training_dataset"), metadata(second.result, "training_dataset")
    assert after["rows"] == before["rows"]
    assert after["new_labelled_rows"] == 0
    assert after["content_hash"] == before["content_hash"]
    assert materialization(second.result, "training_dataset").tags["dagster/data_version"] == before["content_hash"]

    # Between full searches a retraining refits the hyper-parameters found last, with the same choice of
    # family and window on the same data.
    models_before, models_after = metadata(first.result, "candidate_models"), metadata(second.result, "candidate_models")
    assert models_after["hyper_parameters"] == "reused from the last search"
    assert (models_after["challenger_family"], models_after["training_window"]) == (
        models_before["challenger_family"],
        models_before["training_window"],
    )

    # The new challenger is version 2, compared with champion version 1 on the same holdout: the champion's
    # metric now is exactly what it scored when it was trained.
    evaluation = metadata(second.result, "evaluation_report")
    assert second.versions == ["1", "2"]
    assert second.challenger == "2"
    assert evaluation["challenger_version"] == "2"
    assert evaluation["champion_version"] == "1"
    assert evaluation["champion_roc_auc"] == pytest.approx(
        metadata(first.result, "evaluation_report")["challenger_roc_auc"], abs=1e-12
    )
    verdict = evaluation["verdict"]
    assert verdict in {"PROMOTE", "HOLD", "REJECT"}
    # The rules: a challenger must beat the champion by min_absolute_change to be promoted.
    gain = evaluation["challenger_roc_auc"] - evaluation["champion_roc_auc"]
    if gain < spec.thresholds.min_absolute_change:
        assert verdict != "PROMOTE"

    # The champion moved only on PROMOTE; the previous one is one step away.
    if verdict == "PROMOTE":
        assert (second.champion, second.previous_champion) == ("2", "1")
    else:
        assert (second.champion, second.previous_champion) == ("1", None)
    assert metadata(second.result, "deployed_model")["champion_version"] == second.champion

    # The ledger got a second row, for this run, on the same data version.
    assert len(second.ledger) == 2
    assert second.ledger["dagster_run_id"].tolist() == [first.result.run_id, second.result.run_id]
    row = second.ledger.iloc[1]
    assert row["verdict"] == verdict
    assert row["action"] == ("promote" if verdict == "PROMOTE" else verdict.lower())
    assert (row["from_version"], row["to_version"], row["champion_after"]) == ("1", "2", second.champion)
    assert row["data_version"] == first.ledger.iloc[0]["data_version"] == before["content_hash"]

    assert second.status["last_verdict"] == verdict
    assert second.status["promotions"] == (2 if verdict == "PROMOTE" else 1)
    assert second.status["champion_version"] == second.champion


def _wrong_type(history: pd.DataFrame) -> tuple[pd.DataFrame, str, str, object]:
    """A load that turned a numeric feature into text, with some values that are not numbers at all."""
    bad = history.tail(5).copy()
    bad["subscriber_id"] = [f"sub-bad-{i}" for i in range(len(bad))]
    frame = pd.concat([history, bad], ignore_index=True)
    frame["monthly_fee"] = frame["monthly_fee"].astype(str)
    frame.loc[len(history) :, "monthly_fee"] = "abc"
    return frame, "monthly_fee", "expect_column_values_to_be_in_type_list", "abc"


def _duplicate_ids(history: pd.DataFrame) -> tuple[pd.DataFrame, str, str, object]:
    """The latest rows loaded twice."""
    frame = pd.concat([history, history.tail(10)], ignore_index=True)
    return frame, "subscriber_id", "expect_column_values_to_be_unique", None


def _unparseable_timestamp(history: pd.DataFrame) -> tuple[pd.DataFrame, str, str, object]:
    """Timestamps loaded as text, some of which are not timestamps."""
    bad = history.tail(3).copy()
    bad["subscriber_id"] = [f"sub-bad-{i}" for i in range(len(bad))]
    frame = pd.concat([history, bad], ignore_index=True)
    frame["snapshot_at"] = frame["snapshot_at"].astype(str)
    frame.loc[len(history) :, "snapshot_at"] = "31/31/2026 25:61"
    return frame, "snapshot_at", "expect_column_values_to_not_be_null", "31/31/2026 25:61"


def _future_timestamp(history: pd.DataFrame) -> tuple[pd.DataFrame, str, str, object]:
    """Rows stamped a year from now."""
    bad = history.tail(3).copy()
    bad["subscriber_id"] = [f"sub-bad-{i}" for i in range(len(bad))]
    bad["snapshot_at"] = utc_now() + pd.Timedelta(days=365)
    return pd.concat([history, bad], ignore_index=True), "snapshot_at", "expect_column_values_to_be_between", None


@pytest.mark.slow
@pytest.mark.parametrize(
    "corrupt", [_wrong_type, _duplicate_ids, _unparseable_timestamp, _future_timestamp], ids=lambda f: f.__name__[1:]
)
def test_blocking_quality_check_stops_corrupt_data_and_keeps_the_champion(streaming, first_training, corrupt):
    platform, spec = streaming
    assert first_training.result.success
    original = platform.landing(spec)
    history = original.sort_values("snapshot_at", kind="stable").reset_index(drop=True)
    registry = platform.registry
    champion_before = registry.alias_version(spec.model_name, CHAMPION)
    versions_before = registry.versions(spec.model_name)
    ledger_before = ledger.history(platform.warehouse, CUSTOMER)
    assert champion_before is not None

    frame, column, rule, bad_value = corrupt(history)
    platform.replace_landing(spec, frame)
    try:
        result = platform.train(spec.customer)

        assert not result.success
        checks = check_evaluations(result)
        assert TRAINING_DATA_QUALITY in checks, f"the quality check never ran; step errors: {step_errors(result)}"
        quality = checks[TRAINING_DATA_QUALITY]
        assert not quality.passed
        # The check says which column broke which rule, in its description and its failure table.
        assert column in quality.description and rule in quality.description
        failures = quality.metadata["failures"].value
        assert any(column in line and rule in line for line in failures.splitlines())
        assert quality.metadata["failed_expectations"].value >= 1

        # Blocking: nothing downstream of the snapshot ran; the data profile (not downstream) shows the bad data.
        assert materialized(result) == {"training_dataset", "data_profile"}
        assert set(checks) == {TRAINING_DATA_QUALITY}

        # The champion, the registry and the ledger are untouched.
        assert registry.alias_version(spec.model_name, CHAMPION) == champion_before
        assert registry.versions(spec.model_name) == versions_before
        after = ledger.history(platform.warehouse, CUSTOMER)
        assert len(after) == len(ledger_before)
        assert status_of(platform, CUSTOMER)["champion_version"] == champion_before

        # The corrupt snapshot stays in the warehouse, to be looked at.
        snapshot = platform.warehouse.query(
            f"select * from {quote(snapshot_table(CUSTOMER))} where customer = ?", [CUSTOMER]
        )
        assert len(snapshot) == metadata(result, "training_dataset")["rows"]
        if rule == "expect_column_values_to_be_unique":
            assert snapshot[column].duplicated().sum() == 10
        elif bad_value is not None:
            assert (snapshot[column].astype(str) == bad_value).sum() == len(frame) - len(history)
        else:
            assert (pd.to_datetime(snapshot[column]) > utc_now()).sum() == 3
    finally:
        platform.replace_landing(spec, original)


# ---------------------------------------------------------------------------------------------------
# Other customers, each on its own platform


@pytest.mark.slow
def test_approve_mode_customer_gets_no_champion_until_approved(platform):
    spec = platform.load_customer("northwind-lending")
    assert spec.mode == "approve"

    result = platform.train(spec.customer)

    assert result.success
    checks = check_evaluations(result)
    assert {name: check.passed for name, check in checks.items()} == dict.fromkeys(ALL_CHECKS, True)
    assert "no champion" in checks[CHAMPION_SERVES_AS_TRAINED].description
    assert metadata(result, "evaluation_report")["verdict"] == "PROMOTE"

    registry = platform.registry
    assert registry.versions(spec.model_name) == ["1"]
    assert registry.alias_version(spec.model_name, CHAMPION) is None
    assert registry.alias_version(spec.model_name, CHALLENGER) == "1"
    assert registry.version_tags(spec.model_name, "1")["approval"] == "pending"

    deployed = metadata(result, "deployed_model")
    assert deployed["action"] == "await_approval"
    assert deployed["champion_version"] == "None"
    assert "champion_uri" not in deployed

    history = ledger.history(platform.warehouse, spec.customer)
    assert len(history) == 1
    row = history.iloc[0]
    assert (row["action"], row["verdict"], row["to_version"]) == ("await_approval", "PROMOTE", "1")
    assert pd.isna(row["champion_after"])
    assert row["dagster_run_id"] == result.run_id

    status = status_of(platform, spec.customer)
    assert status["mode"] == "approve"
    assert status["champion_version"] is None
    assert status["champion_metric"] is None
    assert status["last_verdict"] == "PROMOTE"
    assert status["promotions"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "customer, task, metric, classes",
    [("swiftcart-delivery", "regression", "rmse", None), ("atlas-support", "multiclass", "f1", 3)],
)
def test_regression_and_multiclass_customers_train_end_to_end(
    trained_customer, copy_platform, tmp_path, customer, task, metric, classes
):
    trained = trained_customer(customer)  # loaded and trained by one small run, once per session
    spec, result = trained.spec, trained.result
    assert (spec.task, spec.primary_metric) == (task, metric)

    assert result.success
    with copy_platform(trained, tmp_path / "platform") as platform:
        assert materialized(result) == job_assets(platform)
        assert {name: check.passed for name, check in check_evaluations(result).items()} == dict.fromkeys(
            ALL_CHECKS, True
        )
        dataset = metadata(result, "training_dataset")
        assert dataset["rows"] == expected_snapshot_rows(platform.demo[customer].history, spec)
        if task == "regression":
            labels = platform.demo[customer].history[spec.label_column]
            assert dataset["label_mean"] == pytest.approx(labels.mean(), rel=0.05)
            assert "label_balance" not in dataset
        else:
            balance = dataset["label_balance"]
            assert all(value in balance for value in ("low", "medium", "high"))
            assert "positive_rate" not in dataset

        evaluation = metadata(result, "evaluation_report")
        assert evaluation["verdict"] == "PROMOTE"
        holdout_metric = evaluation[f"challenger_{metric}"]
        assert np.isfinite(holdout_metric)

        registry = platform.registry
        assert registry.alias_version(spec.model_name, CHAMPION) == "1"
        model = registry.load(spec.model_name, CHAMPION)
        if classes is not None:
            assert len(model.classes_) == classes
        else:
            assert not hasattr(model, "classes_")

        history = ledger.history(platform.warehouse, customer)
        assert history[["action", "verdict", "to_version", "champion_after"]].values.tolist() == [
            ["promote", "PROMOTE", "1", "1"]
        ]
        status = status_of(platform, customer)
        assert status["champion_version"] == "1"
        assert status["primary_metric"] == metric
        assert status["champion_metric"] == pytest.approx(holdout_metric, abs=1e-12)
        assert served_holdout_metric(platform, spec) == pytest.approx(holdout_metric, rel=1e-9)


# ---------------------------------------------------------------------------------------------------
# The ledger module


def _entry(customer: str, action: str, **fields) -> ledger.LedgerEntry:
    base = {
        "customer": customer,
        "model_name": f"retrain-{customer}",
        "action": action,
        "verdict": action.upper(),
        "from_version": None,
        "to_version": "1",
        "champion_after": "1",
        "reasons": "because",
    }
    return ledger.LedgerEntry(**{**base, **fields})


def test_ledger_history_is_empty_before_anything_is_recorded(warehouse):
    empty = ledger.history(warehouse)
    assert empty.empty
    assert list(empty.columns) == ledger.LEDGER_COLUMNS
    assert ledger.history(warehouse, "acme").empty


def test_ledger_is_append_only_and_filters_by_customer(warehouse):
    # The first row has nothing in several columns; later rows must still keep their text values.
    ledger.append(warehouse, _entry("acme", "promote"))
    ledger.append(warehouse, _entry("globex", "promote", dagster_run_id="run-g1", data_version="abc123"))
    ledger.append(
        warehouse,
        _entry("acme", "hold", from_version="1", to_version="2", dagster_run_id="run-a2", data_version="0123"),
    )

    everything = ledger.history(warehouse)
    assert list(everything.columns) == ledger.LEDGER_COLUMNS
    assert everything["customer"].tolist() == ["acme", "globex", "acme"]
    assert everything["recorded_at"].is_monotonic_increasing

    acme = ledger.history(warehouse, "acme")
    assert acme["action"].tolist() == ["promote", "hold"]
    assert acme["verdict"].tolist() == ["PROMOTE", "HOLD"]
    assert pd.isna(acme["from_version"].iloc[0]) and acme["from_version"].iloc[1] == "1"
    assert acme["to_version"].tolist() == ["1", "2"]
    assert pd.isna(acme["dagster_run_id"].iloc[0]) and acme["dagster_run_id"].iloc[1] == "run-a2"
    # A data version that looks like a number stays text.
    assert acme["data_version"].iloc[1] == "0123"
    assert ledger.history(warehouse, "globex")["data_version"].tolist() == ["abc123"]
    assert ledger.history(warehouse, "initech").empty

    # Appending never rewrites earlier rows.
    ledger.append(warehouse, _entry("acme", "rollback", from_version="2", to_version="1"))
    again = ledger.history(warehouse, "acme")
    assert again["action"].tolist() == ["promote", "hold", "rollback"]
    pd.testing.assert_frame_equal(again.iloc[:2].reset_index(drop=True), acme.reset_index(drop=True))
