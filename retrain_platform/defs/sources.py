"""Sources: the sensor that turns rows an outside loader appended to a warehouse table into batches.

For each customer whose spec names a `source_table`, a tick counts the rows above the customer's high-water
mark (one query for every such customer), ingests them through the same path as a file (`sources`, then
`ingest`), adds the batch partition and requests the `monitor_batch` run that checks, scores and measures it:
rows that fail the batch's blocking quality check are quarantined there, as a file's would be. Rows that fail
the file checks (a text in a numeric column, a repeated id) are refused, nothing is stored, the mark stays
and one alert says which column broke which rule; the next tick after the source is corrected takes them.
"""

import dagster as dg

from retrain_platform import customers as customer_store
from retrain_platform import evidence, sources
from retrain_platform.alerts import Alert
from retrain_platform.defs.automation import TriggerCursor, customer_specs
from retrain_platform.defs.monitoring import monitor_batch, remeasure_batch
from retrain_platform.defs.partitions import batches
from retrain_platform.defs.resources import AlertChannel, Clock, MlflowRegistry, one_connection_per_tick
from retrain_platform.defs.training import WarehouseProvider
from retrain_platform.ingest import (
    IngestError,
    batch_partition_key,
    ingest_lock,
    is_history_batch,
)
from retrain_platform.registry import CHAMPION
from retrain_platform.settings import CUSTOMER_TAG, TRIGGER_TAG, Home

WAREHOUSE_SOURCE_SENSOR = "warehouse_source_sensor"
# Batches one tick makes at most (each is an ingest of its own); customers with more new rows wait for the next
# tick, which starts after the last one served (kept in the cursor), so every source is served in turn.
BATCHES_PER_TICK = 10


@dg.sensor(
    name=WAREHOUSE_SOURCE_SENSOR,
    jobs=[monitor_batch, remeasure_batch],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
@one_connection_per_tick
def warehouse_source_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Makes the rows appended to a customer's `source_table` since its last batch into a new batch
    (`table-000001`, ...), checked and stored as a file would be, and requests its monitoring run; a batch
    whose labels arrived with the new rows is re-measured. The high-water mark lives in `source_batches`.
    Makes up to `BATCHES_PER_TICK` batches a tick, each of at most `source_batch_rows` rows (a backlog becomes
    several batches); other sources and the rest of a backlog are served on the next ticks."""
    db = warehouse.get_warehouse()
    cursor = TriggerCursor.parse(context.cursor)
    now = clock.now()
    specs = [spec for spec in customer_specs(context.instance, db) if spec.source_table]
    if not specs:
        return dg.SensorResult(skip_reason="no customer reads a source table", cursor=cursor.dump())
    marks = sources.watermarks(db, [spec.customer for spec in specs])
    try:
        counted = sources.pending_rows(db, specs, marks)
    except sources.SourceError as error:
        # One unreadable source must not stop the others: count them one by one.
        context.log.error(str(error))
        counted = []
        for spec in specs:
            try:
                counted += sources.pending_rows(db, [spec], marks)
            except sources.SourceError as one:
                _alert_once(context, cursor, alerts, db, now, spec.customer, str(one), str(one))
    by_customer = {spec.customer: spec for spec in specs}
    requests, notes = [], []
    home = Home.from_env().root
    waiting = [pending for pending in counted if pending.rows > 0]
    served, cursor.after = customer_store.customer_page(
        [by_customer[pending.customer] for pending in waiting], cursor.after, BATCHES_PER_TICK
    )
    served_customers = {spec.customer for spec in served}
    champions = evidence.alias_versions(registry.get_registry(), [spec.model_name for spec in served], CHAMPION)
    if len(served) < len(waiting):
        notes.append(f"{len(waiting) - len(served)} more source(s) with new rows wait for the next tick")
    for pending in waiting:
        if pending.customer not in served_customers:
            continue
        spec, mark = by_customer[pending.customer], marks.get(pending.customer)
        try:
            with ingest_lock(home, spec.customer):
                made = sources.ingest_pending(db, spec, pending, mark, now)
        except IngestError as error:
            low = "the start" if mark is None else f"batch {mark.batch_id}"
            message = (
                f"{pending.rows:,} row(s) appended to {spec.source_table} after {low} refused: {error}; nothing was "
                "stored: correct them in the source table and the next tick takes them"
            )
            _alert_once(context, cursor, alerts, db, now, spec.customer, message, f"refused:{low}:{error}")
            notes.append(f"{spec.customer}: refused ({error})")
            continue
        summary = made.summary
        key = batch_partition_key(spec.customer, summary.batch_id)
        tags = {TRIGGER_TAG: sources.SOURCE_TRIGGER, CUSTOMER_TAG: spec.customer}
        if summary.batch_rows:
            # The instance API, not a request in the result: the rows are stored already, so the partition
            # must exist even if this tick's result is lost.
            context.instance.add_dynamic_partitions(batches.name, [key])
        if summary.batch_rows and champions.get(spec.model_name) is None:
            notes.append(f"{spec.customer}: batch {summary.batch_id} stored; no champion yet to score it")
        elif summary.batch_rows:
            requests.append(
                dg.RunRequest(run_key=f"{sources.SOURCE_TRIGGER}:{key}", job_name=monitor_batch.name, partition_key=key, tags=tags)
            )
        for batch_id in summary.batches_with_new_labels:
            relabelled = batch_partition_key(spec.customer, batch_id)
            if is_history_batch(batch_id) or relabelled == key:
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"{sources.SOURCE_TRIGGER}:{key}:labels:{batch_id}",
                    job_name=remeasure_batch.name,
                    partition_key=relabelled,
                    tags=tags,
                )
            )
        left = pending.rows - made.source_rows
        context.log.info(
            f"{spec.customer}: batch {summary.batch_id} from {spec.source_table}: {summary.new_rows:,} new row(s), "
            f"{summary.labels_merged:,} label(s) merged, mark now {made.high}"
            + (f"; {left:,} more row(s) wait for the next batches (source_batch_rows {spec.source_batch_rows:,})" if left > 0 else "")
        )
        notes.append(f"{spec.customer}: batch {summary.batch_id} ({summary.new_rows:,} new rows)")
    skip_reason = None if requests else ("; ".join(notes) or "no new rows in any source table")
    return dg.SensorResult(run_requests=requests, skip_reason=skip_reason, cursor=cursor.dump())


def _alert_once(context, cursor: TriggerCursor, alerts: AlertChannel, db, now, customer: str, message: str, key: str) -> None:
    if cursor.alerted.get(customer) == key:
        return
    alerts.send(db, Alert(now, customer, sources.SOURCE_REFUSED, message), log=context.log)
    cursor.alerted[customer] = key


source_sensors = [warehouse_source_sensor]
