"""Time the training chain for one customer: 50,000 rows, 20 features, through a real Dagster run.

Run by hand: `python benchmarks/bench_training.py [--rows 50000]`. Prints the run's wall time, the time of
each step, and, as the reference on the same data in the same process, the bare scikit-learn search
(`train_candidates`) without Dagster, MLflow or the quality checks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()

    home_dir = Path(tempfile.mkdtemp(prefix="bench-training-"))
    os.environ["RETRAIN_HOME"] = str(home_dir)
    os.environ["DAGSTER_HOME"] = str(home_dir / "dagster")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import dagster as dg

    from retrain_platform import customers
    from retrain_platform.defs.monitoring import drift_baseline
    from retrain_platform.defs.partitions import customers as customer_partitions
    from retrain_platform.defs.resources import local_resources
    from retrain_platform.defs.training import training_assets, training_checks
    from retrain_platform.demo_data import make_benchmark_frame
    from retrain_platform.modelling import make_features, train_candidates
    from retrain_platform.settings import Home
    from retrain_platform.spec import complete_spec, parse_spec

    frame, spec_data = make_benchmark_frame(rows=args.rows, n_features=args.features, seed=0)
    home = Home(home_dir).ensure()
    resources = local_resources(home)
    warehouse = resources["warehouse"].get_warehouse()
    spec = complete_spec(parse_spec(spec_data), frame)
    warehouse.write(spec.landing_table, frame)
    customers.save_spec(warehouse, spec)

    with dg.instance_for_test(temp_dir=str(home.dagster_home)) as instance:
        instance.add_dynamic_partitions(customer_partitions.name, [spec.customer])
        started = time.perf_counter()
        result = dg.materialize(
            [*training_assets, drift_baseline, *training_checks],
            instance=instance,
            partition_key=spec.customer,
            resources=resources,
            raise_on_error=True,
        )
        chain_seconds = time.perf_counter() - started
        step_times = {}
        for event in result.all_events:
            if event.event_type_value == "STEP_SUCCESS":
                step_times[event.step_key] = event.event_specific_data.duration_ms / 1000

    started = time.perf_counter()
    train_candidates(make_features(frame, spec))
    bare_seconds = time.perf_counter() - started

    print(f"rows={args.rows:,} features={len(spec.feature_names)} cores={os.cpu_count()}")
    for step, seconds in step_times.items():
        print(f"  {step:<55} {seconds:6.1f} s")
    print(f"training chain (Dagster run, MLflow, checks): {chain_seconds:6.1f} s  (target < 60 s)")
    print(f"bare scikit-learn search, same data:          {bare_seconds:6.1f} s")
    print(f"platform overhead over the bare search:        {chain_seconds - bare_seconds:6.1f} s")


if __name__ == "__main__":
    main()
