"""Onboarding without a daemon: every validation error, the history's periods, offboarding, and the two
onboarding sensors' state machine ticked with `build_sensor_context` against backfill records."""

from __future__ import annotations

import time

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from retrain_platform import alerts, onboarding
from retrain_platform.defs.onboarding import (
    HISTORY_STAGE,
    ONBOARDING_TAG,
    STAGE_TAG,
    TRAINING_STAGE,
    add_customer_partitions,
    onboarding_history_sensor,
    onboarding_id,
    onboarding_training_sensor,
    remove_customer_partitions,
)
from retrain_platform.demo_data import generate_customer_frame
from retrain_platform.ingest import IngestError, ingest
from retrain_platform.onboarding import OnboardingError, OnboardingRequest
from retrain_platform.spec import SpecError
from retrain_platform.evidence import latest_drift


def history_csv_like(rows: int = 1_200, seed: int = 0) -> pd.DataFrame:
    """A demo history as read back from a CSV: timestamps are text."""
    frame = generate_customer_frame("lumen-streaming", rows, start="2026-03-01", end="2026-07-01", rng=seed)
    return frame.assign(snapshot_at=frame["snapshot_at"].dt.strftime("%Y-%m-%d %H:%M:%S"))


def request(**overrides) -> OnboardingRequest:
    return OnboardingRequest(**{"customer": "acme", "label": "churned", "id_column": "subscriber_id", **overrides})


# ------------------------------------------------------------------------------------------------ prepare


def test_prepare_infers_the_timestamp_features_and_task_and_cuts_the_history_in_periods():
    prepared = onboarding.prepare(history_csv_like(), request(categorical=["tenure_months"], batch_period="month"))
    spec = prepared.spec
    assert spec.timestamp_column == "snapshot_at"
    assert spec.task == "binary" and spec.primary_metric == "roc_auc"
    assert spec.mode == "approve"  # a new customer's first champion waits for a person unless --mode auto
    assert spec.kinds["tenure_months"] == "categorical" and spec.kinds["monthly_fee"] == "numeric"
    assert spec.kinds["plan"] == "categorical"
    assert spec.landing_table == "landing_acme"
    assert prepared.period == "month"
    assert onboarding.prepare(history_csv_like(), request()).period == "week"  # auto: 18 weeks <= 24
    assert prepared.batch_ids == ["history-2026-03", "history-2026-04", "history-2026-05", "history-2026-06"]
    assert prepared.history["snapshot_at"].dtype.kind == "M"
    counts = prepared.history.groupby("batch_id").size()
    months = pd.to_datetime(history_csv_like()["snapshot_at"]).dt.to_period("M").value_counts()
    assert counts.to_dict() == {f"history-{period}".lower(): n for period, n in months.items()}


def test_auto_period_is_the_finest_with_at_most_24_batches():
    weeks = pd.Series(pd.date_range("2026-01-01", periods=20 * 7, freq="D"))
    assert onboarding.choose_period(weeks) == "week"
    year = pd.Series(pd.date_range("2024-01-01", periods=365, freq="D"))
    assert onboarding.choose_period(year) == "month"
    decade = pd.Series(pd.date_range("2016-01-01", periods=3650, freq="D"))
    assert onboarding.choose_period(decade) == "quarter"
    ids = onboarding.history_batch_ids(pd.Series(pd.to_datetime(["2026-01-01", "2026-05-17"])), "week")
    assert ids.tolist() == ["history-2026-w01", "history-2026-w20"]


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda f: f.drop(columns=["churned"]), ["label column 'churned' is not in the file"]),
        (
            lambda f: f.assign(snapshot_at=f["snapshot_at"].where(f.index != 7, "not a date")),
            ["'snapshot_at'", "unparseable", "not a date"],
        ),
        (lambda f: f.assign(region="eu"), ["'region' (constant: 'eu')", "--features"]),
        (lambda f: f.assign(notes=np.nan), ["'notes' (all null)"]),
        (lambda f: f.head(150), ["only 150 labelled row(s)", "at least 200"]),
        (
            lambda f: f.assign(subscriber_id=f["subscriber_id"].where(f.index != 5, f["subscriber_id"][4])),
            ["'subscriber_id'", "appears more than once"],
        ),
        (lambda f: f.assign(churned=np.nan), ["label column 'churned' has no values"]),
    ],
    ids=[
        "missing_label",
        "unparseable_timestamp",
        "constant_column",
        "all_null_column",
        "too_few_rows",
        "id_clash",
        "no_labels",
    ],
)
def test_each_validation_error_names_the_column_and_the_rule(change, fragments):
    with pytest.raises(OnboardingError) as error:
        onboarding.prepare(change(history_csv_like()), request())
    for fragment in fragments:
        assert fragment in str(error.value)


