"""The one place that runs the platform's work outside the daemon: a job for a partition, a batch ingested
and monitored, the sensors ticked at a given time, an onboarding registered, waited for and summarised.

The CLI, the demo, replay and the tests call this module; it returns data, and callers decide what to
print. Runs are real runs on the Dagster instance of the home (they show in the UI); a frozen `clock`
resource replays history at simulated times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from retrain_platform import alerts, ledger, onboarding
from retrain_platform import batches as batch_states
from retrain_platform import customers as customer_store
from retrain_platform.defs.automation import (
    AUTO_ROLLBACK_SENSOR,
    DEPLOYMENT_ALERTS_SENSOR,
    DRIFT_SENSOR,
    EVIDENCE_TAG,
    NEW_LABELS_SENSOR,
    PERFORMANCE_SENSOR,
    TRAINING_OPS_WITH_TRIGGER,
    tick_in_process,
)
from retrain_platform.defs.onboarding import (
    HISTORY_STAGE,
    TRAINING_STAGE,
    add_customer_partitions,
    cancel_onboarding_backfills,
    onboarding_id,
    onboarding_progress,
    remove_customer_partitions,
    stage_backfills,
)
from retrain_platform.defs.partitions import batches, customers
from retrain_platform.defs.resources import Clock, DuckDBWarehouse, duckdb_kept_open
from retrain_platform.defs.run_health import fail_dead_runs, worker_tags
from retrain_platform.ingest import (
    BATCH_COLUMN,
    HISTORY_BATCH,
    IngestSummary,
    batch_partition_key,
    ingest,
    is_history_batch,
)
from retrain_platform.local_daemon import SharedDaemon
from retrain_platform.registry import CHAMPION, ModelRegistry
from retrain_platform.settings import CUSTOMER_TAG, Home
from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import Warehouse

# A failed run's stack trace belongs in the UI's run view; a command prints one line naming the run.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
TRAIN_JOB = "train_customer"
MONITOR_JOB = "monitor_batch"
REMEASURE_JOB = "remeasure_batch"

# Every retraining, rollback and alert sensor as shipped: what the daemon ticks under `dagster dev`.
SHIPPED_SENSORS = (DRIFT_SENSOR, PERFORMANCE_SENSOR, NEW_LABELS_SENSOR, AUTO_ROLLBACK_SENSOR, DEPLOYMENT_ALERTS_SENSOR)


class RunFailed(RuntimeError):
    """A run the caller needed did not succeed; the message names the run and what failed in it."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    job: str
    partition: str | None
    success: bool
    seconds: float
    failure: str | None = None


