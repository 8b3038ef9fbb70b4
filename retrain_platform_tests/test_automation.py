"""Automation as real sensor ticks: `dg.build_sensor_context` over a real Dagster instance that holds real
training and monitoring runs (DuckDB warehouse and sqlite MLflow registry under tmp_path, small demo data,
a frozen clock).

One auto-mode customer, lumen-streaming, lives through a story the module fixtures play once:
  1. its first model is trained on labels a faulty export shuffled: weak, and promoted (no floor set);
  2. experts correct the labels (a label-only ingest: the expert-labelling loop);
  3. two batches arrive whose numeric features tripled: the dataset drifts twice in a row;
  4. the drift sensor waits out the cooldown, then requests exactly one retraining, which promotes v2;
  5. a batch arrives whose labels flipped: v2 does worse than v1 (scored in shadow) -> automatic rollback.
A second customer, northwind-lending, is in approve mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.test_utils import create_run_for_test

from retrain_platform import alerts, customers, ledger, monitoring
from retrain_platform.definitions import defs
from retrain_platform.defs.automation import (
    EVIDENCE_TAG,
    TRIGGER_TAG,
    auto_rollback_sensor,
    daily_inference,
    deployment_alerts_sensor,
    drift_sensor,
    new_labels_sensor,
    performance_sensor,
    run_failure_alerts,
    weekly_retraining,
)
from retrain_platform.defs.resources import Clock
from retrain_platform.deployment import APPROVAL_TAG, APPROVED, PENDING
from retrain_platform.ingest import batch_partition_key, ingest
from retrain_platform.registry import CHAMPION, PREVIOUS_CHAMPION
from retrain_platform.settings import CUSTOMER_TAG
from retrain_platform.warehouse import quote
from retrain_platform_tests.conftest import cli

CUSTOMER = "lumen-streaming"
APPROVER = "northwind-lending"
T0 = datetime(2026, 10, 1)  # the first training
SMALL_SEARCH = {"search_iterations": 2, "cv_splits": 2}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# ---------------------------------------------------------------------------------------------------
# Acting on the platform at a given time


def resources_at(platform, now: datetime) -> dict:
    return {**platform.resources, "clock": Clock(frozen_at=now.isoformat())}


def tick(platform, sensor, now: datetime, cursor: str | None = None) -> dg.SensorResult:
    """One sensor evaluation, as the daemon would run it, against the platform's instance."""
    context = dg.build_sensor_context(instance=platform.instance, cursor=cursor, resources=resources_at(platform, now))
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def evaluate_schedule(platform, schedule, tick_time: datetime) -> list[dg.RunRequest]:
    # As a context manager: the context opens its own instance, which must be closed again.
    with dg.build_schedule_context(
        instance=platform.instance, scheduled_execution_time=tick_time, resources=resources_at(platform, tick_time)
    ) as context:
        return schedule(context)


def execute(platform, request: dg.RunRequest, job_name: str, now: datetime) -> dg.ExecuteInProcessResult:
    """Run what a sensor requested, as a real run: its partition, tags and config (a small search on top)."""
    run_config = json.loads(json.dumps(request.run_config or {}))
    if job_name == "train_customer":
        run_config["ops"]["candidate_models"]["config"].update(SMALL_SEARCH)
    return defs.resolve_job_def(job_name).execute_in_process(
        run_config={**run_config, **QUIET},
        instance=platform.instance,
        partition_key=request.partition_key,
        tags={**request.tags, "dagster/run_key": request.run_key},
        resources=resources_at(platform, now),
        raise_on_error=False,
    )


def train(platform, customer: str, now: datetime) -> dg.ExecuteInProcessResult:
    config = {"trigger": "test: onboarding"}
    run_config = {
        "ops": {"candidate_models": {"config": {**SMALL_SEARCH, **config}}, "deployed_model": {"config": config}},
        **QUIET,
    }
    result = defs.resolve_job_def("train_customer").execute_in_process(
        run_config=run_config, instance=platform.instance, partition_key=customer,
        resources=resources_at(platform, now), raise_on_error=False,
    )  # fmt: skip
    assert result.success
    return result


