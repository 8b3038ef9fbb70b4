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


def run_training(customer: str, trigger: str = "manual"):
    """Materialize the training chain for one customer as a real run on the Dagster instance."""
    import dagster as dg

    from retrain_platform.definitions import defs

    job = defs.resolve_job_def("train_customer")
    run_config = {
        "ops": {name: {"config": {"trigger": trigger}} for name in ("candidate_models", "deployed_model")},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(
            instance=instance, partition_key=customer, run_config=run_config, raise_on_error=False
        )


def cmd_demo(args) -> int:
    home = _home(args)
    _fresh_home(home)
    started = time.perf_counter()
    import dagster as dg

    from retrain_platform import customers
    from retrain_platform.demo_data import demo_customers
    from retrain_platform.spec import complete_spec, parse_spec

    defs, warehouse, registry = _resources()
    demo = demo_customers(seed=args.seed)
    for customer in demo:
        spec = complete_spec(parse_spec(customer.spec), customer.history)
        warehouse.write(spec.landing_table, customer.history)
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
    from retrain_platform.status import customer_status, format_table

    print()
    print(format_table(customer_status(warehouse, registry)))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; home: {home.root}")
    print(f"open the UI with: DAGSTER_HOME={home.dagster_home} RETRAIN_HOME={home.root} dagster dev")
    if failed:
        raise CommandError(f"training failed for {', '.join(failed)}; see the runs in the UI")
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
    demo.set_defaults(handler=cmd_demo)

    status = commands.add_parser("status", parents=[common], help="per customer: mode, champion, metric, last verdict")
    status.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    status.set_defaults(handler=cmd_status)

    train = commands.add_parser("train", parents=[common], help="run the training chain for one customer now")
    train.add_argument("customer")
    train.set_defaults(handler=cmd_train)
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
