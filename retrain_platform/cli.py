"""`retrain-platform`: the command line.

Every command exits non-zero with a one-line reason on error; `--help` works on each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from retrain_platform.local_daemon import DaemonStopped, SharedDaemon, daemon_running, exclusive
from retrain_platform.settings import Home

HOME_MARKER = ".retrain-home"


class CommandError(Exception):
    """An error the user can act on; printed as one line."""


def _home(args) -> Home:
    home = Home(Path(args.home).resolve()) if getattr(args, "home", None) else Home.from_env()
    home.export_environment()
    return home


def _fresh_home(home: Home) -> None:
    root = home.root
    if root.exists() and any(root.iterdir()):
        if not (root / HOME_MARKER).exists():
            raise CommandError(f"{root} is not empty and was not made by retrain-platform; choose another --home")
        shutil.rmtree(root)
    home.ensure()
    (root / HOME_MARKER).write_text("made by retrain-platform demo\n")


def _resources():
    from retrain_platform.definitions import defs

    warehouse = defs.resources["warehouse"].get_warehouse()
    registry = defs.resources["registry"].get_registry()
    return defs, warehouse, registry


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_job(job_name: str, partition_key: str, run_config: dict | None = None, asset_selection=None, clock=None):
    """Run a job for one partition as a real run on the Dagster instance (it shows in the UI).

    `clock` (a `Clock` resource) replaces the real time, for the demo's simulated weeks."""
    import dagster as dg

    from retrain_platform.definitions import defs

    job = defs.resolve_job_def(job_name)
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(
            instance=instance,
            partition_key=partition_key,
            run_config={**QUIET, **(run_config or {})},
            asset_selection=asset_selection,
            resources={"clock": clock} if clock is not None else None,
            raise_on_error=False,
        )


def run_training(customer: str, trigger: str = "manual", clock=None):
    """Materialize the training chain for one customer."""
    config = {"ops": {name: {"config": {"trigger": trigger}} for name in ("candidate_models", "deployed_model")}}
    return run_job("train_customer", customer, config, clock=clock)


def add_partitions(name: str, keys: list[str]) -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(name, keys)


