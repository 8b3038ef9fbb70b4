"""`retrain-platform`: the command line.

Every command exits non-zero with a one-line reason on error; `--help` works on each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from retrain_platform.interrupts import stop_on_signals
from retrain_platform.library_notices import quiet_known_notices
from retrain_platform.local_daemon import daemon_running, exclusive
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


def _runner(keep_warehouse_open: bool = False):
    """The code location and instance of the home the command was pointed at (after `_home`)."""
    from retrain_platform.runner import Runner

    return Runner.open(keep_warehouse_open=keep_warehouse_open)


def _failed(error) -> CommandError:
    return CommandError(str(error))


def cmd_demo(args) -> int:
    home = _home(args)
    _fresh_home(home)
    started = time.perf_counter()
    from retrain_platform import demo
    from retrain_platform.status import customer_status, format_table

    with _runner(keep_warehouse_open=True) as runner:
        setups = demo.load_customers(runner, seed=args.seed)
        for setup in setups:
            print(
                f"loaded {setup.spec.customer}: {len(setup.customer.history):,} rows into {setup.spec.landing_table} "
                f"({setup.customer.drift})"
            )
        demo.train_first_models(runner, setups)
        failed = [setup.spec.customer for setup in setups if not setup.training.success]
        for setup in setups:
            run = setup.training
            print(f"trained {setup.spec.customer}: run {run.run_id[:8]} {'succeeded' if run.success else 'FAILED'}")
        for week in demo.replay_weeks(runner, setups, args.batches):
            print(
                f"\nweek {week.number} (simulated time {week.ends:%Y-%m-%d}): batches of {', '.join(week.arrived) or 'nobody'} "
                "arrive and are scored, the sensors tick, the labels arrive, the sensors tick again"
            )
            for customer in week.waiting if week.number == 1 else []:
                print(
                    f"{customer}: no champion yet, its batches wait; a reviewer approves what waits at the start of "
                    f"each week (yourself: retrain-platform approve {customer})"
                )
            for entry in week.approved:
                print(
                    f"{entry.customer}: version {entry.to_version} approved ({entry.reasons.split(';')[0]}); "
                    f"champion {entry.from_version or '-'} -> {entry.champion_after}"
                )
            for outcome in week.batches:
                for line in _batch_lines(outcome):
                    print(line)
            for line in _firing_lines(week.firings):
                print(line)
        print()
        print(_drift_summary(runner.warehouse))
        print()
        print(_automated_changes(runner.warehouse, demo.DEMO_TRIGGER))
        print()
        print(format_table(customer_status(runner.warehouse, runner.registry)))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; home: {home.root}")
    print(f"open the UI with: DAGSTER_HOME={home.dagster_home} RETRAIN_HOME={home.root} dagster dev")
    if failed:
        raise CommandError(f"training failed for {', '.join(failed)}; see the runs in the UI")
    return 0


def _firing_lines(firings) -> list[str]:
    lines = []
    for firing in firings:
        lines.append(f"  {firing.sensor} fired for {firing.customer}: {firing.evidence}")
        if not firing.run.success or firing.action is None:
            lines.append(f"    run {firing.run.run_id[:8]} FAILED: {firing.run.failure or 'see it in the UI'}")
            continue
        lines.append(
            f"    run {firing.run.run_id[:8]} ({firing.run.job}): {firing.action} (verdict {firing.verdict}), "
            f"champion {firing.from_version or '-'} -> {firing.champion_after or '-'}"
        )
    return lines


def _batch_lines(outcome) -> list[str]:
    summary = outcome.summary
    lines = [
        f"{summary.customer}: batch {summary.batch_id}: {summary.new_rows:,} new rows, {summary.labels_merged:,} labels merged"
        + (f" (ignored columns: {', '.join(summary.ignored_columns)})" if summary.ignored_columns else "")
    ]
    if summary.replaced_rows:
        lines.append(
            f"  replaced the batch's {summary.replaced_rows:,} earlier rows; their predictions, drift statistics and "
            "metrics were removed"
        )
    elif summary.stored_before and summary.new_rows:
        lines.append(f"  completed the batch: it held {summary.stored_before:,} of this file's rows before")
    elif summary.stored_before:
        lines.append(
            "  the batch already held every row of this file"
            + ("; its unfinished monitoring ran now" if outcome.monitored else "")
        )
    lines += [f"  monitored {run.partition}: run {run.run_id[:8]} succeeded" for run in outcome.monitored]
    lines += [
        f"  re-measured {run.partition} with its new labels: {'succeeded' if run.success else 'FAILED'}"
        for run in outcome.remeasured
    ]
    return lines


def _automated_changes(warehouse, demo_trigger: str) -> str:
    """The ledger rows the sensors caused: why each model changed, as a person would ask it from SQL."""
    from retrain_platform.runner import automated_changes

    automated, raised = automated_changes(warehouse, demo_trigger)
    lines = ["what the sensors did (model_ledger)"]
    for row in automated.itertuples():
        lines.append(
            f"  {row.recorded_at:%Y-%m-%d} {row.customer:<20} {row.action:<15} {row.verdict:<8} "
            f"champion {row.from_version or '-'} -> {row.champion_after or '-'}; trigger: {row.trigger}"
        )
    if automated.empty:
        lines.append("  nothing: no trigger fired")
    lines.append(f"alerts ({len(raised)} in the `alerts` table)")
    for row in raised.itertuples():
        lines.append(f"  {row.recorded_at:%Y-%m-%d} {row.customer or '-':<20} {row.kind:<17} {row.message[:140]}")
    return "\n".join(lines)


def _drift_summary(warehouse) -> str:
    """Per customer and batch: the share of drifted features and which ones drifted."""
    from retrain_platform.monitoring import drift_by_batch

    features = drift_by_batch(warehouse)
    if features.empty:
        return "no batch measured yet"
    lines = ["drift per batch (share of drifted features: the drifted ones)"]
    for (customer, batch), rows in features.groupby(["customer", "batch_id"], sort=True):
        drifted = rows.loc[rows["drifted"], "column"].tolist()
        lines.append(f"  {customer:<20} {batch:<10} {rows['drifted'].mean():5.0%}  {', '.join(drifted) or '-'}")
    return "\n".join(lines)


def cmd_ingest(args) -> int:
    from retrain_platform.spec import validate_customer_id

    if args.replace and not args.batch:
        raise CommandError("--replace needs --batch ID: the batch whose rows this file replaces")
    validate_customer_id(args.customer)
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec
    from retrain_platform.ingest import ingest_lock, read_source
    from retrain_platform.runner import RunFailed

    frame = read_source(args.source)

    def waiting(lock: str) -> None:
        print(f"{args.customer}: another ingest of this customer is running; waiting for it (lock {lock})", flush=True)

    # Taken before the first read of the warehouse: DuckDB refuses a second process while one writes.
    with ingest_lock(home.root, args.customer, on_wait=waiting), _runner() as runner:
        spec = load_spec(runner.warehouse, args.customer)
        _refuse_offboarded(runner.warehouse, spec.customer)
        try:
            outcome = runner.ingest_and_monitor(
                spec, frame, batch_id=args.batch, monitor=not args.no_monitor, replace=args.replace
            )
        except RunFailed as error:
            raise _failed(error) from None
    for line in _batch_lines(outcome):
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

    with _runner() as runner:
        rows = customer_status(runner.warehouse, runner.registry)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_train(args) -> int:
    from retrain_platform.spec import validate_customer_id

    validate_customer_id(args.customer)
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec

    with _runner() as runner:
        load_spec(runner.warehouse, args.customer)
        _refuse_offboarded(runner.warehouse, args.customer)
        if not runner.has_customer_partition(args.customer):
            raise CommandError(
                f"{args.customer} has a spec but no partition in this home's Dagster instance: "
                f"onboard it again with --reuse"
            )
        result = runner.train(args.customer)
    print(f"run {result.run_id}: {'succeeded' if result.success else 'failed'}")
    if not result.success:
        raise CommandError(f"training run {result.run_id} failed for {args.customer}: {result.failure}")
    return 0


def cmd_batches(args) -> int:
    import getpass

    from retrain_platform import batches
    from retrain_platform.spec import validate_customer_id

    if args.drop and args.release:
        raise CommandError("--drop and --release: give one of them")
    validate_customer_id(args.customer)
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec
    from retrain_platform.ingest import ingest_lock

    by = f"cli:{getpass.getuser()}"

    def waiting(lock: str) -> None:
        print(f"{args.customer}: an ingest of this customer is running; waiting for it (lock {lock})", flush=True)

    # Taken before the first read of the warehouse, as ingest does: a batch is never changed under an ingest.
    with ingest_lock(home.root, args.customer, on_wait=waiting), _runner() as runner:
        spec = load_spec(runner.warehouse, args.customer)
        run = None
        try:
            if args.drop:
                record = runner.drop_batch(spec, args.drop, by)
            elif args.release:
                record, run = runner.release_batch(spec, args.release, by)
        except batches.BatchError as error:
            raise _failed(error) from None
        listed = batches.list_batches(runner.warehouse, spec)
    if args.json:
        print(listed.to_json(orient="records", date_format="iso"))
    else:
        print(_batches_table(spec.customer, listed))
    if args.drop:
        print(f"{spec.customer}: batch {record.batch_id} dropped: {record.rows:,} row(s) and their predictions, "
              "drift statistics and metrics deleted; the alerts table records it")  # fmt: skip
    if args.release:
        print(f"{spec.customer}: batch {record.batch_id} released: its rows pass the checks and count again for "
              "training, drift and metrics; the alerts table records it")  # fmt: skip
        if run is not None:
            print(f"  monitored {run.partition}: run {run.run_id[:8]} {'succeeded' if run.success else 'FAILED'}"
                  + ("" if run.success else f": {run.failure}"))  # fmt: skip
    return 0


def _batches_table(customer: str, listed) -> str:
    if listed.empty:
        return f"{customer}: no batches stored"
    lines = [f"{'batch':<24} {'rows':>9} {'labelled':>9}  {'state':<12} rule"]
    for row in listed.itertuples():
        rule = "-"
        if row.state == "quarantined":
            # The detail names the column, the rule and what was found.
            rule = row.detail or f"{row.column or 'table'}: {row.rule}"
        lines.append(f"{row.batch_id:<24} {row.rows:>9,} {row.labelled_rows:>9,}  {row.state:<12} {rule}")
    quarantined = int((listed["state"] == "quarantined").sum())
    if quarantined:
        lines.append(
            f"{quarantined} quarantined: training, drift and metrics leave them out. Correct one with `ingest {customer} "
            "--source FILE --batch ID --replace` (a passing check clears it), release one whose rows pass the checks "
            "now with `--release ID`, or delete one with `--drop ID`"
        )
    return "\n".join(lines)


@contextmanager
def _customer_runner(args):
    """The runner and the customer's spec, for approve, rollback, offboard and canary."""
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec

    with _runner() as runner:
        yield runner, load_spec(runner.warehouse, args.customer)


