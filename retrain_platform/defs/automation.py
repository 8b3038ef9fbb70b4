"""Automation: the sensors and schedules that retrain, roll back and alert on their own, and the jobs a
person launches from the UI to approve a model or roll one back.

Each retraining trigger is a sensor that reads the evidence the monitoring stage stored, asks the pure
decisions in `retrain_platform.triggers`, and answers with `RunRequest`s of `train_customer` for the
customer's partition. The run key names the evidence, so the same evidence never launches two runs; the
tags and the training's `trigger` config say why the run exists, so the ledger and the UI can answer
"why did this model change?". Time comes from the `clock` resource (or a schedule's tick), never from
the wall clock.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg

from retrain_platform import customers as customer_store
from retrain_platform import canary, deployment, drift, evidence, ledger, monitoring, triggers
from retrain_platform.alerts import (
    AWAITING_APPROVAL,
    CHALLENGER_READY,
    DRIFT,
    PERFORMANCE,
    REJECTED,
    ROLLBACK,
    RUN_FAILURE,
    Alert,
)
from retrain_platform.defs.monitoring import monitor_batch, remeasure_batch
from retrain_platform.defs.partitions import batches, customers
from retrain_platform.defs.resources import AlertChannel, Clock, MlflowRegistry, one_connection_per_tick
from retrain_platform.defs.run_health import fail_dead_runs, worker_tags
from retrain_platform.defs.training import WarehouseProvider, deployed_model, snapshot_table, train_customer
from retrain_platform.ingest import is_history_batch, split_batch_partition_key
from retrain_platform.registry import CHAMPION
from retrain_platform.serving import ONLINE_PREDICTIONS_TABLE
from retrain_platform.settings import CUSTOMER_TAG, TRIGGER_TAG, schedules
from retrain_platform.spec import ALERT_MODE, AUTO_MODE, CustomerSpec
from retrain_platform.triggers import Trigger
from retrain_platform.warehouse import Warehouse

DRIFT_SENSOR = "drift_sensor"
PERFORMANCE_SENSOR = "performance_sensor"
NEW_LABELS_SENSOR = "new_labels_sensor"
AUTO_ROLLBACK_SENSOR = "auto_rollback_sensor"
CANARY_SENSOR = "canary_sensor"
DEPLOYMENT_ALERTS_SENSOR = "deployment_alerts_sensor"
RUN_FAILURE_SENSOR = "run_failure_alerts"
DAILY_INFERENCE = "daily_inference"
WEEKLY_RETRAINING = "weekly_retraining"
MONITORING_AUTOMATION = "monitoring_automation"

EVIDENCE_TAG = "retrain/evidence"
# Marks, in a sensor's cursor, evidence that was alerted on while it waited for new labels.
WAITING_FOR_LABELS = "|waiting-for-labels"
# How many of a champion's latest batches the retraining sensors read to find where a run of drifted or
# falling batches began (the rows a retraining must learn from start there).
CHANGE_LOOKBACK = 12
TRAINING_OPS_WITH_TRIGGER = ("candidate_models", "deployed_model")
MAX_TAG_LENGTH = 1000
# Customers one tick of a per-customer sensor evaluates at most; the next tick goes on after the last of them
# (kept in the cursor), so a tick stays well inside Dagster's 60 s limit however many customers there are.
CUSTOMERS_PER_TICK = 100

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


# ------------------------------------------------------------------------------------------- shared parts


@dataclass
class TriggerCursor:
    """Per customer, the evidence already acted on: the sensor's memory across ticks and restarts; and the
    last customer the latest tick evaluated, where the next tick's page of customers starts."""

    launched: dict[str, str] = field(default_factory=dict)
    alerted: dict[str, str] = field(default_factory=dict)
    after: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "TriggerCursor":
        data = json.loads(text) if text else {}
        return cls(
            launched=dict(data.get("launched", {})),
            alerted=dict(data.get("alerted", {})),
            after=data.get(customer_store.PAGE_CURSOR_KEY),
        )

    def dump(self) -> str:
        data = {"launched": self.launched, "alerted": self.alerted, customer_store.PAGE_CURSOR_KEY: self.after}
        return json.dumps(data, sort_keys=True)


def trigger_tags(trigger: Trigger) -> dict[str, str]:
    return {
        TRIGGER_TAG: trigger.kind,
        EVIDENCE_TAG: trigger.reason[:MAX_TAG_LENGTH],
        CUSTOMER_TAG: trigger.customer,
    }