def ingest_and_monitor(
    warehouse, spec, frame, batch_id: str | None = None, monitor: bool = True, clock=None
) -> list[str]:
    """Ingest a batch, then check, score and measure it; re-measure older batches whose labels arrived."""
    import dagster as dg

    from retrain_platform.ingest import batch_partition_key, ingest

    summary = ingest(warehouse, spec, frame, batch_id)
    lines = [
        f"{spec.customer}: batch {summary.batch_id}: {summary.new_rows:,} new rows, "
        f"{summary.labels_merged:,} labels merged"
        + (f" (ignored columns: {', '.join(summary.ignored_columns)})" if summary.ignored_columns else "")
    ]
    new_keys = [batch_partition_key(spec.customer, summary.batch_id)] if summary.new_rows else []
    relabelled = [batch_partition_key(spec.customer, b) for b in summary.batches_with_new_labels if b != summary.batch_id]
    if new_keys:
        add_partitions("batches", new_keys)
    if not monitor:
        return lines
    for key in new_keys:
        result = run_job("monitor_batch", key, clock=clock)
        lines.append(f"  monitored {key}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
        if not result.success:
            raise CommandError(f"monitoring failed for batch {key}; the batch is kept, see run {result.run_id}")
    for key in relabelled:
        if key.endswith(".history"):
            continue
        result = run_job("monitor_batch", key, asset_selection=[dg.AssetKey("drift_report")], clock=clock)
        lines.append(f"  re-measured {key} with its new labels: {'succeeded' if result.success else 'FAILED'}")
    return lines


def cmd_demo(args) -> int:
    home = _home(args)
    _fresh_home(home)
    started = time.perf_counter()
    import dagster as dg

    from retrain_platform import customers
    from retrain_platform.defs.resources import Clock
    from retrain_platform.demo_data import HISTORY_END, batch_window, demo_customers
    from retrain_platform.ingest import HISTORY_BATCH
    from retrain_platform.spec import complete_spec, parse_spec

    defs, warehouse, registry = _resources()
    demo = demo_customers(seed=args.seed)
    for customer in demo:
        spec = complete_spec(parse_spec(customer.spec), customer.history)
        warehouse.write(spec.landing_table, customer.history.assign(batch_id=HISTORY_BATCH))
        customers.save_spec(warehouse, spec)
        print(f"loaded {spec.customer}: {len(customer.history):,} rows into {spec.landing_table} ({customer.drift})")
    names = [parse_spec(c.spec).customer for c in demo]
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("customers", names)
    # The demo replays the customers' weeks at simulated times: the clock stands at the end of each week, so
    # the ledger, the alerts and the sensors' cooldown follow the data's calendar.
    clock = Clock(frozen_at=HISTORY_END.isoformat())
    failed = []
    for name in names:
        result = run_training(name, trigger="demo: first training", clock=clock)
        print(f"trained {name}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
        if not result.success:
            failed.append(name)
    cursors: dict[str, str | None] = {}
    for index in range(min(args.batches, len(demo[0].batches))):
        week_end = batch_window(index)[1]
        clock = Clock(frozen_at=week_end.isoformat())
        print(f"\nweek {index + 1} (simulated time {week_end:%Y-%m-%d}): batches arrive, then the sensors tick")
        for customer in demo:
            spec = customers.load_spec(warehouse, customer.customer)
            if spec.customer in failed:
                continue
            if registry.alias_version(spec.model_name, "champion") is None:
                if index == 0:
                    print(
                        f"{spec.customer}: no champion yet ({spec.mode} mode), its batches wait; "
                        f"approve it with: retrain-platform approve {spec.customer}"
                    )
                continue
            batch = customer.batches[index]
            for line in ingest_and_monitor(warehouse, spec, batch, batch_id=f"week-{index + 1}", clock=clock):
                print(line)
        for line in tick_automation(defs, warehouse, cursors, clock):
            print(line)
    print()
    print(drift_summary(warehouse))

    print()
    print(automated_changes(warehouse))

    from retrain_platform.status import customer_status, format_table

    print()
    print(format_table(customer_status(warehouse, registry)))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; home: {home.root}")
    print(f"open the UI with: DAGSTER_HOME={home.dagster_home} RETRAIN_HOME={home.root} dagster dev")
    if failed:
        raise CommandError(f"training failed for {', '.join(failed)}; see the runs in the UI")
    return 0


# The sensors the demo ticks after each simulated week; under `dagster dev` the daemon ticks all of them.
DEMO_SENSORS = ("drift_sensor", "performance_sensor", "auto_rollback_sensor", "deployment_alerts_sensor")


def tick_automation(defs, warehouse, cursors: dict, clock) -> list[str]:
    """Tick the demo's sensors once, as the daemon would, and run what they request; say what fired and why."""
    import dagster as dg

    from retrain_platform import ledger
    from retrain_platform.defs.automation import EVIDENCE_TAG, tick_in_process
    from retrain_platform.settings import CUSTOMER_TAG

    lines = []
    with dg.DagsterInstance.get() as instance:
        for name in DEMO_SENSORS:
            tick = tick_in_process(
                defs, name, instance, cursor=cursors.get(name), resources={"clock": clock}, run_config=QUIET
            )
            cursors[name] = tick.cursor
            for request, result in tick.runs:
                customer = request.tags[CUSTOMER_TAG]
                lines.append(f"  {name} fired for {customer}: {request.tags[EVIDENCE_TAG]}")
                history = ledger.history(warehouse, customer)
                rows = history[history["dagster_run_id"] == result.run_id]
                if not result.success or rows.empty:
                    lines.append(f"    run {result.run_id[:8]} FAILED; see it in the UI")
                    continue
                row = rows.iloc[-1]
                lines.append(
                    f"    run {result.run_id[:8]} ({result.job_def.name}): {row['action']} (verdict {row['verdict']}), "
                    f"champion {row['from_version'] or '-'} -> {row['champion_after'] or '-'}"
                )
    return lines


def automated_changes(warehouse) -> str:
    """The ledger rows the sensors caused: why each model changed, as a person would ask it from SQL."""
    from retrain_platform import alerts, ledger

    history = ledger.history(warehouse)
    automated = history[~history["trigger"].astype(str).str.startswith("demo")]
    lines = ["what the sensors did (model_ledger)"]
    for row in automated.itertuples():
        lines.append(
            f"  {row.recorded_at:%Y-%m-%d} {row.customer:<20} {row.action:<15} {row.verdict:<8} "
            f"champion {row.from_version or '-'} -> {row.champion_after or '-'}; trigger: {row.trigger}"
        )
    if automated.empty:
        lines.append("  nothing: no trigger fired")
    raised = alerts.history(warehouse)
    lines.append(f"alerts ({len(raised)} in the `alerts` table)")
    for row in raised.itertuples():
        lines.append(f"  {row.recorded_at:%Y-%m-%d} {row.customer or '-':<20} {row.kind:<17} {row.message[:140]}")
    return "\n".join(lines)


def drift_summary(warehouse) -> str:
    """Per customer and batch: the share of drifted features and which ones drifted."""
    from retrain_platform.monitoring import DRIFT_TABLE

    if not warehouse.table_exists(DRIFT_TABLE):
        return "no batch measured yet"
    frame = warehouse.query(
        f'select "customer", "batch_id", "column", "drifted" from "{DRIFT_TABLE}" order by "customer", "batch_id"'
    )
    frame["drifted"] = frame["drifted"].astype(str).str.lower().isin(["true", "1"])
    features = frame[frame["column"] != "__prediction__"]
    lines = ["drift per batch (share of drifted features: the drifted ones)"]
    for (customer, batch), rows in features.groupby(["customer", "batch_id"], sort=True):
        drifted = rows.loc[rows["drifted"], "column"].tolist()
        lines.append(f"  {customer:<20} {batch:<8} {rows['drifted'].mean():5.0%}  {', '.join(drifted) or '-'}")
    return "\n".join(lines)


def cmd_ingest(args) -> int:
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec
    from retrain_platform.ingest import read_source

    _, warehouse, _ = _resources()
    spec = load_spec(warehouse, args.customer)
    _refuse_offboarded(warehouse, spec.customer)
    frame = read_source(args.source)
    for line in ingest_and_monitor(warehouse, spec, frame, batch_id=args.batch, monitor=not args.no_monitor):
        print(line)
    return 0


def _refuse_offboarded(warehouse, customer: str) -> None:
    from retrain_platform import onboarding

    state = onboarding.status(warehouse, customer)
    if state is not None and state["status"] == onboarding.OFFBOARDED:
        raise CommandError(f"{customer} is offboarded: onboard it again with --reuse to train or ingest")


def cmd_status(args) -> int:
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}: run `retrain-platform demo` first")
    from retrain_platform.status import customer_status, format_table

    _, warehouse, registry = _resources()
    rows = customer_status(warehouse, registry)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_train(args) -> int:
    from retrain_platform.spec import validate_customer_id

    validate_customer_id(args.customer)
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec

    _, warehouse, _ = _resources()
    load_spec(warehouse, args.customer)
    _refuse_offboarded(warehouse, args.customer)
    result = run_training(args.customer)
    print(f"run {result.run_id}: {'succeeded' if result.success else 'failed'}")
    if not result.success:
        raise CommandError(f"training run {result.run_id} failed for {args.customer}; see the run in the UI")
    return 0


def _deployment_context(args):
    """The warehouse, registry, spec and current time for approve and rollback."""
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec

    defs, warehouse, registry = _resources()
    return defs, warehouse, registry, load_spec(warehouse, args.customer)


def cmd_approve(args) -> int:
    import getpass

    from retrain_platform import deployment

    defs, warehouse, registry, spec = _deployment_context(args)
    now = defs.resources["clock"].now()
    entry = deployment.approve(warehouse, registry, spec, args.version, now=now, approved_by=f"cli:{getpass.getuser()}")
    print(
        f"{spec.customer}: version {entry.to_version} approved; champion {entry.from_version or '-'} -> "
        f"{entry.champion_after} (models:/{spec.model_name}@champion); the ledger records it"
    )
    return 0


def cmd_rollback(args) -> int:
    import logging

    from retrain_platform import alerts, deployment

    defs, warehouse, registry, spec = _deployment_context(args)
    now = defs.resources["clock"].now()
    reason = args.reason or "rolled back by hand from the command line"
    entry = deployment.rollback(warehouse, registry, spec, args.to, now=now, reason=reason, trigger="manual: cli")
    quiet = logging.getLogger("retrain_platform.cli.alerts")
    quiet.propagate = False  # the command prints its own line; the alert still reaches the table and webhook
    message = f"champion rolled back from version {entry.from_version} to {entry.to_version}: {reason}"
    defs.resources["alerts"].send(warehouse, alerts.Alert(now, spec.customer, alerts.ROLLBACK, message), log=quiet)
    print(
        f"{spec.customer}: champion rolled back {entry.from_version} -> {entry.to_version} "
        f"(version {entry.from_version} is now previous-champion); the ledger records it"
    )
    return 0


# ---------------------------------------------------------------------------------------------- onboarding


def _names(values: list[str] | None) -> list[str] | None:
    """`--features a b`, `--features a,b` and repeated flags all give ["a", "b"]."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _register_onboarding(args, warehouse, registry):
    """Validate the source, load the history, add the partitions and record the request; the sensors do the rest."""
    import dagster as dg

    from retrain_platform import onboarding
    from retrain_platform.customers import load_spec
    from retrain_platform.defs.onboarding import add_customer_partitions
    from retrain_platform.ingest import read_source

    onboarding.check_customer_free(warehouse, args.customer, args.reuse)
    request = onboarding.OnboardingRequest(
        customer=args.customer,
        label=args.label,
        timestamp=args.timestamp,
        id_column=args.id,
        features=_names(args.features),
        categorical=_names(args.categorical) or [],
        task=args.task,
        mode=args.mode,
        batch_period=args.batch_period,
        reuse=args.reuse,
    )
    prepared = onboarding.prepare(read_source(args.source), request)
    spec = prepared.spec
    if args.reuse:
        previous = load_spec(warehouse, args.customer)
        champion = registry.alias_version(spec.model_name, "champion")
        if champion is not None and (previous.kinds != spec.kinds or previous.task != spec.task):
            raise CommandError(
                f"{args.customer}: its champion (version {champion}) was trained on other columns or another task; "
                "onboard the new data under a new customer id"
            )
    now = onboarding.utc_now()
    archived = onboarding.load_history(warehouse, prepared, now)
    with dg.DagsterInstance.get() as instance:
        add_customer_partitions(instance, spec.customer, prepared.batch_ids)
    onboarding.record(
        warehouse,
        spec.customer,
        onboarding.REQUESTED,
        now,
        mode=spec.mode,
        source=str(Path(args.source).resolve()),
        rows=len(prepared.history),
        labelled_rows=prepared.labelled_rows,
        batches=len(prepared.batch_ids),
        batch_period=prepared.period,
        requested_at=now,
        message="waiting for the onboarding sensors",
    )
    kinds = {kind: sum(1 for k in spec.kinds.values() if k == kind) for kind in ("numeric", "categorical")}
    print(
        f"{spec.customer}: {len(prepared.history):,} rows ({prepared.labelled_rows:,} labelled) into {spec.landing_table}; "
        f"task {spec.task}, metric {spec.primary_metric}, label {spec.label_column!r}, timestamp {spec.timestamp_column!r}, "
        f"id {spec.id_column!r}; {kinds['numeric']} numeric and {kinds['categorical']} categorical features; mode {spec.mode}"
    )
    first, last = prepared.batch_ids[0], prepared.batch_ids[-1]
    print(f"  history cut into {len(prepared.batch_ids)} {prepared.period}ly batches: {first} .. {last}")
    if archived:
        print(f"  the earlier landing table is kept as {archived}")
    print("  partitions added; the onboarding sensors now backfill: first training, then the history batches")
    return spec, now


def cmd_onboard(args) -> int:
    from retrain_platform import onboarding
    from retrain_platform.spec import validate_customer_id

    validate_customer_id(args.customer)
    home = _home(args)
    home.ensure()
    # Onboardings started together on one home would race to create its stores and to write the warehouse.
    with exclusive(home.root / "logs" / "onboard.lock"):
        _, warehouse, registry = _resources()
        spec, now = _register_onboarding(args, warehouse, registry)
    if not args.wait:
        if not daemon_running():
            print(
                "  no Dagster daemon is running for this home: start the UI and daemon with "
                f"`DAGSTER_HOME={home.dagster_home} RETRAIN_HOME={home.root} dagster dev`, or onboard with --wait"
            )
        else:
            print("  follow it on the Backfills page of the UI, or with `retrain-platform status`")
        return 0
    from retrain_platform.defs.onboarding import onboarding_id

    def recorded() -> str | None:
        row = with_warehouse_retry(lambda: onboarding.status(warehouse, spec.customer))
        return row["status"] if row else None

    state = wait_for_onboarding(home, onboarding_id(spec.customer, now), recorded, timeout_seconds=args.timeout)
    print(with_warehouse_retry(lambda: onboarding_summary(warehouse, registry, spec.customer, state)))
    if state != onboarding.READY:
        raise CommandError(f"onboarding of {spec.customer} ended {state}: see the Backfills page in the UI")
    return 0


def wait_for_onboarding(
    home: Home, key: str, recorded, timeout_seconds: float, poll_seconds: float = 3.0, record_seconds: float = 120.0
) -> str:
    """Block until onboarding `key` is ready or failed, with a daemon shared by every command that waits.

    The backfills' records say when the work is done; the daemon stays until the onboarding sensor has also
    recorded it (`recorded()` reads the onboarding table) and sent its alert, or `status` would lag behind.
    """
    import dagster as dg

    from retrain_platform import onboarding
    from retrain_platform.defs.onboarding import onboarding_progress

    started, last, record_deadline = time.monotonic(), None, None
    with SharedDaemon(home) as daemon:
        if daemon.started_here:
            print(f"  started a Dagster daemon for this wait (log: {daemon.log_path})")
        with dg.DagsterInstance.get() as instance:
            while True:
                state, text = onboarding_progress(instance, key)
                if (state, text) != last:
                    last = (state, text)
                    print(f"  [{time.monotonic() - started:5.0f} s] {state}: {text}", flush=True)
                if state in (onboarding.READY, onboarding.FAILED):
                    if recorded() == state:
                        return state
                    record_deadline = record_deadline or time.monotonic() + record_seconds
                    if time.monotonic() > record_deadline:
                        print(f"  the onboarding sensor has not recorded {state} yet; `status` shows it once a daemon runs")
                        return state
                elif time.monotonic() - started > timeout_seconds:
                    raise CommandError(f"onboarding {key} not finished after {timeout_seconds:.0f} s; it goes on in the UI")
                try:
                    daemon.ensure()
                except DaemonStopped as error:
                    raise CommandError(str(error)) from error
                time.sleep(poll_seconds)


def with_warehouse_retry(read, attempts: int = 20, delay_seconds: float = 3.0):
    """A read the CLI makes while runs write: DuckDB's single writer may hold the file for a while."""
    for attempt in range(attempts):
        try:
            return read()
        except Exception as error:
            if "lock" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay_seconds)