def cmd_approve(args) -> int:
    import getpass

    from retrain_platform import deployment

    with _customer_runner(args) as (runner, spec):
        entry = deployment.approve(
            runner.warehouse, runner.registry, spec, args.version, now=runner.now(), approved_by=f"cli:{getpass.getuser()}"
        )
    print(
        f"{spec.customer}: version {entry.to_version} approved; champion {entry.from_version or '-'} -> "
        f"{entry.champion_after} (models:/{spec.model_name}@champion); the ledger records it"
    )
    return 0


def cmd_rollback(args) -> int:
    import logging

    from retrain_platform import alerts, deployment

    with _customer_runner(args) as (runner, spec):
        now = runner.now()
        reason = args.reason or "rolled back by hand from the command line"
        entry = deployment.rollback(
            runner.warehouse, runner.registry, spec, args.to, now=now, reason=reason, trigger="manual: cli"
        )
        quiet = logging.getLogger("retrain_platform.cli.alerts")
        quiet.propagate = False  # the command prints its own line; the alert still reaches the table and webhook
        message = f"champion rolled back from version {entry.from_version} to {entry.to_version}: {reason}"
        runner.alerts.send(runner.warehouse, alerts.Alert(now, spec.customer, alerts.ROLLBACK, message), log=quiet)
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