def training_request(trigger: Trigger) -> dg.RunRequest:
    """A `train_customer` run for the trigger's customer that records why it was launched."""
    return dg.RunRequest(
        run_key=trigger.run_key,
        partition_key=trigger.customer,
        run_config={"ops": {op: {"config": {"trigger": trigger.text}} for op in TRAINING_OPS_WITH_TRIGGER}},
        tags=trigger_tags(trigger),
    )


def training_in_flight(instance: dg.DagsterInstance, customer: str) -> bool:
    """A queued or running run of the customer's partition (from a sensor, a schedule or the UI); a run whose
    process on this host was killed is marked failed first, or it would postpone retraining forever."""
    fail_dead_runs(instance, customer)
    records = instance.get_run_records(
        dg.RunsFilter(statuses=IN_FLIGHT, tags={"dagster/partition": customer}), limit=1
    )
    return bool(records)


def partitions_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """`training_in_flight` for every customer at once: the partitions with a queued or running run."""
    fail_dead_runs(instance)
    records = instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT))
    return {record.dagster_run.tags["dagster/partition"] for record in records if "dagster/partition" in record.dagster_run.tags}


def customer_specs(instance: dg.DagsterInstance, db: Warehouse) -> list[CustomerSpec]:
    """Customers that have both a partition and a spec."""
    partitions = set(instance.get_dynamic_partitions(customers.name))
    return [spec for spec in customer_store.list_specs(db) if spec.customer in partitions]


def customer_page(context: dg.SensorEvaluationContext, db: Warehouse, cursor: TriggerCursor) -> list[CustomerSpec]:
    """The customers this tick evaluates: at most `CUSTOMERS_PER_TICK`, after those of the last tick; the
    cursor moves on."""
    page, cursor.after = customer_store.customer_page(customer_specs(context.instance, db), cursor.after, CUSTOMERS_PER_TICK)
    return page


def react_to_triggers(
    context: dg.SensorEvaluationContext,
    found: list[tuple[CustomerSpec, Trigger]],
    *,
    cursor: TriggerCursor,
    db: Warehouse,
    alert_channel: AlertChannel,
    now: datetime,
    alert_kind: str | None,
    needs_new_labels: bool = False,
) -> dg.SensorResult:
    """What every retraining sensor does with the triggers it found: request a run unless the customer is
    in alert mode, a training is in flight, or the cooldown holds; and alert once per piece of evidence.

    With `needs_new_labels` (drift, performance), a training that would see fewer than the customer's
    `automation.min_labelled_rows` new labelled rows is not launched: it would learn from the same data. Nor
    is one whose training part would hold fewer than that many rows from the batches that fired the trigger
    (its `since`): those rows fill the holdout first, and a challenger that never saw the change cannot be
    shown to handle it. The evidence stays open and launches a training once enough labels have arrived."""
    requests, notes = [], []
    in_flight = partitions_in_flight(context.instance) if found else set()
    trained = evidence.last_trainings(db) if found else {}
    # Counted in the customers' own tables, so only where the answer matters (not in alert mode).
    counted = [spec for spec, _ in found if spec.mode != ALERT_MODE and needs_new_labels]
    since = {spec.customer: trigger.since for spec, trigger in found if trigger.since is not None}
    labelled = evidence.labelled_rows(
        db, counted, {spec.customer: snapshot_table(spec.customer) for spec in counted}, since=since
    )
    for spec, trigger in found:
        customer, key = spec.customer, trigger.evidence_key
        if spec.mode != ALERT_MODE and cursor.launched.get(customer) == key:
            continue
        cooldown_ends = triggers.cooldown_ends(trained.get(customer), spec.automation.cooldown_hours)
        needed = spec.automation.min_labelled_rows
        waiting = _waiting_for_labels(spec, trigger, labelled.get(customer)) if spec.mode != ALERT_MODE else None
        if spec.mode == ALERT_MODE:
            outcome = "alert mode: no retraining, a person decides"
        elif waiting is not None:
            outcome, learnable = waiting
            notes.append(f"{customer}: waiting for labels ({learnable}/{needed})")
            waiting_key = f"{key}{WAITING_FOR_LABELS}"
            if cursor.alerted.get(customer) not in (key, waiting_key):
                message = f"{trigger.reason}; {outcome}"
                alert_channel.send(db, Alert(now, customer, alert_kind or trigger.kind, message), log=context.log)
                cursor.alerted[customer] = waiting_key
            continue
        elif customer in in_flight:
            outcome = "retraining deferred: a training run is already queued or running"
            notes.append(f"{customer}: training in flight")
        elif cooldown_ends is not None and now < cooldown_ends:
            until = f"{cooldown_ends:%Y-%m-%d %H:%M}"
            outcome = f"retraining deferred: cooldown of {spec.automation.cooldown_hours:g} h until {until}"
            notes.append(f"{customer}: cooldown until {until}")
        else:
            requests.append(training_request(trigger))
            cursor.launched[customer] = key
            outcome = f"retraining requested (run key {trigger.run_key})"
            context.log.info(f"{customer}: {trigger.text}")
        if (alert_kind or spec.mode == ALERT_MODE) and cursor.alerted.get(customer) != key:
            message = f"{trigger.reason}; {outcome}"
            alert_channel.send(db, Alert(now, customer, alert_kind or trigger.kind, message), log=context.log)
            cursor.alerted[customer] = key
    skip_reason = None if requests else ("; ".join(notes) or "no new evidence")
    return dg.SensorResult(run_requests=requests, skip_reason=skip_reason, cursor=cursor.dump())


