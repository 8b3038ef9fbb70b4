"""Onboarding: a first look at a new customer's data, and the sensor that backfills its history.

`retrain-platform onboard` validates a history file, loads it, adds the customer's partitions and records
an onboarding request. Two sensors then drive two Dagster asset backfills, each tagged with the
onboarding it belongs to so both are easy to find, watch and re-run on the Backfills page:

1. training: the `training` group (profile, snapshot, features, candidates, evaluation, deployment and the
   drift baseline) for the customer's partition;
2. history: the `monitoring` group over the history batches, scored by the first model and measured
   against its baseline; `BackfillPolicy.single_run()` makes that one run per customer, not one per period.

The second waits for the first, because the batches need a model: Dagster orders a backfill by asset
dependencies, and there is no partition mapping from `<customer>.<batch>` to `<customer>`.
"""

import json
from datetime import datetime

import dagster as dg
import pandas as pd
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

from retrain_platform import customers as customer_store
from retrain_platform import onboarding, profiling
from retrain_platform.alerts import ONBOARDED, ONBOARDING_FAILED, Alert
from retrain_platform.defs.partitions import batches, customers
from retrain_platform.defs.resources import AlertChannel, Clock, MlflowRegistry, one_connection_per_tick
from retrain_platform.defs.training import WarehouseProvider, retry_when_busy
from retrain_platform.ingest import batch_partition_key
from retrain_platform.registry import CHALLENGER, CHAMPION
from retrain_platform.settings import CUSTOMER_TAG, TRIGGER_TAG
from retrain_platform.spec import APPROVE_MODE
from retrain_platform.warehouse import quote

ONBOARDING_TRAINING_SENSOR = "onboarding_training_sensor"
ONBOARDING_HISTORY_SENSOR = "onboarding_history_sensor"
ONBOARDING_TAG = "retrain/onboarding"
STAGE_TAG = "retrain/onboarding_stage"
TRAINING_STAGE = "training"
HISTORY_STAGE = "history"
PROFILES_TABLE = profiling.PROFILES_TABLE
TRAINING_GROUP = "training"
MONITORING_GROUP = "monitoring"

SUCCEEDED = (BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED)
UNSUCCESSFUL = (BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED, BulkActionStatus.CANCELED)
# A stage requested this long ago with no backfill on record is requested again (the tick that asked failed).
LOST_REQUEST_SECONDS = 180


@dg.asset(partitions_def=customers, group_name=TRAINING_GROUP, kinds={"pandas"})
@retry_when_busy
def data_profile(
    context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[WarehouseProvider]
) -> dg.MaterializeResult:
    """What a data scientist reads before trusting a model: per column its type, missing share, distribution,
    cardinality and association with the label, the label's balance over time, and warnings (constant
    columns, id-like categoricals, possible target leakage, label shifts). Kept as JSON in `data_profiles`."""
    customer = context.partition_key
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, customer)
    columns = [c for c in [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column] if c]
    landing = db.query(f"select {', '.join(quote(c) for c in columns)} from {quote(spec.landing_table)}")
    profile = profiling.profile_frame(landing, spec)
    row = pd.DataFrame(
        {
            "customer": [customer],
            "profile_json": [json.dumps(profile.to_dict())],
            "profiled_at": [pd.Timestamp.now(tz="UTC").tz_localize(None)],
        }
    )
    db.write(PROFILES_TABLE, row, replace_where={"customer": customer})
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(profile.rows),
            "labelled_rows": dg.MetadataValue.int(profile.labelled_rows),
            "warnings": dg.MetadataValue.int(len(profile.warnings)),
            "profile": dg.MetadataValue.md(profile.to_markdown()),
            "chart": dg.MetadataValue.md(profile.chart_markdown()),
        }
    )


def onboarding_id(customer: str, requested_at) -> str:
    """Tags every backfill of one onboarding; a later re-onboarding of the same id gets a new one."""
    return f"{customer}@{pd.Timestamp(requested_at):%Y%m%dT%H%M%S}"


def stage_backfills(instance: dg.DagsterInstance, onboarding_key: str, stage: str) -> list:
    """The stage's backfills, newest first: a re-run from the UI keeps the tags, so it is found too."""
    return list(
        instance.get_backfills(filters=BulkActionsFilter(tags={ONBOARDING_TAG: onboarding_key, STAGE_TAG: stage}))
    )