def test_the_backtest_says_which_history_batches_the_first_model_was_trained_on():
    starts = ["2026-03-01", "2026-04-01", "2026-05-01", "2026-06-01"]
    assert onboarding.backtest_sample(starts, "2026-05-01") == [
        onboarding.IN_TRAINING,
        onboarding.IN_TRAINING,
        onboarding.IN_HOLDOUT,
        onboarding.IN_HOLDOUT,
    ]
    assert onboarding.backtest_sample(starts, "2026-04-15") == [
        onboarding.IN_TRAINING,
        onboarding.STRADDLES_HOLDOUT,
        onboarding.IN_HOLDOUT,
        onboarding.IN_HOLDOUT,
    ]
    # The last batch has no next start, so a cut after its start means it straddles.
    assert onboarding.backtest_sample(starts, "2026-06-20")[-1] == onboarding.STRADDLES_HOLDOUT


def test_an_invalid_customer_id_and_unknown_columns_are_refused():
    with pytest.raises(SpecError, match="invalid customer id"):
        onboarding.prepare(history_csv_like(), request(customer="Acme Corp"))
    with pytest.raises(OnboardingError, match="--timestamp: column 'when'"):
        onboarding.prepare(history_csv_like(), request(timestamp="when"))
    with pytest.raises(OnboardingError, match=r"--features/--categorical: column\(s\) \['nope'\]"):
        onboarding.prepare(history_csv_like(), request(features=["plan", "nope"]))
    with pytest.raises(OnboardingError, match="no timestamp column found"):
        onboarding.prepare(history_csv_like().drop(columns=["snapshot_at"]), request())


def test_columns_differing_only_by_case_are_refused_naming_both():
    with pytest.raises(OnboardingError) as refused:
        onboarding.prepare(history_csv_like().assign(Plan=lambda f: f["plan"]), request())
    assert str(refused.value) == (
        "columns 'plan' and 'Plan' differ only by case, and the warehouse cannot keep both: rename or drop one of them"
    )


@pytest.mark.parametrize(
    "name, own, where",
    [
        ("Batch_ID", "batch_id", "the batch id of every stored row"),
        ("customer", "customer", "the customer id of the training snapshot"),
    ],
)
def test_a_column_named_like_a_platform_column_is_refused(name, own, where):
    with pytest.raises(OnboardingError) as refused:
        onboarding.prepare(history_csv_like().rename(columns={"plan": name}), request())
    assert str(refused.value) == (
        f"column {name!r} collides with the platform's own column {own!r} ({where}): rename it in the file"
    )


def test_any_column_name_a_file_can_hold_is_onboarded_as_written():
    names = {"plan": "coût €", "monthly_fee": "monthly fee", "tenure_months": "tenure-months", "churned": "churned?"}
    prepared = onboarding.prepare(history_csv_like().rename(columns=names), request(label="churned?"))
    assert {"coût €", "monthly fee", "tenure-months"} <= set(prepared.spec.feature_names)
    assert prepared.spec.label_column == "churned?" and prepared.spec.label_values == [0, 1]
    assert {"coût €", "monthly fee", "tenure-months", "churned?"} <= set(prepared.history.columns)


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_epoch_timestamps_are_read_alike_at_onboarding_and_at_ingest(warehouse, unit):
    frame = generate_customer_frame("lumen-streaming", 1_200, start="2026-03-01", end="2026-07-01", rng=0)
    moments = frame["snapshot_at"].dt.floor("s")
    epoch = (moments - pd.Timestamp("1970-01-01")) // pd.Timedelta(1, unit)
    history, batch = frame.iloc[:1_000].copy(), frame.iloc[1_000:].copy()
    history["snapshot_at"], batch["snapshot_at"] = epoch.iloc[:1_000], epoch.iloc[1_000:]

    prepared = onboarding.prepare(history, request(timestamp="snapshot_at", batch_period="month"))
    assert prepared.history["snapshot_at"].tolist() == moments.iloc[:1_000].tolist()
    assert prepared.batch_ids == ["history-2026-03", "history-2026-04", "history-2026-05", "history-2026-06"]
    onboarding.load_history(warehouse, prepared, onboarding.utc_now())
    ingest(warehouse, prepared.spec, batch, "week-1")
    stored = warehouse.query('select "snapshot_at" from "landing_acme" where "batch_id" = ? order by 1', ["week-1"])
    assert stored["snapshot_at"].tolist() == sorted(moments.iloc[1_000:].tolist())


