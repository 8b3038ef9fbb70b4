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


def run_job(job_name: str, partition_key: str, run_config: dict | None = None, asset_selection=None):
    """Run a job for one partition as a real run on the Dagster instance (it shows in the UI)."""
    import dagster as dg

    from retrain_platform.definitions import defs

    job = defs.resolve_job_def(job_name)
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(
            instance=instance,
            partition_key=partition_key,
            run_config={**QUIET, **(run_config or {})},
            asset_selection=asset_selection,
            raise_on_error=False,
        )


def run_training(customer: str, trigger: str = "manual"):
    """Materialize the training chain for one customer."""
    config = {"ops": {name: {"config": {"trigger": trigger}} for name in ("candidate_models", "deployed_model")}}
    return run_job("train_customer", customer, config)


def add_partitions(name: str, keys: list[str]) -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(name, keys)


def ingest_and_monitor(warehouse, spec, frame, batch_id: str | None = None, monitor: bool = True) -> list[str]:
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
        result = run_job("monitor_batch", key)
        lines.append(f"  monitored {key}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
        if not result.success:
            raise CommandError(f"monitoring failed for batch {key}; the batch is kept, see run {result.run_id}")
    for key in relabelled:
        if key.endswith(".history"):
            continue
        result = run_job("monitor_batch", key, asset_selection=[dg.AssetKey("drift_report")])
        lines.append(f"  re-measured {key} with its new labels: {'succeeded' if result.success else 'FAILED'}")
    return lines


def cmd_demo(args) -> int:
    home = _home(args)
    _fresh_home(home)
    started = time.perf_counter()
    import dagster as dg

    from retrain_platform import customers
    from retrain_platform.demo_data import demo_customers
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
    failed = []
    for name in names:
        result = run_training(name, trigger="demo")
        print(f"trained {name}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
        if not result.success:
            failed.append(name)
    print()
    for customer in demo:
        spec = customers.load_spec(warehouse, customer.customer)
        if spec.customer in failed:
            continue
        if registry.alias_version(spec.model_name, "champion") is None:
            print(f"{spec.customer}: no champion yet ({spec.mode} mode), its batches wait")
            continue
        for index, batch in enumerate(customer.batches[: args.batches]):
            for line in ingest_and_monitor(warehouse, spec, batch, batch_id=f"week-{index + 1}"):
                print(line)
    print()
    print(drift_summary(warehouse))

    from retrain_platform.status import customer_status, format_table

    print()
    print(format_table(customer_status(warehouse, registry)))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; home: {home.root}")
    print(f"open the UI with: DAGSTER_HOME={home.dagster_home} RETRAIN_HOME={home.root} dagster dev")
    if failed:
        raise CommandError(f"training failed for {', '.join(failed)}; see the runs in the UI")
    return 0


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
    frame = read_source(args.source)
    for line in ingest_and_monitor(warehouse, spec, frame, batch_id=args.batch, monitor=not args.no_monitor):
        print(line)
    return 0


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
    home = _home(args)
    if not home.warehouse_path.exists():
        raise CommandError(f"no platform home at {home.root}")
    from retrain_platform.customers import load_spec

    _, warehouse, _ = _resources()
    load_spec(warehouse, args.customer)
    result = run_training(args.customer)
    print(f"run {result.run_id}: {'succeeded' if result.success else 'failed'}")
    if not result.success:
        raise CommandError(f"training run {result.run_id} failed for {args.customer}; see the run in the UI")
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
    ingest = commands.add_parser(
        "ingest", parents=[common], help="append a CSV or Parquet batch (or late labels) to a customer's landing table"
    )
    ingest.add_argument("customer")
    ingest.add_argument("--source", required=True, help="a .csv or .parquet file")
    ingest.add_argument("--batch", help="batch id (default: b<UTC timestamp>)")
    ingest.add_argument("--no-monitor", action="store_true", help="only store the rows; do not score or measure")
    ingest.set_defaults(handler=cmd_ingest)
    return parser


def main(argv: list[str] | None = None) -> int:
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