@dataclass
class BatchOutcome:
    """What ingesting one file did: the ingest summary, the monitoring runs, and the batches re-measured
    because their labels arrived."""

    summary: IngestSummary
    monitored: list[RunOutcome] = field(default_factory=list)
    remeasured: list[RunOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class Firing:
    """A sensor requested a run: which, for whom, on what evidence, and what the run decided."""

    sensor: str
    customer: str
    evidence: str
    run: RunOutcome
    action: str | None = None
    verdict: str | None = None
    from_version: str | None = None
    champion_after: str | None = None


def _outcome(result: dg.ExecuteInProcessResult, partition: str | None, started: float) -> RunOutcome:
    failure = None
    if not result.success:
        failure = _failed_check(result)
        if failure is None:
            failed = [event for event in result.all_events if event.is_step_failure or event.is_failure]
            messages = [_step_error(event) or event.message for event in failed if event.message]
            failure = messages[0].splitlines()[0] if messages else "the run failed"
    return RunOutcome(result.run_id, result.job_def.name, partition, result.success, time.perf_counter() - started, failure)


def _failed_check(result: dg.ExecuteInProcessResult) -> str | None:
    """The first blocking check that failed, named with its description (the column and rule), or None. A
    blocking check stops the run, so its step failure says only that a check failed."""
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            asset = evaluation.asset_key.to_user_string()
            return f"check {evaluation.check_name} on {asset} failed: {evaluation.description or 'see the run in the UI'}"
    return None


def _step_error(event) -> str | None:
    """A failed step's own error (`ValueError: Input X contains infinity`) rather than Dagster's wrapper line."""
    if not event.is_step_failure or event.step_failure_data.error is None:
        return None
    error = event.step_failure_data.error
    while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"):
        error = error.cause
    message = (error.message or "").strip()
    return f"step {event.step_key}: {message}" if message else None


INTERRUPTIONS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


def _caused_by_an_interruption(error) -> bool:
    while error is not None:
        if error.cls_name in INTERRUPTIONS:
            return True
        error = error.cause or error.context
    return False


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run ended because this process was interrupted (Ctrl-C, or a signal `interrupts` maps).
    No step has a Dagster retry policy (see `defs.training.retry_when_busy`): one would retry the interrupted
    step instead of stopping."""
    for event in result.all_events:
        if event.is_step_failure and _caused_by_an_interruption(event.step_failure_data.error):
            return True
        reason = getattr(event.event_specific_data, "failure_reason", None) if event.is_failure else None
        if getattr(reason, "value", None) == "UNEXPECTED_TERMINATION":
            return True
    return False


class Runner:
    """Runs the platform's jobs and sensors in this process, on one Dagster instance and one code location."""

    def __init__(self, definitions: dg.Definitions, instance: dg.DagsterInstance, charts: bool = True):
        self.defs = definitions
        self.instance = instance
        # Without charts, a drift report skips drawing its UI chart: a replay measures hundreds of batches.
        self.monitor_config = None if charts else {"ops": {"drift_report": {"config": {"chart": False}}}}
        # Resolved as a run would resolve them: production settings are `dg.EnvVar`s, which a resource only
        # reads once Dagster has processed its config.
        resolved = {key: definitions.resources[key].process_config_and_initialize() for key in ("warehouse", "registry", "alerts")}
        self.warehouse: Warehouse = resolved["warehouse"].get_warehouse()
        self.registry: ModelRegistry = resolved["registry"].get_registry()
        self.alerts = resolved["alerts"]

    @classmethod
    @contextmanager
    def open(cls, keep_warehouse_open: bool = False, charts: bool = True) -> Iterator[Runner]:
        """The code location and instance of the home in `RETRAIN_HOME` / `DAGSTER_HOME`.

        `keep_warehouse_open` holds a local DuckDB file open for the whole block, for work that runs many
        jobs in a row in this process; no other process can use the file meanwhile."""
        from retrain_platform.definitions import defs

        with ExitStack() as stack:
            database = getattr(defs.resources["warehouse"], "database", None)
            if keep_warehouse_open and isinstance(defs.resources["warehouse"], DuckDBWarehouse):
                stack.enter_context(duckdb_kept_open(database))
            instance = stack.enter_context(dg.DagsterInstance.get())
            fail_dead_runs(instance)
            yield cls(defs, instance, charts=charts)

    def now(self, clock: Clock | None = None):
        return (clock or self.defs.resources["clock"]).now()

    # ----------------------------------------------------------------------------------------------- runs

    def run_job(
        self,
        job_name: str,
        partition_key: str | None,
        run_config: dict | None = None,
        asset_selection=None,
        clock: Clock | None = None,
        tags: dict | None = None,
    ) -> RunOutcome:
        """One real run of a project job for one partition; a failed run is returned, not raised."""
        started = time.perf_counter()
        result = self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance,
            partition_key=partition_key,
            run_config={**QUIET, **(run_config or {})},
            asset_selection=asset_selection,
            resources={"clock": clock} if clock is not None else None,
            tags={**worker_tags(), **(tags or {})},
            raise_on_error=False,
        )
        if _interrupted(result):
            raise KeyboardInterrupt(f"run {result.run_id}")
        return _outcome(result, partition_key, started)

    def train(self, customer: str, trigger: str = "manual", clock: Clock | None = None, search: dict | None = None) -> RunOutcome:
        """The training chain for one customer; `search` overrides the candidate search's settings."""
        return self.run_job(TRAIN_JOB, customer, training_config(trigger, search), clock=clock, tags={CUSTOMER_TAG: customer})

    def has_customer_partition(self, customer: str) -> bool:
        return self.instance.has_dynamic_partition(customers.name, customer)

    def add_partitions(self, name: str, keys: list[str]) -> None:
        self.instance.add_dynamic_partitions(name, keys)

    def add_customer(self, spec: CustomerSpec, history: pd.DataFrame) -> None:
        """A customer set up from a labelled history it trains on (the demo's and replay's way, without
        onboarding's backfills): landing table, spec and partition."""
        self.warehouse.execute(f'drop table if exists "{spec.landing_table}"')
        self.warehouse.write(spec.landing_table, history.assign(**{BATCH_COLUMN: HISTORY_BATCH}))
        customer_store.save_spec(self.warehouse, spec)
        self.add_partitions(customers.name, [spec.customer])

    def ingest_and_monitor(
        self,
        spec: CustomerSpec,
        frame: pd.DataFrame,
        batch_id: str | None = None,
        monitor: bool = True,
        clock: Clock | None = None,
        replace: bool = False,
    ) -> BatchOutcome:
        """Ingest a file, then check, score and measure its batch, and re-measure older batches whose labels it
        carried. Raise `RunFailed` when the batch's monitoring fails; the batch is kept.

        The batch is monitored when the file changed its rows (new rows, or `replace`), and also when it did not
        but the batch's last monitoring never finished (an ingest or a run that was interrupted): re-running
        the same ingest completes it. A batch whose own stored rows got labels from the file is re-measured.
        All of it holds the customer's ingest lock, so a second ingest of the customer waits for this one."""
        from retrain_platform import monitoring
        from retrain_platform.ingest import ingest_lock

        with ingest_lock(Home.from_env().root, spec.customer):
            summary = ingest(self.warehouse, spec, frame, batch_id, replace=replace)
            if summary.replaced_rows:
                monitoring.forget_batch(self.warehouse, spec.customer, summary.batch_id)
            outcome = BatchOutcome(summary)
            key = batch_partition_key(spec.customer, summary.batch_id)
            changed = summary.new_rows > 0 or summary.replaced_rows > 0
            unfinished = (
                monitor
                and summary.batch_rows > 0
                and not monitoring.batch_measured(self.warehouse, spec.customer, summary.batch_id, summary.batch_rows)
            )
            new_keys = [key] if summary.batch_rows and (changed or unfinished) else []
            relabelled = [
                batch_partition_key(spec.customer, b)
                for b in summary.batches_with_new_labels
                if not is_history_batch(b) and batch_partition_key(spec.customer, b) not in new_keys
            ]
            if new_keys:
                self.add_partitions(batches.name, new_keys)
            if not monitor:
                return outcome
            tags = {CUSTOMER_TAG: spec.customer}
            for key in new_keys:
                run = self.run_job(MONITOR_JOB, key, self.monitor_config, clock=clock, tags=tags)
                outcome.monitored.append(run)
                if not run.success:
                    raise RunFailed(self._monitoring_failure(spec, summary.batch_id, key, run))
            for key in relabelled:
                run = self.run_job(REMEASURE_JOB, key, self.monitor_config, clock=clock, tags=tags)
                outcome.remeasured.append(run)
        return outcome

    def _monitoring_failure(self, spec: CustomerSpec, batch_id: str, key: str, run: RunOutcome) -> str:
        state = batch_states.state_of(self.warehouse, spec.customer, batch_id)
        if state is None or state["state"] != batch_states.BatchState.QUARANTINED:
            return f"monitoring failed for batch {key} (run {run.run_id}): {run.failure}; the batch is kept"
        return (
            f"batch {batch_id} of {spec.customer} quarantined: {state['detail']}; training, drift and metrics leave it "
            f"out: correct it with `retrain-platform ingest {spec.customer} --source FILE --batch {batch_id} --replace`, "
            f"or drop it with `retrain-platform batches {spec.customer} --drop {batch_id}`"
        )

    # ------------------------------------------------------------------------------------------- batches

    def drop_batch(self, spec: CustomerSpec, batch_id: str, by: str) -> batch_states.BatchRecord:
        """Delete a batch's rows, predictions, drift statistics and metrics, and its partition; alert."""
        from retrain_platform.ingest import ingest_lock

        with ingest_lock(Home.from_env().root, spec.customer):
            record = batch_states.drop(self.warehouse, spec, batch_id, self.now(), by)
        key = batch_partition_key(spec.customer, batch_id)
        if self.instance.has_dynamic_partition(batches.name, key):
            self.instance.delete_dynamic_partition(batches.name, key)
        message = f"batch {batch_id} dropped by {by}: {record.rows:,} row(s) and what was measured on them deleted"
        self._batch_alert(record, batch_states.BATCH_DROPPED, message)
        return record

    def release_batch(
        self, spec: CustomerSpec, batch_id: str, by: str, clock: Clock | None = None
    ) -> tuple[batch_states.BatchRecord, RunOutcome | None]:
        """Mark a quarantined batch ok once its rows pass the checks, then score and measure it (it never was);
        alert. The run is None when the batch has no partition to run (an offboarded customer)."""
        from retrain_platform.ingest import ingest_lock

        key = batch_partition_key(spec.customer, batch_id)
        with ingest_lock(Home.from_env().root, spec.customer):
            record = batch_states.release(self.warehouse, spec, batch_id, self.now(clock), by)
            message = f"batch {batch_id} released by {by}: its rows pass the checks and count again"
            self._batch_alert(record, batch_states.BATCH_RELEASED, message)
            run = None
            if self.instance.has_dynamic_partition(batches.name, key):
                run = self.run_job(MONITOR_JOB, key, self.monitor_config, clock=clock, tags={CUSTOMER_TAG: spec.customer})
        return record, run

    def _batch_alert(self, record: batch_states.BatchRecord, kind: str, message: str) -> None:
        # The command prints its own line; the alert still reaches the table and the webhook.
        quiet = logging.getLogger("retrain_platform.runner.alerts")
        quiet.propagate = False
        self.alerts.send(self.warehouse, alerts.Alert(record.recorded_at, record.customer, kind, message), log=quiet)

    def tick(
        self,
        sensor_names: tuple[str, ...] | list[str],
        cursors: dict[str, str | None],
        clock: Clock | None = None,
        search: dict | None = None,
    ) -> list[Firing]:
        """Tick each sensor once at the clock's time, as the daemon would, and run what it requests."""
        firings = []
        resources = {"clock": clock} if clock is not None else None
        for name in sensor_names:
            started = time.perf_counter()
            tick = tick_in_process(
                self.defs,
                name,
                self.instance,
                cursor=cursors.get(name),
                resources=resources,
                run_config=QUIET,
                job_run_config={TRAIN_JOB: training_config(None, search)} if search else None,
            )
            cursors[name] = tick.cursor
            for request, result in tick.runs:
                customer = request.tags[CUSTOMER_TAG]
                run = _outcome(result, request.partition_key, started)
                started = time.perf_counter()
                rows = ledger.history(self.warehouse, customer)
                rows = rows[rows["dagster_run_id"] == result.run_id]
                row = rows.iloc[-1] if len(rows) else None
                firings.append(
                    Firing(
                        sensor=name,
                        customer=customer,
                        evidence=request.tags.get(EVIDENCE_TAG, ""),
                        run=run,
                        action=None if row is None else row["action"],
                        verdict=None if row is None else row["verdict"],
                        from_version=None if row is None else row["from_version"],
                        champion_after=None if row is None else row["champion_after"],
                    )
                )
        return firings

    def champion(self, spec: CustomerSpec) -> str | None:
        return self.registry.alias_version(spec.model_name, CHAMPION)

    # ------------------------------------------------------------------------------------------ onboarding

    def register_onboarding(self, request: onboarding.OnboardingRequest, source: Path) -> onboarding.Registration:
        """Validate a history file, load it, add the partitions and record the request; the sensors do the rest."""
        from retrain_platform.ingest import read_source

        onboarding.check_customer_free(self.warehouse, request.customer, request.reuse)
        prepared = onboarding.prepare(read_source(source), request)
        spec = prepared.spec
        if request.reuse:
            previous = customer_store.load_spec(self.warehouse, request.customer)
            champion = self.registry.alias_version(spec.model_name, CHAMPION)
            if champion is not None and (previous.kinds != spec.kinds or previous.task != spec.task):
                raise onboarding.OnboardingError(
                    f"{request.customer}: its champion (version {champion}) was trained on other columns or another "
                    "task; onboard the new data under a new customer id"
                )
        now = onboarding.utc_now()
        # The spec is saved last, next to the record: a customer with a spec and no record counts as onboarded,
        # so a registration killed before it recorded anything must leave no spec (its rerun archives the table).
        archived = onboarding.load_history(self.warehouse, prepared, now, save_spec=False)
        add_customer_partitions(self.instance, spec.customer, prepared.batch_ids)
        customer_store.save_spec(self.warehouse, spec)
        onboarding.record(
            self.warehouse,
            spec.customer,
            onboarding.REQUESTED,
            now,
            mode=spec.mode,
            source=str(Path(source).resolve()),
            rows=len(prepared.history),
            labelled_rows=prepared.labelled_rows,
            batches=len(prepared.batch_ids),
            batch_period=prepared.period,
            requested_at=now,
            message="waiting for the onboarding sensors",
        )
        return onboarding.Registration(prepared=prepared, requested_at=now, archived_table=archived)

    def offboard(self, spec: CustomerSpec) -> tuple[list[str], int]:
        """Cancel the customer's onboarding backfills and remove its partitions; data, models and ledger stay.
        Returns the cancelled backfills and the number of batch partitions removed."""
        state = onboarding.status(self.warehouse, spec.customer)
        if state is not None and state["status"] == onboarding.OFFBOARDED:
            raise onboarding.OnboardingError(f"{spec.customer} is already offboarded")
        cancelled = cancel_onboarding_backfills(self.instance, spec.customer)
        removed = remove_customer_partitions(self.instance, spec.customer)
        message = "offboarded: no schedule or sensor acts for it; data, models and ledger are kept"
        onboarding.record(self.warehouse, spec.customer, onboarding.OFFBOARDED, self.now(), message=message)
        return cancelled, removed

    def onboarding_backfills(self, customer: str) -> list[dict]:
        """The latest backfill of each onboarding stage with its runs' statuses."""
        recorded = onboarding.status(self.warehouse, customer) or {}
        key = onboarding_id(customer, recorded.get("requested_at"))
        found = []
        for stage in (TRAINING_STAGE, HISTORY_STAGE):
            for backfill in stage_backfills(self.instance, key, stage)[:1]:
                runs = self.instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
                found.append(
                    {
                        "stage": stage,
                        "backfill_id": backfill.backfill_id,
                        "status": backfill.status.value,
                        "runs": len(runs),
                        "run_statuses": sorted({record.dagster_run.status.value for record in runs}),
                    }
                )
        return found

    def holdout_start(self, customer: str) -> str | None:
        """Where the latest training's holdout begins (from the `features` materialization)."""
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("features"), asset_partitions=[customer]), limit=1
        ).records
        if not records or records[0].asset_materialization is None:
            return None
        entry = records[0].asset_materialization.metadata.get("holdout_starts")
        return entry.value if entry is not None else None