def test_numbers_too_small_for_epoch_time_are_refused_at_onboarding_with_a_hint():
    frame = history_csv_like()
    frame["snapshot_at"] = pd.to_datetime(frame["snapshot_at"]).dt.strftime("%Y%m%d").astype(int)
    with pytest.raises(OnboardingError) as refused:
        onboarding.prepare(frame, request(timestamp="snapshot_at"))
    assert str(refused.value) == (
        f"column 'snapshot_at': {frame['snapshot_at'].iloc[0]} is too small for a timestamp in seconds, milliseconds, "
        "microseconds or nanoseconds since 1970: write dates as text (2024-03-15 08:00) or as epoch time"
    )


def test_listing_features_leaves_the_others_out():
    prepared = onboarding.prepare(history_csv_like().assign(region="eu"), request(features=["plan", "monthly_fee"]))
    assert prepared.spec.feature_names == ["plan", "monthly_fee"]
    assert "region" not in prepared.history and "device" not in prepared.history


# -------------------------------------------------------------------------------------- warehouse and ids


def test_a_taken_id_is_refused_and_an_offboarded_one_needs_reuse(warehouse):
    prepared = onboarding.prepare(history_csv_like(), request())
    now = pd.Timestamp("2026-11-01").to_pydatetime()
    onboarding.check_customer_free(warehouse, "acme", reuse=False)
    onboarding.load_history(warehouse, prepared, now)
    onboarding.record(warehouse, "acme", onboarding.READY, now, rows=len(prepared.history))
    with pytest.raises(OnboardingError, match="already onboarded"):
        onboarding.check_customer_free(warehouse, "acme", reuse=True)
    onboarding.record(warehouse, "acme", onboarding.OFFBOARDED, now)
    with pytest.raises(OnboardingError, match="pass --reuse"):
        onboarding.check_customer_free(warehouse, "acme", reuse=False)
    onboarding.check_customer_free(warehouse, "acme", reuse=True)
    assert onboarding.status(warehouse, "acme")["rows"] == len(prepared.history)  # kept across states

    archived = onboarding.load_history(warehouse, prepared, pd.Timestamp("2026-11-02").to_pydatetime())
    assert archived == "landing_acme__until_20261102000000"
    assert warehouse.query(f'select count(*) as n from "{archived}"')["n"].iloc[0] == len(prepared.history)


def test_an_onboarding_in_progress_is_refused_with_how_it_goes_on(warehouse):
    """Issue 10, case 12: re-running an `onboard --wait` that was killed must say the onboarding goes on."""
    prepared = onboarding.prepare(history_csv_like(), request())
    now = pd.Timestamp("2026-11-01").to_pydatetime()
    onboarding.load_history(warehouse, prepared, now)
    onboarding.record(warehouse, "acme", onboarding.TRAINING, now)
    with pytest.raises(OnboardingError, match=r"already being onboarded \(training\).*dagster dev"):
        onboarding.check_customer_free(warehouse, "acme", reuse=True)


def test_a_landing_table_of_another_customer_is_not_overwritten(warehouse):
    now = pd.Timestamp("2026-11-01").to_pydatetime()
    onboarding.load_history(warehouse, onboarding.prepare(history_csv_like(), request(customer="a-b")), now)
    with pytest.raises(OnboardingError, match="landing table 'landing_a_b' already belongs to customer 'a-b'"):
        onboarding.load_history(warehouse, onboarding.prepare(history_csv_like(), request(customer="a_b")), now)