def monitor(platform, spec, frame: pd.DataFrame, batch_id: str, now: datetime) -> None:
    """Ingest a batch, then check, score and measure it with the monitor_batch job."""
    ingest(platform.warehouse, spec, frame, batch_id)
    key = batch_partition_key(spec.customer, batch_id)
    platform.instance.add_dynamic_partitions("batches", [key])
    result = defs.resolve_job_def("monitor_batch").execute_in_process(
        run_config=QUIET, instance=platform.instance, partition_key=key,
        resources=resources_at(platform, now), raise_on_error=False,
    )  # fmt: skip
    assert result.success


def update_spec(platform, customer: str, **changes):
    """Change a customer's spec in the catalog (as a person editing it would); returns the new spec."""
    spec = customers.load_spec(platform.warehouse, customer)
    automation = changes.pop("automation", {})
    thresholds = changes.pop("thresholds", {})
    spec = spec.model_copy(
        update={
            **changes,
            "automation": spec.automation.model_copy(update=automation),
            "thresholds": spec.thresholds.model_copy(update=thresholds),
        }
    )
    customers.save_spec(platform.warehouse, spec)
    return spec


def tripled(frame: pd.DataFrame, spec) -> pd.DataFrame:
    """Every numeric feature three times larger: five of nine features drift, so the dataset does."""
    return frame.assign(**{name: frame[name] * 3 for name in spec.numeric_features})


def alerts_of(platform, customer: str, kind: str | None = None) -> pd.DataFrame:
    return alerts.history(platform.warehouse, customer, kind)


def aliases(platform, spec) -> tuple[str | None, str | None]:
    registry = platform.registry
    return registry.alias_version(spec.model_name, CHAMPION), registry.alias_version(spec.model_name, PREVIOUS_CHAMPION)


# ---------------------------------------------------------------------------------------------------
# The story, played once


@pytest.fixture(scope="module")
def platform(open_platform, tmp_path_factory):
    with open_platform(tmp_path_factory.mktemp("automation")) as platform:
        yield platform


@pytest.fixture(scope="module")
def weak_first_model(platform):
    """Step 1 and 2: a first model trained on shuffled labels (no floor, so it is promoted); labels fixed."""
    demo = platform.demo[CUSTOMER]
    rng = np.random.default_rng(7)
    shuffled = demo.history.assign(churned=rng.permutation(demo.history["churned"].to_numpy()))
    spec = platform.load_customer(
        CUSTOMER, history=shuffled, thresholds={"floor": None, "min_absolute_change": 0.005, "secondary_tolerance": 1.0}
    )
    first = train(platform, CUSTOMER, T0)
    corrected = ingest(platform.warehouse, spec, demo.history[[spec.id_column, "churned"]], "corrections")
    assert corrected.labels_merged == len(demo.history)
    return spec, first


@dataclass
class DriftStory:
    spec: object
    after_one_batch: dg.SensorResult
    in_cooldown: dg.SensorResult
    due: dg.SensorResult
    repeated: dg.SensorResult
    alert_mode: dg.SensorResult
    alert_mode_repeated: dg.SensorResult
    drift_alerts: pd.DataFrame
    performance: dg.SensorResult
    run: dg.ExecuteInProcessResult
    champion: str | None
    previous_champion: str | None
    ledger: pd.DataFrame