def onboarding_summary(warehouse, registry, customer: str, state: str) -> str:
    """What onboarding produced: backfills and runs, the first model's verdict, drift over the history, the
    profile's warnings, and what to do next."""
    import dagster as dg

    from retrain_platform import ledger, onboarding
    from retrain_platform.customers import load_spec
    from retrain_platform.defs.onboarding import (
        HISTORY_STAGE,
        PROFILES_TABLE,
        TRAINING_STAGE,
        onboarding_id,
        stage_backfills,
    )
    from retrain_platform.monitoring import DRIFT_BATCHES_TABLE, metric_history
    from retrain_platform.warehouse import quote

    spec = load_spec(warehouse, customer)
    recorded = onboarding.status(warehouse, customer) or {}
    lines = [f"onboarding of {customer}: {state}"]
    key = onboarding_id(customer, recorded.get("requested_at"))
    with dg.DagsterInstance.get() as instance:
        for stage in (TRAINING_STAGE, HISTORY_STAGE):
            for backfill in stage_backfills(instance, key, stage)[:1]:
                runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
                statuses = sorted({record.dagster_run.status.value for record in runs})
                lines.append(
                    f"  {stage} backfill {backfill.backfill_id}: {backfill.status.value}, "
                    f"{len(runs)} run(s) ({', '.join(statuses) or '-'})"
                )
        features = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("features"), asset_partitions=[customer]), limit=1
        ).records
    holdout_starts = None
    if features and features[0].asset_materialization is not None:
        entry = features[0].asset_materialization.metadata.get("holdout_starts")
        holdout_starts = entry.value if entry is not None else None
    history = ledger.history(warehouse, customer)
    if not history.empty:
        row = history.iloc[-1]
        lines.append(
            f"  first model: version {row['to_version']}, verdict {row['verdict']}, action {row['action']}; "
            f"champion {row['champion_after'] or 'none yet'}"
        )
    if warehouse.table_exists(DRIFT_BATCHES_TABLE):
        drifts = warehouse.query(
            f"select batch_id, batch_start, rows, drift_share, drifted_columns from {quote(DRIFT_BATCHES_TABLE)} "
            "where customer = ? and batch_id like ? order by batch_start",
            [customer, "history-%"],
        )
        realized = metric_history(warehouse, customer, spec.primary_metric)
        realized = dict(realized[realized["kind"] == "realized"][["batch_id", "value"]].itertuples(index=False))
        samples = [""] * len(drifts)
        if holdout_starts is not None and len(drifts):
            samples = onboarding.backtest_sample(drifts["batch_start"].tolist(), holdout_starts)
            lines.append(
                f"  backtest by history batch ({spec.primary_metric} realized; the first model trained on the rows "
                f"before {holdout_starts}, so only its holdout is out of sample):"
            )
        for row, sample in zip(drifts.itertuples(), samples, strict=True):
            value = realized.get(row.batch_id)
            metric = f"{spec.primary_metric} {value:.3f}" if value is not None else f"{spec.primary_metric} -"
            lines.append(
                f"    {row.batch_id:<18} {int(row.rows):>7,} rows  {metric:<16} {sample:<15} "
                f"drift {row.drift_share:4.0%}  {row.drifted_columns or '-'}"
            )
    if warehouse.table_exists(PROFILES_TABLE):
        profiles = warehouse.query(f"select profile_json from {quote(PROFILES_TABLE)} where customer = ?", [customer])
        if len(profiles):
            warnings = json.loads(profiles.iloc[0, 0]).get("warnings", [])
            lines.append(f"  data profile: {len(warnings)} warning(s)" + "".join(f"\n    - {w}" for w in warnings[:8]))
    if registry.alias_version(spec.model_name, "champion") is None and spec.mode == "approve":
        lines.append(f"  next: review data_profile and evaluation_report in the UI, then `retrain-platform approve {customer}`")
    return "\n".join(lines)