def _waiting_for_labels(
    spec: CustomerSpec, trigger: Trigger, labelled: evidence.LabelledRows | None
) -> tuple[str, int] | None:
    """Why a training now would learn too little to be worth launching, and how many rows it would learn
    from; None when it is worth it (or nothing was counted)."""
    if labelled is None:
        return None
    needed = spec.automation.min_labelled_rows
    if labelled.fresh < needed:
        return f"no new labels yet: {labelled.fresh} labelled rows since the last training, a retraining needs {needed}", labelled.fresh
    if trigger.since is None:
        return None
    learnable, held_out = triggers.rows_to_learn(labelled.window_rows, labelled.since_change, spec.holdout_fraction)
    if learnable >= needed:
        return None
    return (
        f"too few labels after the change yet: {labelled.since_change:,} labelled rows since {trigger.since:%Y-%m-%d %H:%M}, "
        f"where the evidence begins, and a training now holds out its latest {held_out:,} rows to judge itself, so it "
        f"would learn from {learnable:,} of them; a retraining needs {needed:,}"
    ), learnable


def _each_customer(
    context: dg.SensorEvaluationContext, page: list[CustomerSpec], find: Callable[[CustomerSpec], Trigger | None]
) -> list[tuple[CustomerSpec, Trigger]]:
    """Evaluate one customer at a time: a customer whose evidence cannot be read does not stop the others."""
    found = []
    for spec in page:
        try:
            trigger = find(spec)
        except Exception as error:
            context.log.error(f"{spec.customer}: could not evaluate its evidence: {error}")
            continue
        if trigger is not None:
            found.append((spec, trigger))
    return found


@dataclass
class PageEvidence:
    """What the retraining sensors read about a page of customers, read for all of them at once: champions,
    their holdout metrics, and their latest drift summaries and metrics."""

    champions: dict[str, str | None]
    holdouts: dict[str, tuple[float | None, float | None]]
    drift: dict[str, list[triggers.BatchDrift]]
    metrics: dict[str, list[triggers.BatchMetric]]

    @classmethod
    def read(cls, db: Warehouse, models, page: list[CustomerSpec], *, drift_batches: bool) -> "PageEvidence":
        by_model = evidence.alias_versions(models, [spec.model_name for spec in page], CHAMPION)
        champions = {spec.customer: by_model.get(spec.model_name) for spec in page}
        holdouts = evidence.holdout_metrics(models, by_model, {spec.model_name: spec.primary_metric for spec in page})
        metrics_needed = max([spec.automation.performance_batches for spec in page] + [CHANGE_LOOKBACK])
        drift_needed = max([spec.automation.drift_consecutive_batches for spec in page] + [CHANGE_LOOKBACK])
        return cls(
            champions=champions,
            holdouts={spec.customer: holdouts.get(spec.model_name, (None, None)) for spec in page},
            drift=evidence.latest_drift(db, champions, drift_needed) if drift_batches else {},
            metrics=evidence.recent_metrics(db, champions, {s.customer: s.primary_metric for s in page}, metrics_needed),
        )

    def confirmation(self, spec: CustomerSpec, min_drop: float, batches: int) -> triggers.Confirmation:
        holdout, holdout_estimated = self.holdouts.get(spec.customer, (None, None))
        return triggers.Confirmation(
            recent=self.metrics.get(spec.customer, []),
            holdout=holdout,
            holdout_estimated=holdout_estimated,
            min_drop=min_drop,
            min_labelled_rows=spec.automation.min_labelled_rows,
            batches=batches,
        )


# --------------------------------------------------------------------------------------- retraining sensors