@pytest.fixture(scope="module")
def drift_story(platform, weak_first_model) -> DriftStory:
    """Steps 3 and 4: two drifted batches, the sensor ticking before and after the cooldown, the run."""
    spec, _ = weak_first_model
    batches = platform.demo[CUSTOMER].batches
    monitor(platform, spec, tripled(batches[0], spec), "b1", T0 + timedelta(hours=1))
    after_one_batch = tick(platform, drift_sensor, T0 + timedelta(hours=1))
    monitor(platform, spec, tripled(batches[1], spec), "b2", T0 + timedelta(hours=2))
    in_cooldown = tick(platform, drift_sensor, T0 + timedelta(hours=2), after_one_batch.cursor)

    update_spec(platform, CUSTOMER, mode="alert")
    alert_mode = tick(platform, drift_sensor, T0 + timedelta(hours=25))
    alert_mode_repeated = tick(platform, drift_sensor, T0 + timedelta(hours=25), alert_mode.cursor)
    update_spec(platform, CUSTOMER, mode="auto")

    update_spec(platform, CUSTOMER, thresholds={"floor": 0.7})
    performance = tick(platform, performance_sensor, T0 + timedelta(hours=25))
    update_spec(platform, CUSTOMER, thresholds={"floor": None})

    due = tick(platform, drift_sensor, T0 + timedelta(hours=25), in_cooldown.cursor)
    repeated = tick(platform, drift_sensor, T0 + timedelta(hours=25), due.cursor)
    drift_alerts = alerts_of(platform, CUSTOMER, alerts.DRIFT)
    assert len(due.run_requests) == 1
    run = execute(platform, due.run_requests[0], "train_customer", T0 + timedelta(hours=25))
    champion, previous = aliases(platform, spec)
    return DriftStory(
        spec, after_one_batch, in_cooldown, due, repeated, alert_mode, alert_mode_repeated, drift_alerts,
        performance, run, champion, previous, ledger.history(platform.warehouse, CUSTOMER),
    )  # fmt: skip


@dataclass
class RollbackStory:
    predictions_roles: dict
    tick: dg.SensorResult
    repeated: dg.SensorResult
    after_rollback: dg.SensorResult
    run: dg.ExecuteInProcessResult
    champion: str | None
    previous_champion: str | None
    ledger: pd.DataFrame
    rollback_alerts: pd.DataFrame