def onboarding_progress(instance: dg.DagsterInstance, key: str) -> tuple[str, str]:
    """Where one onboarding stands, from Dagster's own backfill records: what `--wait` polls, so it never
    competes with the runs for the warehouse's single writer lock."""
    training = stage_backfills(instance, key, TRAINING_STAGE)
    history = stage_backfills(instance, key, HISTORY_STAGE)
    for stage, found, state in (
        (HISTORY_STAGE, history, onboarding.SCORING_HISTORY),
        (TRAINING_STAGE, training, onboarding.TRAINING),
    ):
        if not found:
            continue
        latest = found[0]
        text = f"{stage} backfill {latest.backfill_id}: {latest.status.value}"
        if latest.status in UNSUCCESSFUL:
            return onboarding.FAILED, text
        if stage == HISTORY_STAGE and latest.status in SUCCEEDED:
            return onboarding.READY, text
        return state, text
    return onboarding.REQUESTED, "waiting for the onboarding sensors"


def _subset(context: dg.SensorEvaluationContext, group: str, partition_keys: list[str]) -> AssetGraphSubset:
    asset_graph = context.repository_def.asset_graph
    keys = dg.AssetSelection.groups(group).resolve(asset_graph)
    return AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, partition) for key in keys for partition in partition_keys}, asset_graph
    )


def history_partitions(db, spec) -> list[str]:
    frame = db.query(
        f'select distinct "batch_id" from {quote(spec.landing_table)} where "batch_id" like ? order by 1',
        [onboarding.HISTORY_PREFIX + "%"],
    )
    return [batch_partition_key(spec.customer, batch) for batch in frame["batch_id"]]


def _stage_request(stage: str, key: str, customer: str, subset: AssetGraphSubset) -> dg.RunRequest:
    # A backfill request carries no run config: the training reads its trigger from the runs' tags.
    tags = {ONBOARDING_TAG: key, STAGE_TAG: stage, CUSTOMER_TAG: customer, TRIGGER_TAG: f"onboarding: {key}"}
    return dg.RunRequest.for_asset_graph_subset(subset, tags=tags)


def advance_onboardings(
    context: dg.SensorEvaluationContext, db, registry: MlflowRegistry, now: datetime, alerts: AlertChannel, stage: str
):
    """One stage's part of every onboarding in progress: request its backfill when it is due, record the
    outcome. A stage that failed and is re-run from the Backfills page is picked up when the re-run succeeds."""
    states = onboarding.all_statuses(db)
    active = states[states["status"].isin([*onboarding.IN_PROGRESS, onboarding.FAILED])]
    if active.empty:
        return dg.SkipReason("no onboarding in progress")
    partitions = set(context.instance.get_dynamic_partitions(customers.name))
    requests, notes = [], []
    for row in active.itertuples():
        customer = row.customer
        if customer not in partitions:
            continue
        key = onboarding_id(customer, row.requested_at)
        training = stage_backfills(context.instance, key, TRAINING_STAGE)
        stalled = (now - pd.Timestamp(row.updated_at).to_pydatetime()).total_seconds() > LOST_REQUEST_SECONDS
        if stage == TRAINING_STAGE:
            if not training and (row.status == onboarding.REQUESTED or stalled):
                subset = _subset(context, TRAINING_GROUP, [customer])
                requests.append(_stage_request(TRAINING_STAGE, key, customer, subset))
                onboarding.record(db, customer, onboarding.TRAINING, now, message="training backfill requested")
                notes.append(f"{customer}: training backfill requested")
            elif training and training[0].status in UNSUCCESSFUL and row.status != onboarding.FAILED:
                _fail(
                    db,
                    alerts,
                    context,
                    customer,
                    now,
                    f"training backfill {training[0].backfill_id} ended {training[0].status.value}",
                )
            continue
        if not training or training[0].status not in SUCCEEDED:
            continue
        spec = customer_store.load_spec(db, customer)
        history = stage_backfills(context.instance, key, HISTORY_STAGE)
        if not history:
            if row.status in (onboarding.TRAINING, onboarding.FAILED) or stalled:
                keys = history_partitions(db, spec)
                requests.append(_stage_request(HISTORY_STAGE, key, customer, _subset(context, MONITORING_GROUP, keys)))
                onboarding.record(
                    db,
                    customer,
                    onboarding.SCORING_HISTORY,
                    now,
                    message=f"history backfill of {len(keys)} batches requested",
                )
                notes.append(f"{customer}: history backfill requested ({len(keys)} batches)")
        elif history[0].status in SUCCEEDED:
            message = _ready_message(registry, spec)
            onboarding.record(db, customer, onboarding.READY, now, message=message)
            alerts.send(db, Alert(now, customer, ONBOARDED, message), log=context.log)
            notes.append(f"{customer}: ready")
        elif history[0].status in UNSUCCESSFUL and row.status != onboarding.FAILED:
            _fail(
                db,
                alerts,
                context,
                customer,
                now,
                f"history backfill {history[0].backfill_id} ended {history[0].status.value}",
            )
    if not requests:
        return dg.SkipReason("; ".join(notes) or "onboardings in progress: waiting for their backfills")
    return dg.SensorResult(run_requests=requests)