@dg.sensor(
    name=DRIFT_SENSOR,
    job=train_customer,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
@one_connection_per_tick
def drift_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Retrains a customer when the dataset drift verdict holds for its K latest batches (K =
    `automation.drift_consecutive_batches`, default 2) measured against the current champion, and the
    champion's metric on the latest batch (realized, or estimated before labels arrive) fell at least half
    of `automation.performance_drop` below its holdout metric: drift that reaches the model. One run per
    piece of evidence, never while a training is in flight or within the cooldown; alert mode only alerts.
    Evaluates up to `CUSTOMERS_PER_TICK` customers a tick, the next ones on the next tick."""
    db = warehouse.get_warehouse()
    cursor = TriggerCursor.parse(context.cursor)
    page = customer_page(context, db, cursor) if db.table_exists(monitoring.DRIFT_BATCHES_TABLE) else []
    read = PageEvidence.read(db, registry.get_registry(), page, drift_batches=True) if page else None

    def find(spec: CustomerSpec) -> Trigger | None:
        if read.champions.get(spec.customer) is None:
            return None
        consecutive = spec.automation.drift_consecutive_batches
        recent = read.drift.get(spec.customer, [])
        share = drift.DriftThresholds.model_validate(spec.drift_thresholds).dataset_share
        confirmation = None
        if spec.automation.drift_needs_confirmation:
            confirmation = read.confirmation(spec, spec.automation.performance_drop / 2, 1)
        return triggers.drift_trigger(spec.customer, recent, consecutive, share, confirmation)

    found = _each_customer(context, page, find)
    return react_to_triggers(
        context, found, cursor=cursor, db=db, alert_channel=alerts, now=clock.now(), alert_kind=DRIFT, needs_new_labels=True
    )


@dg.sensor(
    name=PERFORMANCE_SENSOR,
    job=train_customer,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
@one_connection_per_tick
def performance_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Retrains a customer when its champion's primary metric on the latest batch falls below the spec's
    floor, or on each of its `automation.performance_batches` latest batches (default 2) fell
    `automation.performance_drop` (default 5%) below what the champion scored on its holdout: the realized
    metric when enough labels arrived, else the label-free estimate against the estimate on the holdout.
    Evaluates up to `CUSTOMERS_PER_TICK` customers a tick, the next ones on the next tick."""
    db = warehouse.get_warehouse()
    cursor = TriggerCursor.parse(context.cursor)
    page = customer_page(context, db, cursor) if db.table_exists(monitoring.DRIFT_BATCHES_TABLE) else []
    read = PageEvidence.read(db, registry.get_registry(), page, drift_batches=False) if page else None

    def find(spec: CustomerSpec) -> Trigger | None:
        if read.champions.get(spec.customer) is None:
            return None
        automation = spec.automation
        confirmation = read.confirmation(spec, automation.performance_drop, automation.performance_batches)
        # The confirmation has read the latest batches already; the floor is judged on the newest of them.
        return triggers.performance_trigger(
            spec.customer, confirmation.latest, spec.thresholds.floor, automation.min_labelled_rows, confirmation
        )

    found = _each_customer(context, page, find)
    return react_to_triggers(
        context, found, cursor=cursor, db=db, alert_channel=alerts, now=clock.now(), alert_kind=PERFORMANCE,
        needs_new_labels=True,
    )  # fmt: skip


@dg.sensor(
    name=NEW_LABELS_SENSOR,
    job=train_customer,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
@one_connection_per_tick
def new_labels_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Retrains a customer once a training would add at least `automation.new_labels_threshold` labelled
    rows to its last snapshot, and `automation.new_labels_share` times its size (late labels that people
    added included). Evaluates up to `CUSTOMERS_PER_TICK` customers a tick, the next ones on the next tick."""
    db = warehouse.get_warehouse()
    cursor = TriggerCursor.parse(context.cursor)
    page = customer_page(context, db, cursor)
    trained = evidence.last_trainings(db) if page else {}
    page = [spec for spec in page if spec.customer in trained]
    labelled = evidence.labelled_rows(db, page, {spec.customer: snapshot_table(spec.customer) for spec in page})

    def find(spec: CustomerSpec) -> Trigger | None:
        fresh, snapshot_rows = labelled[spec.customer][:2]
        return triggers.new_labels_trigger(
            spec.customer,
            fresh,
            spec.automation.new_labels_threshold,
            trained[spec.customer],
            snapshot_rows=snapshot_rows,
            share=spec.automation.new_labels_share,
        )

    found = _each_customer(context, page, find)
    return react_to_triggers(context, found, cursor=cursor, db=db, alert_channel=alerts, now=clock.now(), alert_kind=None)


# ------------------------------------------------------------------------------------- approvals, rollbacks


class ApprovalConfig(dg.Config):
    """Which model to promote: the latest one awaiting approval unless a version is given."""

    customer: str
    version: str | None = None
    approved_by: str = "ui"


class RollbackConfig(dg.Config):
    """Where to move the champion: back to `previous-champion` unless a version is given."""

    customer: str
    to_version: str | None = None
    expected_champion: str | None = None
    reason: str = "rolled back by hand"
    trigger: str = "manual"


@dg.op(out={})
def approve_challenger(
    context: dg.OpExecutionContext,
    config: ApprovalConfig,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
):
    """Promotes a model version awaiting approval to champion and writes the ledger."""
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, config.customer)
    entry = deployment.approve(
        db, registry.get_registry(), spec, config.version,
        now=clock.now(), approved_by=config.approved_by, dagster_run_id=context.run_id,
    )  # fmt: skip
    context.log.info(f"{spec.customer}: version {entry.to_version} approved; champion was {entry.from_version}")
    yield _champion_observation(entry)


@dg.op(out={})
def rollback_champion(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    alerts: AlertChannel,
):
    """Moves the champion back, writes the ledger and alerts."""
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, config.customer)
    now = clock.now()
    entry = deployment.rollback(
        db, registry.get_registry(), spec, config.to_version,
        now=now, reason=config.reason, trigger=config.trigger,
        expected_champion=config.expected_champion, dagster_run_id=context.run_id,
    )  # fmt: skip
    alerts.send(
        db,
        Alert(
            recorded_at=now,
            customer=spec.customer,
            kind=ROLLBACK,
            message=f"champion rolled back from version {entry.from_version} to {entry.to_version}: {config.reason}",
            dagster_run_id=context.run_id,
        ),
        log=context.log,
    )
    yield _champion_observation(entry)


def _champion_observation(entry: ledger.LedgerEntry) -> dg.AssetObservation:
    """Shows the move on the `deployed_model` asset's timeline in the UI."""
    return dg.AssetObservation(
        asset_key=deployed_model.key,
        partition=entry.customer,
        metadata={
            "action": entry.action,
            "champion_version": str(entry.champion_after),
            "previous_champion": str(entry.from_version),
            "reasons": entry.reasons,
            "trigger": entry.trigger,
        },
    )


@dg.job(description="Promote a model awaiting approval (approve mode) to champion; the ledger records who approved it.")
def approve_model():
    # No retry policy on purpose: re-running a half-applied alias move is not idempotent; a person re-runs it.
    approve_challenger()


@dg.job(description="Move a customer's champion back to the previous champion (or a named version).")
def rollback_model():
    rollback_champion()


@dg.sensor(
    name=AUTO_ROLLBACK_SENSOR,
    job=rollback_model,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
@one_connection_per_tick
def auto_rollback_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Rolls back a freshly promoted champion whose realized primary metric on its first labelled batches
    is worse than the previous champion's (scored in shadow on the same rows) by more than
    `automation.rollback_tolerance`. Alert mode only alerts. Evaluates up to `CUSTOMERS_PER_TICK` customers a
    tick, the next ones on the next tick."""
    db = warehouse.get_warehouse()
    cursor = TriggerCursor.parse(context.cursor)
    now = clock.now()
    requests = []
    page = customer_page(context, db, cursor) if db.table_exists(monitoring.DRIFT_BATCHES_TABLE) else []
    moves = evidence.last_champion_moves(db) if page else {}
    judged = [spec for spec in page if spec.customer in moves and moves[spec.customer].action in ledger.PROMOTIONS]
    champions = evidence.alias_versions(registry.get_registry(), [spec.model_name for spec in judged], CHAMPION)
    shadows = evidence.shadow_comparisons(db, {spec.customer: spec.primary_metric for spec in judged})

    def find(spec: CustomerSpec) -> Trigger | None:
        move = moves[spec.customer]
        return triggers.rollback_trigger(
            spec.customer,
            spec.primary_metric,
            move,
            champions.get(spec.model_name),
            shadows[spec.customer],
            batches_needed=spec.automation.rollback_batches,
            min_labelled_rows=spec.automation.min_labelled_rows,
            tolerance=spec.automation.rollback_tolerance,
        )

    found = _each_customer(context, judged, find)
    for spec, trigger in found:
        key = trigger.evidence_key
        if spec.mode == ALERT_MODE:
            if cursor.alerted.get(spec.customer) != key:
                message = f"{trigger.reason}; alert mode: not rolled back"
                alerts.send(db, Alert(now, spec.customer, ROLLBACK, message), log=context.log)
                cursor.alerted[spec.customer] = key
            continue
        if cursor.launched.get(spec.customer) == key:
            continue
        move = moves[spec.customer]
        rollback = {
            "customer": spec.customer,
            "to_version": move.from_version,
            "expected_champion": move.to_version,
            "reason": trigger.reason,
            "trigger": trigger.text,
        }
        requests.append(
            dg.RunRequest(
                run_key=trigger.run_key,
                run_config={"ops": {"rollback_champion": {"config": rollback}}},
                tags=trigger_tags(trigger),
            )
        )
        cursor.launched[spec.customer] = key
        context.log.info(f"{spec.customer}: {trigger.text}")
    return dg.SensorResult(
        run_requests=requests, skip_reason=None if requests else "no promotion to judge", cursor=cursor.dump()
    )


# ------------------------------------------------------------------------------------------------- canary


class CanaryPromotionConfig(dg.Config):
    """The canary to promote: the challenger and the champion the sensor compared."""

    customer: str
    challenger_version: str
    expected_champion: str


@dg.op(out={})
def promote_canary_challenger(
    context: dg.OpExecutionContext,
    config: CanaryPromotionConfig,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
):
    """Judges the canary again and promotes its challenger if its arm is still significantly better; the ledger
    records it as an approval with trigger `canary: canary_sensor`."""
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, config.customer)
    comparison = canary.compare_arms(db, spec, config.expected_champion, config.challenger_version)
    entry = canary.promote_if_better(
        db, registry.get_registry(), spec, comparison, now=clock.now(), by=CANARY_SENSOR, dagster_run_id=context.run_id
    )
    if entry is None:
        context.log.info(f"{spec.customer}: version {config.challenger_version} not promoted: {comparison.reason}")
        return
    context.log.info(f"{spec.customer}: version {entry.to_version} promoted by its canary; was {entry.from_version}")
    yield _champion_observation(entry)


@dg.job(description="Promote a challenger whose canary arm is significantly better online; the ledger records it.")
def promote_canary_model():
    promote_canary_challenger()


@dg.sensor(
    name=CANARY_SENSOR,
    job=promote_canary_model,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
@one_connection_per_tick
def canary_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Promotes the challenger of an auto-mode customer in canary (`canary_fraction` above 0) once its arm is
    significantly better than the champion's on the labels that came after the answers (`canary.compare_arms`).
    Approve and alert modes are alerted instead, once per canary: a person promotes with `canary --promote`.
    Judges up to `CUSTOMERS_PER_TICK` customers in canary a tick, the next ones on the next tick."""
    db = warehouse.get_warehouse()
    models = registry.get_registry()
    cursor = TriggerCursor.parse(context.cursor)
    now = clock.now()
    requests, notes = [], []
    in_canary = [spec for spec in customer_specs(context.instance, db) if spec.canary_fraction > 0]
    if not db.table_exists(ONLINE_PREDICTIONS_TABLE):
        in_canary = []
    in_canary, cursor.after = customer_store.customer_page(in_canary, cursor.after, CUSTOMERS_PER_TICK)
    for spec in in_canary:
        customer = spec.customer
        try:
            comparison = canary.current_canary(db, models, spec)
        except Exception as error:
            context.log.error(f"{customer}: could not judge its canary: {error}")
            continue
        if not comparison.significant:
            notes.append(f"{customer}: {comparison.verdict}")
            continue
        challenger, champion = comparison.challenger.model_version, comparison.champion.model_version
        key = f"v{challenger}-vs-v{champion}"
        if spec.mode != AUTO_MODE:
            if cursor.alerted.get(customer) != key:
                message = (
                    f"canary: version {challenger} is significantly better online than champion {champion} "
                    f"({comparison.reason}); {spec.mode} mode: promote it with "
                    f"`retrain-platform canary {customer} --promote`"
                )
                alerts.send(db, Alert(now, customer, CHALLENGER_READY, message), log=context.log)
                cursor.alerted[customer] = key
            notes.append(f"{customer}: better online, {spec.mode} mode")
            continue
        if cursor.launched.get(customer) == key:
            continue
        promotion = {"customer": customer, "challenger_version": challenger, "expected_champion": champion}
        requests.append(
            dg.RunRequest(
                run_key=f"{canary.CANARY_TRIGGER}:{customer}:{key}",
                run_config={"ops": {"promote_canary_challenger": {"config": promotion}}},
                tags={
                    TRIGGER_TAG: canary.CANARY_TRIGGER,
                    EVIDENCE_TAG: comparison.reason[:MAX_TAG_LENGTH],
                    CUSTOMER_TAG: customer,
                },
            )
        )
        cursor.launched[customer] = key
        context.log.info(f"{customer}: canary promotion of version {challenger} requested: {comparison.reason}")
    skip_reason = None if requests else ("; ".join(notes) or "no customer in canary")
    return dg.SensorResult(run_requests=requests, skip_reason=skip_reason, cursor=cursor.dump())


# ------------------------------------------------------------------------------------------------- alerts


@dg.sensor(name=DEPLOYMENT_ALERTS_SENSOR, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def deployment_alerts_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    clock: Clock,
    alerts: AlertChannel,
) -> dg.SensorResult:
    """Alerts on every training outcome a person should see: a rejected challenger, a challenger awaiting
    approval, and a better challenger in alert mode. Reads new `deployed_model` materializations."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=deployed_model.key, after_storage_id=after), limit=100, ascending=True
    ).records
    if not records:
        return dg.SensorResult(skip_reason="no new deployment", cursor=context.cursor)
    db = warehouse.get_warehouse()
    now = clock.now()
    for record in records:
        materialization = record.asset_materialization
        action = materialization.metadata["action"].value if "action" in materialization.metadata else None
        kind = {ledger.REJECT: REJECTED, ledger.AWAIT_APPROVAL: AWAITING_APPROVAL, ledger.ALERT_ONLY: CHALLENGER_READY}.get(action)
        if kind is None:
            continue
        customer = record.partition_key
        history = ledger.history(db, customer)
        row = history[history["dagster_run_id"] == record.run_id]
        version = row["to_version"].iloc[-1] if len(row) else "?"
        reasons = row["reasons"].iloc[-1] if len(row) else ""
        message = {
            REJECTED: f"challenger version {version} rejected: {reasons}",
            AWAITING_APPROVAL: (
                f"version {version} awaits approval: retrain-platform approve {customer} {version} ({reasons})"
            ),
            CHALLENGER_READY: f"version {version} beats the champion; alert mode: promote it by hand ({reasons})",
        }[kind]
        alerts.send(db, Alert(now, customer, kind, message, record.run_id), log=context.log)
    return dg.SensorResult(cursor=str(records[-1].storage_id))


@dg.run_failure_sensor(
    name=RUN_FAILURE_SENSOR,
    monitored_jobs=[
        train_customer, monitor_batch, remeasure_batch, approve_model, rollback_model, promote_canary_model
    ],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alerts(
    context: dg.RunFailureSensorContext,
    warehouse: dg.ResourceParam[WarehouseProvider],
    clock: Clock,
    alerts: AlertChannel,
) -> None:
    """Alerts when a training, monitoring, approval or rollback run fails."""
    run = context.dagster_run
    customer = run.tags.get(CUSTOMER_TAG) or _customer_of_partition(run.tags.get("dagster/partition"))
    message = f"run {run.run_id[:8]} of {run.job_name} failed: {context.failure_event.message or 'no message'}"
    alert = Alert(clock.now(), customer, RUN_FAILURE, message, run.run_id)
    alerts.send(warehouse.get_warehouse(), alert, log=context.log)


def _customer_of_partition(partition: str | None) -> str | None:
    if not partition:
        return None
    return split_batch_partition_key(partition)[0] if "." in partition else partition


# ---------------------------------------------------------------------------------------------- schedules

_SCHEDULES = schedules()


@dg.schedule(
    name=WEEKLY_RETRAINING,
    cron_schedule=_SCHEDULES.retraining,
    execution_timezone=_SCHEDULES.timezone,
    job=train_customer,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def weekly_retraining(context: dg.ScheduleEvaluationContext, warehouse: dg.ResourceParam[WarehouseProvider]):
    """Retrains every customer on a fixed cadence (`RETRAIN_RETRAINING_SCHEDULE`, default Mondays 03:00),
    except customers in alert mode or with `automation.scheduled_retraining` off, customers with a training
    in flight, and customers trained within their cooldown."""
    db = warehouse.get_warehouse()
    now = _naive_utc(context.scheduled_execution_time)
    requests, skipped = [], []
    trained = evidence.last_trainings(db)
    for spec in customer_specs(context.instance, db):
        if spec.mode == ALERT_MODE or not spec.automation.scheduled_retraining:
            continue
        if training_in_flight(context.instance, spec.customer):
            skipped.append(f"{spec.customer}: training in flight")
            continue
        if triggers.in_cooldown(trained.get(spec.customer), now, spec.automation.cooldown_hours):
            skipped.append(f"{spec.customer}: trained within its cooldown")
            continue
        trigger = Trigger(
            kind=triggers.SCHEDULE,
            customer=spec.customer,
            evidence_key=now.strftime("%Y-%m-%dT%H:%M"),
            reason=f"weekly retraining ({_SCHEDULES.retraining} {_SCHEDULES.timezone}) of {now:%Y-%m-%d %H:%M} UTC",
        )
        requests.append(training_request(trigger))
    if not requests:
        return dg.SkipReason("; ".join(skipped) or "no customer to retrain")
    return requests


@dg.schedule(
    name=DAILY_INFERENCE,
    cron_schedule=_SCHEDULES.inference,
    execution_timezone=_SCHEDULES.timezone,
    job=monitor_batch,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_inference(
    context: dg.ScheduleEvaluationContext, warehouse: dg.ResourceParam[WarehouseProvider], registry: MlflowRegistry
):
    """Scores and measures every ingested batch that has not been measured yet (`RETRAIN_INFERENCE_SCHEDULE`,
    default daily 02:00), for customers that have a champion. One run per batch, ever: a failed batch is
    re-run by a person after a look at why it failed."""
    db = warehouse.get_warehouse()
    measured = context.instance.get_materialized_partitions(dg.AssetKey("drift_report"))
    specs = {spec.customer: spec for spec in customer_specs(context.instance, db)}
    models = registry.get_registry()
    champions: dict[str, str | None] = {}
    requests = []
    for key in context.instance.get_dynamic_partitions(batches.name):
        customer, batch_id = split_batch_partition_key(key)
        if key in measured or is_history_batch(batch_id) or customer not in specs:
            continue
        if customer not in champions:
            champions[customer] = models.alias_version(specs[customer].model_name, CHAMPION)
        if champions[customer] is None:
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"inference:{key}",
                partition_key=key,
                tags={TRIGGER_TAG: triggers.SCHEDULE, CUSTOMER_TAG: customer},
            )
        )
    return requests or dg.SkipReason("every ingested batch is measured")


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


monitoring_automation = dg.AutomationConditionSensorDefinition(
    MONITORING_AUTOMATION,
    target=dg.AssetSelection.groups("monitoring"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Completes a batch's chain (predictions, drift report) when the batch is materialized on its own, "
        "once its blocking quality check passed."
    ),
)

automation_sensors = [
    monitoring_automation,
    drift_sensor,
    performance_sensor,
    new_labels_sensor,
    auto_rollback_sensor,
    canary_sensor,
    deployment_alerts_sensor,
    run_failure_alerts,
]
automation_schedules = [daily_inference, weekly_retraining]
automation_jobs = [approve_model, rollback_model, promote_canary_model]


# ------------------------------------------------------------------------------------ ticking in-process


@dataclass
class SensorTick:
    """One evaluation of a sensor outside the daemon, and the runs it launched in-process."""

    sensor_name: str
    cursor: str | None
    skip_reason: str | None
    runs: list[tuple[dg.RunRequest, dg.ExecuteInProcessResult]] = field(default_factory=list)


def tick_in_process(
    definitions: dg.Definitions,
    sensor_name: str,
    instance: dg.DagsterInstance,
    *,
    cursor: str | None = None,
    resources: dict | None = None,
    run_config: dict | None = None,
    job_run_config: dict[str, dict] | None = None,
) -> SensorTick:
    """Evaluate one sensor the way the daemon does and execute each run it requests as a real run on
    `instance`, with the request's partition, tags, run key and config (`run_config` is merged on top of
    every request's, `job_run_config[job name]` on top of that job's).

    For the demo, tests and replays at simulated times (pass a frozen `clock` in `resources`); under
    `dagster dev` the daemon ticks the sensors and the queue launches the runs."""
    sensor = definitions.resolve_sensor_def(sensor_name)
    merged_resources = {**definitions.resources, **(resources or {})}
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, sensor_name=sensor_name, resources=merged_resources, definitions=definitions
    )
    result = sensor(context)
    if not isinstance(result, dg.SensorResult):
        raise TypeError(f"{sensor_name} returned {type(result).__name__}; only SensorResult sensors tick in-process")
    skip = result.skip_reason.skip_message if isinstance(result.skip_reason, dg.SkipReason) else result.skip_reason
    tick = SensorTick(sensor_name, result.cursor, skip)
    for request in result.run_requests or []:
        job = definitions.resolve_job_def(request.job_name or sensor.job_name)
        tags = {**worker_tags(), **request.tags, "dagster/sensor_name": sensor_name}
        if request.run_key:
            tags["dagster/run_key"] = request.run_key
        config = _deep_merge(dict(request.run_config or {}), run_config or {})
        config = _deep_merge(config, (job_run_config or {}).get(job.name, {}))
        outcome = job.execute_in_process(
            run_config=config,
            instance=instance,
            partition_key=request.partition_key,
            tags=tags,
            resources=resources,
            raise_on_error=False,
        )
        tick.runs.append((request, outcome))
    return tick


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if nested else value
    return merged