def _print_registration(registration) -> None:
    prepared = registration.prepared
    spec = prepared.spec
    kinds = {kind: sum(1 for k in spec.kinds.values() if k == kind) for kind in ("numeric", "categorical")}
    print(
        f"{spec.customer}: {len(prepared.history):,} rows ({prepared.labelled_rows:,} labelled) into {spec.landing_table}; "
        f"task {spec.task}, metric {spec.primary_metric}, label {spec.label_column!r}, timestamp {spec.timestamp_column!r}, "
        f"id {spec.id_column!r}; {kinds['numeric']} numeric and {kinds['categorical']} categorical features; mode {spec.mode}"
    )
    first, last = prepared.batch_ids[0], prepared.batch_ids[-1]
    print(f"  history cut into {len(prepared.batch_ids)} {prepared.period}ly batches: {first} .. {last}")
    if registration.archived_table:
        print(f"  the earlier landing table is kept as {registration.archived_table}")
    print("  partitions added; the onboarding sensors now backfill: first training, then the history batches")


def cmd_onboard(args) -> int:
    from retrain_platform import onboarding
    from retrain_platform.defs.onboarding import onboarding_id
    from retrain_platform.local_daemon import DaemonStopped
    from retrain_platform.runner import wait_for_onboarding, with_warehouse_retry
    from retrain_platform.spec import validate_customer_id

    validate_customer_id(args.customer)
    home = _home(args)
    home.ensure()
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
    # Onboardings started together on one home would race to create its stores and to write the warehouse.
    with exclusive(home.root / "logs" / "onboard.lock"), _runner() as runner:
        ongoing = onboarding.status(runner.warehouse, args.customer) if args.wait else None
        if ongoing is not None and ongoing["status"] in onboarding.IN_PROGRESS:
            # A `--wait` that was interrupted re-attaches: the backfills went on, or go on with this daemon.
            requested_at = ongoing["requested_at"]
            print(
                f"{args.customer}: already being onboarded ({ongoing['status']}, requested {requested_at:%Y-%m-%d %H:%M}); "
                "waiting for it with the source and options given then",
                flush=True,
            )
        else:
            registration = runner.register_onboarding(request, Path(args.source))
            requested_at = registration.requested_at
            _print_registration(registration)
    customer = args.customer
    if not args.wait:
        if not daemon_running():
            print(
                "  no Dagster daemon is running for this home: start the UI and daemon with "
                f"`DAGSTER_HOME={home.dagster_home} RETRAIN_HOME={home.root} dagster dev`, or onboard with --wait"
            )
        else:
            print("  follow it on the Backfills page of the UI, or with `retrain-platform status`")
        return 0

    with _runner() as runner:

        def recorded() -> str | None:
            row = with_warehouse_retry(lambda: onboarding.status(runner.warehouse, customer))
            return row["status"] if row else None

        try:
            state = wait_for_onboarding(
                home,
                onboarding_id(customer, requested_at),
                recorded,
                timeout_seconds=args.timeout,
                on_progress=lambda line: print(f"  {line}", flush=True),
            )
        except (TimeoutError, DaemonStopped) as error:
            raise _failed(error) from None
        print(with_warehouse_retry(lambda: _onboarding_summary(runner, customer, state)))
    if state != onboarding.READY:
        raise CommandError(f"onboarding of {customer} ended {state}: see the Backfills page in the UI")
    return 0