def cmd_offboard(args) -> int:
    import dagster as dg

    from retrain_platform import onboarding
    from retrain_platform.defs.onboarding import (
        cancel_onboarding_backfills,
        remove_customer_partitions,
    )

    defs, warehouse, _, spec = _deployment_context(args)
    state = onboarding.status(warehouse, spec.customer)
    if state is not None and state["status"] == onboarding.OFFBOARDED:
        raise CommandError(f"{spec.customer} is already offboarded")
    with dg.DagsterInstance.get() as instance:
        cancelled = cancel_onboarding_backfills(instance, spec.customer)
        removed = remove_customer_partitions(instance, spec.customer)
    now = defs.resources["clock"].now()
    message = "offboarded: no schedule or sensor acts for it; data, models and ledger are kept"
    onboarding.record(warehouse, spec.customer, onboarding.OFFBOARDED, now, message=message)
    print(
        f"{spec.customer}: {message} ({spec.landing_table}, models:/{spec.model_name}, model_ledger); "
        f"removed its partition and {removed} batch partition(s)"
        + (f"; cancelled backfill(s) {', '.join(cancelled)}" if cancelled else "")
    )
    print(f"  onboarding {spec.customer} again needs --reuse")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrain-platform", description="Keep one model per customer fresh: train, guard, watch, react."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="platform home folder (default: $RETRAIN_HOME or ./.retrain)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", parents=[common], help="fresh home, demo customers, first training through Dagster runs")
    demo.add_argument("--seed", type=int, default=0, help="seed of the demo data generator")
    demo.add_argument("--batches", type=int, default=6, help="weekly batches to ingest after the first training")
    demo.set_defaults(handler=cmd_demo)

    status = commands.add_parser("status", parents=[common], help="per customer: mode, champion, metric, last verdict")
    status.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    status.set_defaults(handler=cmd_status)

    train = commands.add_parser("train", parents=[common], help="run the training chain for one customer now")
    train.add_argument("customer")
    train.set_defaults(handler=cmd_train)
    approve = commands.add_parser(
        "approve", parents=[common], help="promote a model awaiting approval (approve mode) to champion"
    )
    approve.add_argument("customer")
    approve.add_argument("version", nargs="?", help="the version to promote (default: the latest awaiting approval)")
    approve.set_defaults(handler=cmd_approve)

    rollback = commands.add_parser(
        "rollback", parents=[common], help="move the champion back to the previous champion (or --to VERSION)"
    )
    rollback.add_argument("customer")
    rollback.add_argument("--to", metavar="VERSION", help="the version to restore (default: previous-champion)")
    rollback.add_argument("--reason", help="why, for the ledger and the alert")
    rollback.set_defaults(handler=cmd_rollback)

    ingest = commands.add_parser(
        "ingest", parents=[common], help="append a CSV or Parquet batch (or late labels) to a customer's landing table"
    )
    ingest.add_argument("customer")
    ingest.add_argument("--source", required=True, help="a .csv or .parquet file")
    ingest.add_argument("--batch", help="batch id (default: b<UTC timestamp>)")
    ingest.add_argument("--no-monitor", action="store_true", help="only store the rows; do not score or measure")
    ingest.set_defaults(handler=cmd_ingest)

    onboard = commands.add_parser(
        "onboard",
        parents=[common],
        help="validate a CSV or Parquet history, set the customer up and backfill its first training and history",
    )
    onboard.add_argument("customer", help="customer id: a-z, 0-9, '_' and '-'")
    onboard.add_argument("--source", required=True, help="a .csv or .parquet file of labelled history")
    onboard.add_argument("--label", required=True, help="the label column")
    onboard.add_argument("--timestamp", help="the timestamp column (default: the datetime column, or one named like 'timestamp')")
    onboard.add_argument("--id", help="a unique row id column, for late labels (default: none)")
    onboard.add_argument("--features", nargs="+", help="the feature columns (default: every other column)")
    onboard.add_argument("--categorical", nargs="+", help="columns to treat as categorical even if numeric")
    onboard.add_argument("--task", choices=["binary", "multiclass", "regression"], help="default: inferred from the label")
    onboard.add_argument(
        "--mode",
        choices=["auto", "approve", "alert"],
        default="approve",
        help="approve (default): the first champion and later ones wait for `approve`; auto: deploy on a PROMOTE verdict",
    )
    onboard.add_argument(
        "--batch-period", default="auto", choices=["auto", "day", "week", "month", "quarter"],
        help="how the history is cut into batches for the backtest (default: the finest giving at most 24)",
    )
    onboard.add_argument("--reuse", action="store_true", help="onboard an offboarded customer id again")
    onboard.add_argument("--wait", action="store_true", help="block until the backfills are done and print a summary")
    onboard.add_argument("--timeout", type=float, default=1800, help="seconds --wait waits at most (default 1800)")
    onboard.set_defaults(handler=cmd_onboard)

    offboard = commands.add_parser(
        "offboard", parents=[common], help="stop all automation for a customer; its data, models and ledger are kept"
    )
    offboard.add_argument("customer")
    offboard.set_defaults(handler=cmd_offboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Known and documented (README): partitioned asset checks are a Dagster preview, backfill policies a beta.
    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta)")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, LookupError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