def training_config(trigger: str | None, search: dict | None = None) -> dict:
    """Run config of `train_customer`: why it runs, and optionally a different candidate search."""
    config: dict = {"ops": {}}
    for op in TRAINING_OPS_WITH_TRIGGER:
        op_config = {"trigger": trigger} if trigger is not None else {}
        if op == "candidate_models" and search:
            op_config.update(search)
        if op_config:
            config["ops"][op] = {"config": op_config}
    return config


def wait_for_onboarding(
    home: Home,
    key: str,
    recorded: Callable[[], str | None],
    timeout_seconds: float,
    on_progress: Callable[[str], None],
    poll_seconds: float = 3.0,
    record_seconds: float = 120.0,
) -> str:
    """Block until onboarding `key` is ready or failed, with a daemon shared by every command that waits.

    The backfills' records say when the work is done; the daemon stays until the onboarding sensor has also
    recorded it (`recorded()` reads the onboarding table) and sent its alert, or `status` would lag behind.
    Raise `TimeoutError` after `timeout_seconds` and `DaemonStopped` if the daemon dies.
    """
    started, last, record_deadline = time.monotonic(), None, None
    with SharedDaemon(home) as daemon:
        if daemon.started_here:
            on_progress(f"started a Dagster daemon for this wait (log: {daemon.log_path})")
        with dg.DagsterInstance.get() as instance:
            while True:
                state, text = onboarding_progress(instance, key)
                if (state, text) != last:
                    last = (state, text)
                    on_progress(f"[{time.monotonic() - started:5.0f} s] {state}: {text}")
                if state in (onboarding.READY, onboarding.FAILED):
                    if recorded() == state:
                        return state
                    record_deadline = record_deadline or time.monotonic() + record_seconds
                    if time.monotonic() > record_deadline:
                        on_progress(f"the onboarding sensor has not recorded {state} yet; `status` shows it once a daemon runs")
                        return state
                elif time.monotonic() - started > timeout_seconds:
                    raise TimeoutError(f"onboarding {key} not finished after {timeout_seconds:.0f} s; it goes on in the UI")
                daemon.ensure()
                time.sleep(poll_seconds)


def with_warehouse_retry(read, attempts: int = 20, delay_seconds: float = 3.0):
    """A read made while runs write: DuckDB's single writer may hold the file for a while."""
    for attempt in range(attempts):
        try:
            return read()
        except Exception as error:
            if "lock" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay_seconds)


def automated_changes(warehouse: Warehouse, exclude_trigger_prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ledger rows the sensors caused (not those whose trigger starts with the prefix) and every alert."""
    history = ledger.history(warehouse)
    automated = history[~history["trigger"].astype(str).str.startswith(exclude_trigger_prefix)]
    return automated.reset_index(drop=True), alerts.history(warehouse)