def _onboarding_summary(runner, customer: str, state: str) -> str:
    """What onboarding produced: backfills and runs, the first model's verdict, drift over the history, the
    profile's warnings, and what to do next."""
    from retrain_platform import ledger, monitoring, onboarding, profiling
    from retrain_platform.customers import load_spec
    from retrain_platform.ingest import HISTORY_PREFIX
    from retrain_platform.spec import APPROVE_MODE

    warehouse = runner.warehouse
    spec = load_spec(warehouse, customer)
    lines = [f"onboarding of {customer}: {state}"]
    for backfill in runner.onboarding_backfills(customer):
        lines.append(
            f"  {backfill['stage']} backfill {backfill['backfill_id']}: {backfill['status']}, "
            f"{backfill['runs']} run(s) ({', '.join(backfill['run_statuses']) or '-'})"
        )
    holdout_starts = runner.holdout_start(customer)
    history = ledger.history(warehouse, customer)
    if not history.empty:
        row = history.iloc[-1]
        lines.append(
            f"  first model: version {row['to_version']}, verdict {row['verdict']}, action {row['action']}; "
            f"champion {row['champion_after'] or 'none yet'}"
        )
    drifts = monitoring.batch_summaries(warehouse, customer, HISTORY_PREFIX)
    realized = monitoring.metric_history(warehouse, customer, spec.primary_metric)
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
    warnings = profiling.stored_warnings(warehouse, customer)
    lines.append(f"  data profile: {len(warnings)} warning(s)" + "".join(f"\n    - {w}" for w in warnings[:8]))
    if runner.champion(spec) is None and spec.mode == APPROVE_MODE:
        lines.append(f"  next: review data_profile and evaluation_report in the UI, then `retrain-platform approve {customer}`")
    return "\n".join(lines)