def test_history_batch_ids_are_reserved_and_never_trigger(warehouse):
    prepared = onboarding.prepare(history_csv_like(), request())
    onboarding.load_history(warehouse, prepared, pd.Timestamp("2026-11-01").to_pydatetime())
    with pytest.raises(IngestError, match="kept for onboarded history"):
        ingest(warehouse, prepared.spec, history_csv_like(10, seed=3), batch_id="history-2099-01")
    from retrain_platform.monitoring import DRIFT_BATCHES_TABLE

    warehouse.write(
        DRIFT_BATCHES_TABLE,
        pd.DataFrame(
            {
                "customer": ["acme", "acme"],
                "batch_id": ["history-2026-06", "week-1"],
                "batch_start": pd.to_datetime(["2026-06-01", "2026-05-01"]),
                "rows": [10, 10],
                "labelled_rows": [10, 10],
                "drift_share": [0.9, 0.1],
                "dataset_drifted": [True, False],
                "drifted_columns": ["plan", ""],
                "model_version": ["1", "1"],
                "measured_at": pd.to_datetime(["2026-11-01", "2026-11-01"]),
            }
        ),
    )
    assert [b.batch_id for b in latest_drift(warehouse, {"acme": "1"}, limit=5)["acme"]] == ["week-1"]


# ------------------------------------------------------------------------------------ the sensors' stages


@pytest.fixture
def sensor_setup(platform):
    from retrain_platform.definitions import defs

    definitions = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, sensors=defs.sensors, resources=platform.resources
    )
    prepared = onboarding.prepare(history_csv_like(), request(mode="auto"))
    now = pd.Timestamp("2026-11-01 10:00").to_pydatetime()
    onboarding.load_history(platform.warehouse, prepared, now)
    add_customer_partitions(platform.instance, "acme", prepared.batch_ids)
    onboarding.record(platform.warehouse, "acme", onboarding.REQUESTED, now, requested_at=now)
    return platform, definitions, prepared, onboarding_id("acme", now)


def tick(platform, definitions, sensor):
    context = dg.build_sensor_context(
        instance=platform.instance, definitions=definitions, resources=platform.resources, sensor_name=sensor.name
    )
    return sensor(context)


def finish(platform, request: dg.RunRequest, status: BulkActionStatus, backfill_id: str) -> None:
    """Record the backfill the daemon would have created for `request`, ended with `status`."""
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id,
        backfill_timestamp=time.time(),
        tags=request.tags,
        dynamic_partitions_store=platform.instance,
        asset_graph_subset=request.asset_graph_subset,
        title=None,
        description=None,
        run_config=request.run_config,
    )
    platform.instance.add_backfill(backfill.with_status(status))


def test_the_sensors_backfill_training_then_the_history_then_mark_the_customer_ready(sensor_setup):
    platform, definitions, prepared, key = sensor_setup
    assert isinstance(tick(platform, definitions, onboarding_history_sensor), dg.SkipReason)  # nothing trained yet

    result = tick(platform, definitions, onboarding_training_sensor)
    (training,) = result.run_requests
    assert training.requires_backfill_daemon()
    assert training.tags[ONBOARDING_TAG] == key and training.tags[STAGE_TAG] == TRAINING_STAGE
    subset = training.asset_graph_subset
    assert {k.to_user_string() for k in subset.asset_keys} == {
        "data_profile",
        "training_dataset",
        "features",
        "candidate_models",
        "evaluation_report",
        "deployed_model",
        "drift_baseline",
    }
    assert all(list(subset.get_partitions_subset(k).get_partition_keys()) == ["acme"] for k in subset.asset_keys)
    assert training.tags["retrain/trigger"] == f"onboarding: {key}"  # the ledger's trigger column
    assert onboarding.status(platform.warehouse, "acme")["status"] == onboarding.TRAINING
    assert isinstance(tick(platform, definitions, onboarding_training_sensor), dg.SkipReason)  # no second request

    finish(platform, training, BulkActionStatus.COMPLETED_SUCCESS, "train1")
    (history,) = tick(platform, definitions, onboarding_history_sensor).run_requests
    assert history.tags[STAGE_TAG] == HISTORY_STAGE
    keys = {k.to_user_string() for k in history.asset_graph_subset.asset_keys}
    assert keys == {"inference_batch", "batch_predictions", "drift_report"}
    partitions = history.asset_graph_subset.get_partitions_subset(dg.AssetKey("drift_report")).get_partition_keys()
    assert sorted(partitions) == [f"acme.{b}" for b in prepared.batch_ids]
    assert onboarding.status(platform.warehouse, "acme")["status"] == onboarding.SCORING_HISTORY

    finish(platform, history, BulkActionStatus.COMPLETED_SUCCESS, "hist1")
    tick(platform, definitions, onboarding_history_sensor)
    state = onboarding.status(platform.warehouse, "acme")
    assert state["status"] == onboarding.READY
    assert alerts.history(platform.warehouse, "acme", alerts.ONBOARDED)["message"].iloc[0] == state["message"]