@pytest.fixture(scope="module")
def rollback_story(platform, drift_story) -> RollbackStory:
    """Step 5: a batch with flipped labels, measured for the new champion and the previous one in shadow."""
    spec = drift_story.spec
    assert (drift_story.champion, drift_story.previous_champion) == ("2", "1"), "the drift retraining should promote v2"
    flipped = platform.demo[CUSTOMER].batches[2]
    flipped = flipped.assign(churned=1 - flipped["churned"])
    now = T0 + timedelta(hours=26)
    monitor(platform, spec, flipped, "b3", now)
    predictions = platform.warehouse.query(
        f"select model_role, min(model_version) as version from {quote(monitoring.PREDICTIONS_TABLE)} "
        "where customer = ? and batch_id = 'b3' group by 1",
        [CUSTOMER],
    )
    first = tick(platform, auto_rollback_sensor, now)
    repeated = tick(platform, auto_rollback_sensor, now, first.cursor)
    assert len(first.run_requests) == 1
    run = execute(platform, first.run_requests[0], "rollback_model", now)
    after_rollback = tick(platform, auto_rollback_sensor, now)  # a fresh cursor: only the ledger remembers
    champion, previous = aliases(platform, spec)
    return RollbackStory(
        dict(zip(predictions["model_role"], predictions["version"])), first, repeated, after_rollback, run,
        champion, previous, ledger.history(platform.warehouse, CUSTOMER), alerts_of(platform, CUSTOMER, alerts.ROLLBACK),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The drift trigger


@pytest.mark.slow
def test_one_drifted_batch_is_not_enough(drift_story):
    assert drift_story.after_one_batch.run_requests == []
    assert drift_story.after_one_batch.skip_reason.skip_message == "no new evidence"


@pytest.mark.slow
def test_drift_within_the_cooldown_launches_nothing_and_says_until_when(drift_story):
    cooling = drift_story.in_cooldown
    assert cooling.run_requests == []
    # The first training was at T0 and the cooldown is 24 hours.
    assert cooling.skip_reason.skip_message == f"{CUSTOMER}: cooldown until 2026-10-02 00:00"
    deferred = drift_story.drift_alerts.iloc[0]
    assert deferred["recorded_at"] == pd.Timestamp(T0 + timedelta(hours=2))
    assert "retraining deferred: cooldown of 24 h until 2026-10-02 00:00" in deferred["message"]


@pytest.mark.slow
def test_drift_for_two_batches_launches_exactly_one_run_that_says_why(drift_story):
    (request,) = drift_story.due.run_requests
    assert request.partition_key == CUSTOMER
    assert request.run_key == f"drift:{CUSTOMER}:b1+b2@v1"
    assert request.tags[TRIGGER_TAG] == "drift"
    assert request.tags[CUSTOMER_TAG] == CUSTOMER
    evidence = request.tags[EVIDENCE_TAG]
    assert evidence.startswith("dataset drift in 2 consecutive batches against champion v1: b1 ")
    assert "thresholds: 2 batches, dataset drifts at >= 50% of features" in evidence
    for op in ("candidate_models", "deployed_model"):
        assert request.run_config["ops"][op]["config"]["trigger"] == f"drift: {evidence}"
    # The cursor is plain JSON the daemon persists: a restarted sensor reads it back.
    assert json.loads(drift_story.due.cursor)["launched"] == {CUSTOMER: "b1+b2@v1"}


@pytest.mark.slow
def test_a_repeated_tick_launches_nothing(drift_story):
    assert drift_story.repeated.run_requests == []
    assert drift_story.repeated.cursor == drift_story.due.cursor


@pytest.mark.slow
def test_the_triggered_run_records_why_in_its_tags_and_the_ledger(platform, drift_story):
    run = drift_story.run
    assert run.success
    tags = platform.instance.get_run_by_id(run.run_id).tags
    assert tags[TRIGGER_TAG] == "drift"
    assert tags["dagster/partition"] == CUSTOMER
    assert tags["dagster/run_key"] == f"drift:{CUSTOMER}:b1+b2@v1"

    row = drift_story.ledger.iloc[-1]
    assert row["dagster_run_id"] == run.run_id
    assert row["trigger"] == f"drift: {tags[EVIDENCE_TAG]}"
    assert (row["action"], row["from_version"], row["champion_after"]) == ("promote", "1", "2")
    assert row["recorded_at"] == pd.Timestamp(T0 + timedelta(hours=25))  # the clock's time, not the wall's
    # The same answer from SQL, as a person would ask it.
    why = platform.warehouse.query(
        "select trigger from model_ledger where customer = ? and champion_after = '2' and action = 'promote'", [CUSTOMER]
    )
    assert why["trigger"].tolist() == [row["trigger"]]


@pytest.mark.slow
def test_alert_mode_launches_nothing_and_alerts_once(drift_story):
    assert drift_story.alert_mode.run_requests == []
    assert drift_story.alert_mode_repeated.run_requests == []
    messages = drift_story.drift_alerts["message"].tolist()
    # One alert while cooling down (auto mode), one in alert mode; the repeated tick and the launch add none.
    assert len(messages) == 2
    assert messages[1].endswith("alert mode: no retraining, a person decides")
    assert messages[1].startswith("dataset drift in 2 consecutive batches against champion v1")


@pytest.mark.slow
def test_performance_below_the_floor_requests_a_retraining(drift_story):
    (request,) = drift_story.performance.run_requests
    assert request.run_key == f"performance:{CUSTOMER}:b2@v1:realized"
    assert request.tags[TRIGGER_TAG] == "performance"
    evidence = request.tags[EVIDENCE_TAG]
    assert evidence.startswith("realized roc_auc ")
    assert "of champion v1 on batch b2 (500 labelled rows) is below the floor 0.7" in evidence
    realized = float(evidence.split()[2])
    assert realized < 0.6  # the model trained on shuffled labels is close to chance


# ---------------------------------------------------------------------------------------------------
# Automatic rollback


@pytest.mark.slow
def test_the_previous_champion_is_scored_in_shadow(rollback_story):
    assert rollback_story.predictions_roles == {"champion": "2", "previous_champion": "1"}


@pytest.mark.slow
def test_a_worse_new_champion_is_rolled_back_and_the_ledger_shows_both_moves(rollback_story):
    (request,) = rollback_story.tick.run_requests
    assert request.job_name is None  # the sensor's own job: rollback_model
    assert request.run_key == f"auto_rollback:{CUSTOMER}:v2-vs-v1:b3"
    config = request.run_config["ops"]["rollback_champion"]["config"]
    assert (config["customer"], config["to_version"], config["expected_champion"]) == (CUSTOMER, "1", "2")
    assert "champion v2 realized roc_auc" in config["reason"] and "tolerance 0.02" in config["reason"]

    assert rollback_story.run.success
    assert (rollback_story.champion, rollback_story.previous_champion) == ("1", "2")
    moves = rollback_story.ledger[rollback_story.ledger["action"].isin(["promote", "rollback"])]
    assert moves[["action", "from_version", "champion_after"]].values.tolist() == [
        ["promote", None, "1"],
        ["promote", "1", "2"],
        ["rollback", "2", "1"],
    ]
    rollback = moves.iloc[-1]
    assert rollback["verdict"] == "ROLLBACK"
    assert rollback["trigger"].startswith("auto_rollback: champion v2 realized roc_auc")
    assert rollback["dagster_run_id"] == rollback_story.run.run_id
    (alert,) = rollback_story.rollback_alerts.itertuples()
    assert alert.message.startswith("champion rolled back from version 2 to 1: champion v2 realized roc_auc")


@pytest.mark.slow
def test_the_rollback_is_decided_once(rollback_story):
    assert rollback_story.repeated.run_requests == []
    # Even without the cursor: the latest champion move is now a rollback, which is never judged.
    assert rollback_story.after_rollback.run_requests == []


@pytest.mark.slow
@pytest.mark.e2e  # command-line processes end to end: the end-to-end lane
def test_rollback_from_the_command_line_moves_the_champion_and_writes_the_ledger(platform, rollback_story, tmp_path):
    completed = cli("rollback", CUSTOMER, "--reason", "v2 was fine after all", home=platform.home.root, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == (
        f"{CUSTOMER}: champion rolled back 1 -> 2 (version 1 is now previous-champion); the ledger records it"
    )
    registry = platform.registry
    assert registry.alias_version(f"retrain-{CUSTOMER}", CHAMPION) == "2"
    assert registry.alias_version(f"retrain-{CUSTOMER}", PREVIOUS_CHAMPION) == "1"
    last = ledger.history(platform.warehouse, CUSTOMER).iloc[-1]
    assert (last["action"], last["from_version"], last["champion_after"]) == ("rollback", "1", "2")
    assert (last["reasons"], last["trigger"]) == ("v2 was fine after all", "manual: cli")
    assert alerts_of(platform, CUSTOMER, alerts.ROLLBACK)["message"].iloc[-1].endswith("v2 was fine after all")

    nothing_pending = cli("approve", CUSTOMER, home=platform.home.root, cwd=tmp_path)
    assert nothing_pending.returncode == 1
    assert nothing_pending.stdout == ""
    assert f"error: {CUSTOMER} has no model awaiting approval" in nothing_pending.stderr.splitlines()


# ---------------------------------------------------------------------------------------------------
# New labels, and never two trainings in flight


@pytest.mark.slow
def test_new_labels_request_a_retraining_but_never_while_one_is_in_flight(platform, rollback_story, drift_story):
    update_spec(platform, CUSTOMER, automation={"new_labels_threshold": 300, "new_labels_share": 0.0})
    now = T0 + timedelta(hours=60)
    running = create_run_for_test(
        platform.instance, job_name="train_customer", status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": CUSTOMER},
    )  # fmt: skip
    blocked = tick(platform, new_labels_sensor, now)
    platform.instance.report_run_canceled(running)
    free = tick(platform, new_labels_sensor, now, blocked.cursor)

    assert blocked.run_requests == []
    assert blocked.skip_reason.skip_message == f"{CUSTOMER}: training in flight"
    (request,) = free.run_requests
    # b3's 500 labelled rows are not in the snapshot of the drift retraining, which is the last training.
    assert request.run_key == f"new_labels:{CUSTOMER}:since-{drift_story.run.run_id}"
    assert request.tags[EVIDENCE_TAG].startswith("500 new labelled rows since the training of 2026-10-02 01:00")
    assert request.tags[EVIDENCE_TAG].endswith("threshold 300")


# ---------------------------------------------------------------------------------------------------
# Approve mode, and alerts from deployments and failed runs


@pytest.fixture(scope="module")
def approver(platform):
    spec = platform.load_customer(APPROVER)
    assert spec.mode == "approve"
    trained = train(platform, APPROVER, T0)
    return spec, trained


@pytest.mark.slow
def test_approve_mode_waits_for_a_person_then_promotes(platform, approver):
    spec, trained = approver
    registry = platform.registry
    # The training found the model fit to promote, and it waits.
    assert registry.alias_version(spec.model_name, CHAMPION) is None
    assert registry.version_tags(spec.model_name, "1")[APPROVAL_TAG] == PENDING
    alerts_tick = tick(platform, deployment_alerts_sensor, T0 + timedelta(minutes=5))
    (awaiting,) = alerts_of(platform, APPROVER, alerts.AWAITING_APPROVAL).itertuples()
    assert awaiting.message.startswith(f"version 1 awaits approval: retrain-platform approve {APPROVER} 1")
    assert awaiting.dagster_run_id == trained.run_id
    assert tick(platform, deployment_alerts_sensor, T0 + timedelta(minutes=6), alerts_tick.cursor).cursor == alerts_tick.cursor

    approval = defs.resolve_job_def("approve_model").execute_in_process(
        run_config={"ops": {"approve_challenger": {"config": {"customer": APPROVER, "approved_by": "test"}}}, **QUIET},
        instance=platform.instance, resources=resources_at(platform, T0 + timedelta(hours=3)), raise_on_error=False,
    )  # fmt: skip
    assert approval.success
    assert registry.alias_version(spec.model_name, CHAMPION) == "1"
    assert registry.version_tags(spec.model_name, "1")[APPROVAL_TAG] == APPROVED
    rows = ledger.history(platform.warehouse, APPROVER)
    assert rows[["action", "from_version", "to_version", "champion_after"]].values.tolist() == [
        ["await_approval", None, "1", None],
        ["approve", None, "1", "1"],
    ]
    assert rows["trigger"].iloc[-1] == "approval: test"
    observations = [
        event.event_specific_data.asset_observation
        for event in approval.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert [(o.asset_key.to_user_string(), o.partition, o.metadata["action"].value) for o in observations] == [
        ("deployed_model", APPROVER, "approve")
    ]


@pytest.mark.slow
def test_a_failed_run_raises_an_alert(platform, approver):
    spec, _ = approver
    # No such version, whichever test of this module ran before: the approval run fails.
    failed = defs.resolve_job_def("approve_model").execute_in_process(
        run_config={"ops": {"approve_challenger": {"config": {"customer": APPROVER, "version": "999"}}}, **QUIET},
        instance=platform.instance, resources=resources_at(platform, T0 + timedelta(hours=4)), raise_on_error=False,
        tags={CUSTOMER_TAG: APPROVER},
    )  # fmt: skip
    assert not failed.success
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=failed.get_run_failure_event(),
        dagster_instance=platform.instance,
        dagster_run=platform.instance.get_run_by_id(failed.run_id),
        resources=resources_at(platform, T0 + timedelta(hours=4)),
    ).for_run_failure()
    run_failure_alerts(context)
    (alert,) = alerts_of(platform, APPROVER, alerts.RUN_FAILURE).itertuples()
    assert alert.dagster_run_id == failed.run_id
    assert alert.message.startswith(f"run {failed.run_id[:8]} of approve_model failed")
    assert alert.recorded_at == pd.Timestamp(T0 + timedelta(hours=4))


# ---------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.slow
def test_the_weekly_retraining_skips_customers_in_their_cooldown(platform, drift_story, approver):
    tick_time = datetime(2026, 10, 2, 3, 0, tzinfo=timezone.utc)  # lumen-streaming retrained at 01:00
    requests = evaluate_schedule(platform, weekly_retraining, tick_time)
    assert [r.partition_key for r in requests] == [APPROVER]
    (request,) = requests
    assert request.run_key == f"schedule:{APPROVER}:2026-10-02T03:00"
    assert request.tags[TRIGGER_TAG] == "schedule"
    assert request.run_config["ops"]["deployed_model"]["config"]["trigger"] == (
        "schedule: weekly retraining (0 3 * * 1 UTC) of 2026-10-02 03:00 UTC"
    )


@pytest.mark.slow
def test_the_daily_inference_measures_batches_nobody_measured(platform, drift_story):
    spec = drift_story.spec
    ingest(platform.warehouse, spec, platform.demo[CUSTOMER].batches[3], "b4")
    platform.instance.add_dynamic_partitions("batches", [batch_partition_key(CUSTOMER, "b4")])
    tick_time = datetime(2026, 10, 3, 2, 0, tzinfo=timezone.utc)
    requests = evaluate_schedule(platform, daily_inference, tick_time)
    # b1 to b3 were measured; batches of customers without a champion wait.
    assert [(r.partition_key, r.run_key, r.tags[CUSTOMER_TAG]) for r in requests] == [
        (f"{CUSTOMER}.b4", f"inference:{CUSTOMER}.b4", CUSTOMER)
    ]


# ---------------------------------------------------------------------------------------------------
# Declarative automation of the monitoring chain, gated by the blocking quality check


@pytest.mark.slow
def test_a_batch_materialized_on_its_own_is_completed_only_if_its_quality_check_passed(platform):
    from retrain_platform.defs.monitoring import inference_batch, inference_batch_quality

    spec = platform.load_customer("corner-market")
    good = platform.demo["corner-market"].batches[0]
    future = platform.demo["corner-market"].batches[1]
    future = future.assign(ordered_at=future["ordered_at"] + pd.Timedelta(days=3650))  # timestamps in the future
    monitoring_group = dg.AssetSelection.groups("monitoring")
    keys = {}
    for batch_id, frame in (("good", good), ("future", future)):
        ingest(platform.warehouse, spec, frame, batch_id)
        keys[batch_id] = batch_partition_key(spec.customer, batch_id)
    platform.instance.add_dynamic_partitions("batches", list(keys.values()))
    # The automation sensor's earlier tick: new batch partitions, nothing materialized, nothing to do.
    before = dg.evaluate_automation_conditions(defs=defs, instance=platform.instance, asset_selection=monitoring_group)
    assert before.total_requested == 0

    outcomes = {
        key: dg.materialize(
            [inference_batch, inference_batch_quality], instance=platform.instance, partition_key=key,
            resources=platform.resources, run_config=QUIET, raise_on_error=False,
        ).success
        for key in keys.values()
    }  # fmt: skip
    assert outcomes == {"corner-market.good": True, "corner-market.future": False}

    after = dg.evaluate_automation_conditions(
        defs=defs, instance=platform.instance, asset_selection=monitoring_group, cursor=before.cursor
    )
    # The good batch's chain is requested (predictions and drift report, in one run); the batch whose
    # blocking check failed is kept for inspection and never scored.
    assert after.get_requested_partitions(dg.AssetKey("batch_predictions")) == {"corner-market.good"}
    assert after.get_requested_partitions(dg.AssetKey("drift_report")) == {"corner-market.good"}


def test_drift_without_new_labels_alerts_and_retrains_once_the_labels_arrive(open_platform, tmp_path):
    """Retraining on the very rows the champion learnt from cannot fix drift: the sensor waits for labels."""
    with open_platform(tmp_path) as fresh:
        fresh.load_customer(CUSTOMER)
        # Drift alone decides here (tripled features leave the label-free estimate where it was).
        spec = update_spec(fresh, CUSTOMER, automation={"drift_needs_confirmation": False})
        train(fresh, CUSTOMER, T0)
        batches = fresh.demo[CUSTOMER].batches
        for number, batch in enumerate(batches[:2], start=1):
            unlabelled = tripled(batch, spec).drop(columns=[spec.label_column])
            monitor(fresh, spec, unlabelled, f"b{number}", T0 + timedelta(hours=number))

        waiting = tick(fresh, drift_sensor, T0 + timedelta(hours=25))
        assert waiting.run_requests == []
        assert "waiting for labels (0/100)" in waiting.skip_reason.skip_message
        said = alerts_of(fresh, CUSTOMER, alerts.DRIFT)["message"].tolist()
        assert len(said) == 1
        assert "no new labels yet: 0 labelled rows since the last training, a retraining needs 100" in said[0]
        again = tick(fresh, drift_sensor, T0 + timedelta(hours=26), waiting.cursor)
        assert again.run_requests == [] and len(alerts_of(fresh, CUSTOMER, alerts.DRIFT)) == 1  # alerted once

        labels = pd.concat([batch[[spec.id_column, spec.label_column]] for batch in batches[:2]])
        assert ingest(fresh.warehouse, spec, labels, "labels").labels_merged == len(labels)
        launched = tick(fresh, drift_sensor, T0 + timedelta(hours=27), again.cursor)
        assert [request.partition_key for request in launched.run_requests] == [CUSTOMER]
        assert "retraining requested" in alerts_of(fresh, CUSTOMER, alerts.DRIFT)["message"].iloc[-1]


@pytest.mark.slow
def test_performance_waits_until_a_training_could_learn_from_the_batches_that_fell(
    trained_customer, copy_platform, tmp_path
):
    """A change's rows fill a training's holdout first (the latest rows): a challenger that never saw them is
    judged on them and held. The sensor waits until enough of them would reach the training part."""
    with copy_platform(trained_customer(CUSTOMER), tmp_path) as platform:
        # A window that keeps the whole history: 2,000 rows before the change, then 500 per batch.
        spec = update_spec(
            platform, CUSTOMER, training_window_days=3650, thresholds={"floor": 0.7}, automation={"cooldown_hours": 0}
        )
        batches = platform.demo[CUSTOMER].batches
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        flipped = [batch.assign(churned=1 - batch["churned"]) for batch in batches[:2]]
        monitor(platform, spec, flipped[0], "b1", now)
        waiting = tick(platform, performance_sensor, now)
        assert waiting.run_requests == []
        start = pd.Timestamp(batches[0][spec.timestamp_column].min()).floor("D")
        (said,) = alerts_of(platform, CUSTOMER, alerts.PERFORMANCE)["message"]
        assert "is below the floor 0.7" in said
        assert f"too few labels after the change yet: 500 labelled rows since {start:%Y-%m-%d}" in said
        assert "holds out its latest 500 rows to judge itself, so it would learn from 0 of them" in said

        # The second bad batch extends the run back to b1: its rows and b1's now outnumber the holdout.
        monitor(platform, spec, flipped[1], "b2", now)
        (request,) = tick(platform, performance_sensor, now, waiting.cursor).run_requests
        assert request.run_key == f"performance:{CUSTOMER}:b2@v1:realized"
        assert "retraining requested" in alerts_of(platform, CUSTOMER, alerts.PERFORMANCE)["message"].iloc[-1]


def test_a_tick_evaluates_one_page_of_customers_and_the_cursor_says_where_the_next_starts():
    from retrain_platform.customers import customer_page
    from retrain_platform.defs.automation import TriggerCursor
    from retrain_platform.spec import parse_spec

    specs = [
        parse_spec({"customer": name, "landing_table": f"landing_{name}", "timestamp_column": "t", "label_column": "y"})
        for name in ("c3", "c1", "c2")
    ]
    first, after = customer_page(specs, None, 2)
    assert ([spec.customer for spec in first], after) == (["c1", "c2"], "c2")
    cursor = TriggerCursor.parse(TriggerCursor(launched={"c1": "b1@v1"}, after=after).dump())
    second, after = customer_page(specs, cursor.after, 2)
    assert ([spec.customer for spec in second], after) == (["c3"], None)
    assert [spec.customer for spec in customer_page(specs, after, 2)[0]] == ["c1", "c2"], "starts over"
    assert [spec.customer for spec in customer_page(specs, "c9", 2)[0]] == ["c1", "c2"], "a removed customer"
    assert [spec.customer for spec in customer_page(specs, None, 100)[0]] == ["c1", "c2", "c3"]
    assert cursor.launched == {"c1": "b1@v1"}