def cmd_offboard(args) -> int:
    with _customer_runner(args) as (runner, spec):
        cancelled, removed = runner.offboard(spec)
    print(
        f"{spec.customer}: offboarded: no schedule or sensor acts for it; data, models and ledger are kept "
        f"({spec.landing_table}, models:/{spec.model_name}, model_ledger); "
        f"removed its partition and {removed} batch partition(s)"
        + (f"; cancelled backfill(s) {', '.join(cancelled)}" if cancelled else "")
    )
    print(f"  onboarding {spec.customer} again needs --reuse")
    return 0


# -------------------------------------------------------------------------------------------------- replay


def cmd_replay(args) -> int:
    from retrain_platform import examples, replay
    from retrain_platform.ingest import read_source

    if args.example is not None and args.source:
        raise CommandError("--example and --source: give one of them")
    if args.example is not None:
        example = examples.load_example(args.example)
        frame, name = example.frame, example.name
        label, timestamp, id_column = example.label, example.timestamp, example.id_column
        batch, initial, overrides = args.batch or example.batch, args.initial or example.initial, example.spec_overrides
        print(f"example {example.name}: {example.description}", file=sys.stderr)
    else:
        if not args.source or not args.label:
            raise CommandError("--source and --label are needed (or --example)")
        frame, name = read_source(args.source), Path(args.source).stem
        label, timestamp, id_column = args.label, args.timestamp, args.id
        batch, initial, overrides = args.batch or "auto", args.initial, None
    policies = replay.check_policies(_names([args.policies]) or [])
    if args.every < 1:
        raise CommandError(f"--every: {args.every} must be at least 1")
    plan = replay.plan_replay(
        frame, label=label, timestamp=timestamp, id_column=id_column, batch=batch, initial=initial, spec_overrides=overrides
    )
    out = Path(args.out).resolve()
    print(
        f"replaying {name}: first model on {len(plan.initial):,} rows up to {plan.initial_end:%Y-%m-%d}, then "
        f"{len(plan.batches)} batches of {plan.batch_size}; task {plan.spec.task}, metric {plan.metric}; "
        f"policies {', '.join(policies)}"
        + (f"; no --id, so rows are numbered in `{plan.spec.id_column}` for late labels" if plan.added_id else ""),
        file=sys.stderr,
    )
    started, shown = time.perf_counter(), {}

    def progress(policy: str, done: int, total: int, elapsed: float) -> None:
        if done == total or elapsed - shown.get(policy, -1e9) >= args.progress_seconds:
            shown[policy] = elapsed
            print(f"  [{time.perf_counter() - started:5.0f} s] {policy:<12} {done}/{total} batches ({elapsed:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip

    options = replay.PolicyOptions(every=args.every, search=_search(args))
    results = replay.replay(plan, policies, out, options, workers=args.workers, on_progress=progress)
    report = [result.to_json() for result in results]
    (out / "replay.json").write_text(json.dumps(report, indent=2))
    table = replay.summary_table(results)
    (out / "replay.md").write_text(table.to_markdown(index=False) + "\n")
    chart = replay.draw_chart(results, plan, out / "replay.png", name)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table.to_markdown(index=False))
        print(f"\nchart: {chart}\nper-policy homes (ledger, runs, MLflow): {out / 'homes'}")
    print(f"replay finished in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    failed = [result for result in results if result.error]
    if failed:
        raise CommandError("; ".join(f"policy {r.policy} failed: {r.error}" for r in failed))
    return 0


def cmd_serve(args) -> int:
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}: nothing to serve")
    from retrain_platform import serving

    try:
        serving.check_port(args.host, args.port)
        print(
            f"serving {home.root} on http://{args.host}:{args.port}: POST /customers/<customer>/predict, "
            "GET /health, GET /metrics (Ctrl-C stops)",
            flush=True,
        )
        serving.serve(home, host=args.host, port=args.port)
    except serving.ServingError as error:
        raise CommandError(str(error)) from None
    print("stopped", flush=True)
    return 0