def test_a_failed_training_backfill_fails_the_onboarding_and_a_rerun_resumes_it(sensor_setup):
    platform, definitions, _, _ = sensor_setup
    (training,) = tick(platform, definitions, onboarding_training_sensor).run_requests
    finish(platform, training, BulkActionStatus.COMPLETED_FAILED, "train1")
    tick(platform, definitions, onboarding_training_sensor)
    state = onboarding.status(platform.warehouse, "acme")
    assert state["status"] == onboarding.FAILED and "train1 ended COMPLETED_FAILED" in state["message"]
    assert len(alerts.history(platform.warehouse, "acme", alerts.ONBOARDING_FAILED)) == 1

    time.sleep(1)  # the re-run from the UI is a newer backfill with the same tags
    finish(platform, training, BulkActionStatus.COMPLETED_SUCCESS, "train2")
    result = tick(platform, definitions, onboarding_history_sensor)
    assert len(result.run_requests) == 1
    assert onboarding.status(platform.warehouse, "acme")["status"] == onboarding.SCORING_HISTORY


def test_offboarding_removes_the_partitions_so_no_sensor_sees_the_customer(sensor_setup):
    platform, definitions, prepared, _ = sensor_setup
    removed = remove_customer_partitions(platform.instance, "acme")
    assert removed == len(prepared.batch_ids)
    assert "acme" not in platform.instance.get_dynamic_partitions("customers")
    assert not [k for k in platform.instance.get_dynamic_partitions("batches") if k.startswith("acme.")]
    onboarding.record(platform.warehouse, "acme", onboarding.OFFBOARDED, pd.Timestamp("2026-11-02").to_pydatetime())
    assert isinstance(tick(platform, definitions, onboarding_training_sensor), dg.SkipReason)
    from retrain_platform.defs.automation import customer_specs

    assert customer_specs(platform.instance, platform.warehouse) == []
    assert platform.warehouse.query('select count(*) as n from "landing_acme"')["n"].iloc[0] == len(prepared.history)


# ------------------------------------------------------------------------- a history backfill's single run


RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def test_one_run_scores_and_measures_every_history_batch_and_a_bad_batch_is_named(platform):
    prepared = onboarding.prepare(history_csv_like(), request(batch_period="month"))
    onboarding.load_history(platform.warehouse, prepared, pd.Timestamp("2026-11-01").to_pydatetime())
    add_customer_partitions(platform.instance, "acme", prepared.batch_ids)
    assert platform.train("acme").success
    first, last = (f"acme.{b}" for b in (prepared.batch_ids[0], prepared.batch_ids[-1]))
    job = platform.defs.resolve_job_def("monitor_batch")

    result = job.execute_in_process(instance=platform.instance, tags={RANGE_START: first, RANGE_END: last})
    assert result.success
    materialized = [
        e.partition for e in result.get_asset_materialization_events() if e.asset_key.path == ["drift_report"]
    ]
    assert sorted(materialized) == [f"acme.{b}" for b in prepared.batch_ids]
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.description == "4 batches pass the suite"
    # approve mode: no champion, so the challenger scored each batch; each has its own drift row.
    predictions = platform.warehouse.query(
        'select batch_id, model_role, count(*) as n from "batch_predictions" group by 1, 2'
    )
    assert set(predictions["model_role"]) == {"challenger"}
    assert predictions.set_index("batch_id")["n"].to_dict() == prepared.history.groupby("batch_id").size().to_dict()
    drift = platform.warehouse.query('select batch_id, model_version from "drift_batches" order by batch_id')
    assert drift["batch_id"].tolist() == prepared.batch_ids and set(drift["model_version"]) == {"1"}

    platform.warehouse.execute(
        """update "landing_acme" set "snapshot_at" = timestamp '2099-01-01' where "batch_id" = 'history-2026-05'"""
    )
    platform.warehouse.execute('delete from "batch_predictions"')
    failed = job.execute_in_process(
        instance=platform.instance, tags={RANGE_START: first, RANGE_END: last}, raise_on_error=False
    )
    assert not failed.success
    (check,) = failed.get_asset_check_evaluations()
    assert not check.passed
    assert check.description.startswith("batch acme.history-2026-05: ") and "snapshot_at" in check.description
    assert platform.warehouse.query('select count(*) as n from "batch_predictions"')["n"].iloc[0] == 0