def _stage_sensor(stage: str, name: str, group: str, description: str) -> dg.SensorDefinition:
    # One sensor per stage: a sensor that launches a backfill must target its assets, and Dagster builds one
    # job per sensor target, which cannot mix the customer and the batch partitions.
    @dg.sensor(
        name=name,
        asset_selection=dg.AssetSelection.groups(group),
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    @one_connection_per_tick
    def stage_sensor(
        context: dg.SensorEvaluationContext,
        warehouse: dg.ResourceParam[WarehouseProvider],
        registry: MlflowRegistry,
        clock: Clock,
        alerts: AlertChannel,
    ):
        return advance_onboardings(context, warehouse.get_warehouse(), registry, clock.now(), alerts, stage)

    return stage_sensor


onboarding_training_sensor = _stage_sensor(
    TRAINING_STAGE,
    ONBOARDING_TRAINING_SENSOR,
    TRAINING_GROUP,
    "Onboarding, stage 1: for each new customer, a backfill of the `training` group on its partition "
    "(data profile, snapshot, features, candidates, evaluation, deployment, drift baseline).",
)
onboarding_history_sensor = _stage_sensor(
    HISTORY_STAGE,
    ONBOARDING_HISTORY_SENSOR,
    MONITORING_GROUP,
    "Onboarding, stage 2: once the first training succeeded, a backfill of the `monitoring` group over the "
    "customer's history batches, in one run; then the onboarding is recorded as ready and an alert says what "
    "comes next (approve the first model, in approve mode).",
)


def _fail(db, alerts: AlertChannel, context, customer: str, now: datetime, reason: str) -> None:
    message = f"onboarding failed: {reason}; see it on the Backfills page and re-run it from there"
    onboarding.record(db, customer, onboarding.FAILED, now, message=message)
    alerts.send(db, Alert(now, customer, ONBOARDING_FAILED, message), log=context.log)


def _ready_message(registry: MlflowRegistry, spec) -> str:
    models = registry.get_registry()
    champion = models.alias_version(spec.model_name, CHAMPION)
    if champion is not None:
        return f"onboarded: champion version {champion} serves models:/{spec.model_name}@champion"
    challenger = models.alias_version(spec.model_name, CHALLENGER)
    if challenger is not None and spec.mode == APPROVE_MODE:
        return (
            f"onboarded: version {challenger} awaits approval; review data_profile and evaluation_report, then run "
            f"`retrain-platform approve {spec.customer}`"
        )
    return f"onboarded: no champion (version {challenger}, mode {spec.mode}); see evaluation_report"


onboarding_assets = [data_profile]
onboarding_sensors = [onboarding_training_sensor, onboarding_history_sensor]


def add_customer_partitions(instance: dg.DagsterInstance, customer: str, batch_ids: list[str]) -> None:
    """The instance API, not a sensor's request: the partitions exist when the command returns, so the UI,
    `status` and the sensor see the customer at once, with or without a daemon running."""
    instance.add_dynamic_partitions(customers.name, [customer])
    instance.add_dynamic_partitions(batches.name, [batch_partition_key(customer, b) for b in batch_ids])


def remove_customer_partitions(instance: dg.DagsterInstance, customer: str) -> int:
    """Drop the customer's partitions, so no schedule or sensor considers it; runs and materializations stay."""
    removed = 0
    prefix = batch_partition_key(customer, "")
    for key in instance.get_dynamic_partitions(batches.name):
        if key.startswith(prefix):
            instance.delete_dynamic_partition(batches.name, key)
            removed += 1
    if instance.has_dynamic_partition(customers.name, customer):
        instance.delete_dynamic_partition(customers.name, customer)
    return removed


def cancel_onboarding_backfills(instance: dg.DagsterInstance, customer: str) -> list[str]:
    """Cancel the customer's onboarding backfills still in progress, as the UI's cancel button does."""
    cancelled = []
    for backfill in instance.get_backfills(filters=BulkActionsFilter(tags={CUSTOMER_TAG: customer})):
        if ONBOARDING_TAG in backfill.tags and backfill.status == BulkActionStatus.REQUESTED:
            instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))
            cancelled.append(backfill.backfill_id)
    return cancelled