def cmd_label_queue(args) -> int:
    from retrain_platform.spec import validate_customer_id

    validate_customer_id(args.customer)
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform import labelling
    from retrain_platform.customers import load_spec

    with _runner() as runner:
        spec = load_spec(runner.warehouse, args.customer)
        queued = labelling.queued_rows(runner.warehouse, spec.customer)
        exported = labelling.export_rows(runner.warehouse, spec) if args.export else None
    if args.export:
        target = Path(args.export)
        if target.suffix.lower() != ".csv":
            raise CommandError(f"--export {target}: the export is a .csv file")
        exported.to_csv(target, index=False)
    if args.json:
        print(queued.to_json(orient="records", date_format="iso"))
    elif queued.empty:
        reason = labelling.not_queued_reason(spec)
        print(f"{spec.customer}: no rows wait for a label" + (f" ({reason})" if reason else ""))
    else:
        lines = [f"{'batch':<24} {'row id':<24} {'uncertainty':>11}  queued at"]
        for row in queued.itertuples():
            lines.append(f"{row.batch_id:<24} {row.row_id:<24} {row.uncertainty:>11.3f}  {row.queued_at:%Y-%m-%d %H:%M}")
        lines.append(f"{len(queued):,} row(s) of {spec.customer} wait for a label, the least certain first")
        print("\n".join(lines))
    if args.export:
        print(
            f"{spec.customer}: {len(exported):,} row(s) written to {args.export}: fill the {spec.label_column!r} column "
            f"and give the file back with `retrain-platform ingest {spec.customer} --source FILE`",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0


def cmd_canary(args) -> int:
    import getpass

    from retrain_platform import canary

    with _customer_runner(args) as (runner, spec):
        comparison = canary.current_canary(runner.warehouse, runner.registry, spec)
        entry = None
        if args.promote:
            entry = canary.promote_if_better(
                runner.warehouse, runner.registry, spec, comparison, now=runner.now(), by=f"cli:{getpass.getuser()}"
            )
    if args.json:
        promoted = None if entry is None else {"from_version": entry.from_version, "to_version": entry.to_version}
        print(json.dumps({**comparison.to_dict(), **({"promoted": promoted} if args.promote else {})}))
        return 0
    lines = [f"{spec.customer}: canary on {comparison.metric} (realized, on labels that came after the answers)"]
    lines.append(f"  {'arm':<11} {'version':>7} {'answered':>9} {'labelled':>9} {comparison.metric:>10}")
    for arm in (comparison.champion, comparison.challenger):
        value = "-" if arm.metric_value is None else f"{arm.metric_value:.4f}"
        lines.append(
            f"  {arm.arm:<11} {arm.model_version or '-':>7} {arm.answered_rows:>9,} {arm.labelled_rows:>9,} {value:>10}"
        )
    lines.append(f"  verdict: {comparison.verdict}: {comparison.reason}")
    if entry is not None:
        lines.append(
            f"  promoted: champion {entry.from_version or '-'} -> {entry.to_version} "
            f"(models:/{spec.model_name}@champion); the ledger records it (trigger {entry.trigger!r})"
        )
    elif args.promote:
        lines.append("  not promoted: nothing changed")
    elif comparison.significant:
        lines.append(f"  promote it with `retrain-platform canary {spec.customer} --promote`")
    print("\n".join(lines))
    return 0


def _search(args) -> dict | None:
    search = {}
    if args.search_iterations is not None:
        search["search_iterations"] = args.search_iterations
    if args.cv_splits is not None:
        search["cv_splits"] = args.cv_splits
    return search or None


def build_parser() -> argparse.ArgumentParser:
    from retrain_platform.spec import APPROVE_MODE, MODES

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
    ingest.add_argument(
        "--replace", action="store_true",
        help="replace the rows the batch id already holds with this file's (they are measured again)",
    )  # fmt: skip
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
        choices=MODES,
        default=APPROVE_MODE,
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

    batch = commands.add_parser(
        "batches", parents=[common],
        help="list a customer's batches with their state (ok, quarantined, dropped, unmeasured); drop or release one",
    )  # fmt: skip
    batch.add_argument("customer")
    batch.add_argument("--drop", metavar="ID", help="delete the batch's rows, predictions, drift statistics and metrics")
    batch.add_argument(
        "--release", metavar="ID", help="mark a quarantined batch ok again once its rows pass the checks, and measure it"
    )
    batch.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    batch.set_defaults(handler=cmd_batches)

    offboard = commands.add_parser(
        "offboard", parents=[common], help="stop all automation for a customer; its data, models and ledger are kept"
    )
    offboard.add_argument("customer")
    offboard.set_defaults(handler=cmd_offboard)

    replay = commands.add_parser(
        "replay",
        help="what each retraining policy would have done on a dataset's own history, on the real platform",
        description=(
            "Train a first model on the initial window, then walk the rest of the history batch by batch as "
            "production would see it (rows first, labels later), once per policy, each in a home of its own "
            "under --out. Prints a table (or --json) and writes replay.json, replay.md and replay.png."
        ),
    )
    replay.add_argument("--source", help="a .csv or .parquet file with a label and a time order")
    replay.add_argument("--example", nargs="?", const="seattle-weather", metavar="NAME",
                        help="replay a shipped dataset instead: seattle-weather (default), a demo customer, or a demo "
                        "customer with -steady (the same customer without drift, the control)")  # fmt: skip
    replay.add_argument("--label", help="the label column")
    replay.add_argument("--timestamp", help="the timestamp column (default: inferred as onboard does)")
    replay.add_argument("--id", help="a unique row id column (default: rows are numbered)")
    replay.add_argument("--batch", help="batch size: a period (day, week, month, quarter, year, '6 months') or a "
                        "number of rows (default: the finest period giving at most 36 batches)")  # fmt: skip
    replay.add_argument("--initial", help="the first model's window: a period ('1 year') or rows (default: 30%% of rows)")
    replay.add_argument("--policies", default=",".join(("never", "scheduled", "drift", "performance", "default", "always")),
                        help="comma-separated, from never, scheduled, drift, performance, default, always (default: all)")  # fmt: skip
    replay.add_argument("--every", type=int, default=4, help="the scheduled policy retrains every N batches (default 4)")
    replay.add_argument("--out", default="replay", help="folder for the homes, replay.json, replay.md and replay.png")
    replay.add_argument("--json", action="store_true", help="print one JSON object per policy instead of a table")
    replay.add_argument("--workers", type=int, help="policies replayed at once (default: the machine's cores)")
    replay.add_argument("--search-iterations", type=int, help="hyper-parameter samples per model family (platform default 4)")
    replay.add_argument("--cv-splits", type=int, help="time-series CV folds of the search (platform default 3)")
    replay.add_argument("--progress-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    replay.set_defaults(handler=cmd_replay)

    serve = commands.add_parser(
        "serve", parents=[common],
        help="score JSON rows over HTTP with each customer's champion (canary share to its challenger); /metrics",
    )  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.set_defaults(handler=cmd_serve)

    canary_command = commands.add_parser(
        "canary", parents=[common],
        help="compare the champion's and the challenger's online answers on the labels that came later",
    )  # fmt: skip
    canary_command.add_argument("customer")
    canary_command.add_argument(
        "--promote", action="store_true",
        help="promote the challenger when its arm is significantly better (ledger: approve, trigger canary)",
    )  # fmt: skip
    canary_command.add_argument("--json", action="store_true", help="print the comparison as JSON")
    canary_command.set_defaults(handler=cmd_canary)

    label_queue = commands.add_parser(
        "label-queue", parents=[common],
        help="list the rows queued for experts to label (those the model was least sure of); export them as CSV",
    )  # fmt: skip
    label_queue.add_argument("customer")
    label_queue.add_argument(
        "--export", metavar="FILE",
        help="write the open rows (id, timestamp, features and an empty label column) to a .csv file to fill in",
    )  # fmt: skip
    label_queue.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    label_queue.set_defaults(handler=cmd_label_queue)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Known and documented (README): partitioned asset checks are a Dagster preview, backfill policies a beta.
    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta)")
    quiet_known_notices()
    args = build_parser().parse_args(argv)
    stop_on_signals()
    try:
        return args.handler(args)
    except KeyboardInterrupt as error:
        run = f" ({error})" if str(error) else ""
        print(f"interrupted: the run in progress{run} was marked failed; run the command again", file=sys.stderr)
        return 130
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, LookupError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
