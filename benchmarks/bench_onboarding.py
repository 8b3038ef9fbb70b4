"""Onboard many customers on the embedded defaults and wait until every onboarding is done.

    python benchmarks/bench_onboarding.py --customers 50 --rows 20000

Each customer is one of the five demo datasets with its own seed (20,000 rows over 120 days, written as CSV
or Parquet in turn), onboarded with `retrain-platform onboard` in auto mode, one command after the other, in
this process. One Dagster daemon runs the sensors, the backfills and the run queue, as under `dagster dev`.
Printed: the time of the onboarding commands, the time until every backfill is done, the runs, and peak
memory (resident set) of the whole process tree, sampled every second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path


def tree_rss_mb(root_pid: int) -> tuple[float, float]:
    """Resident memory of a process and all its descendants (sum, largest single process), from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields.get("PPid", "0").strip())
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    sizes = [rss.get(pid, 0) / 1024 for pid in tree]
    return sum(sizes), max(sizes)


class MemorySampler(threading.Thread):
    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.peak_total, self.peak_single = interval, 0.0, 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            total, single = tree_rss_mb(os.getpid())
            self.peak_total, self.peak_single = max(self.peak_total, total), max(self.peak_single, single)
            self.stopped.wait(self.interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--home", default="/tmp/retrain-bench-onboarding")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    args = parser.parse_args()

    home_path = Path(args.home)
    shutil.rmtree(home_path, ignore_errors=True)
    os.environ["RETRAIN_HOME"] = str(home_path)
    from retrain_platform.settings import Home

    home = Home(home_path)
    home.export_environment()
    home.ensure()
    import warnings

    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta)")
    from retrain_platform import cli, onboarding
    from retrain_platform.demo_data import demo_customers
    from retrain_platform.local_daemon import SharedDaemon

    sources = home_path / "sources"
    sources.mkdir(parents=True)
    plan = []
    for seed in range((args.customers + 4) // 5):
        for demo in demo_customers(seed=seed, history_rows=args.rows, n_batches=0):
            if len(plan) == args.customers:
                break
            name = f"{demo.customer}-{seed:02d}"
            path = sources / (f"{name}.csv" if len(plan) % 2 == 0 else f"{name}.parquet")
            if path.suffix == ".csv":
                demo.history.to_csv(path, index=False)
            else:
                demo.history.to_parquet(path, index=False)
            plan.append((name, path, demo.spec))
    print(f"{len(plan)} customers x {args.rows:,} rows written to {sources}")

    sampler = MemorySampler()
    sampler.start()
    daemon = SharedDaemon(home).__enter__()
    print(f"daemon {'started' if daemon.started_here else 'already running'} (log: {daemon.log_path})")
    started = time.perf_counter()
    try:
        for name, path, spec in plan:
            argv = ["onboard", name, "--home", str(home_path), "--source", str(path), "--label", spec["label_column"]]
            argv += ["--timestamp", spec["timestamp_column"], "--mode", "auto"]
            if spec.get("id_column"):
                argv += ["--id", spec["id_column"]]
            categorical = [f["name"] for f in spec["features"] if f["kind"] == "categorical"]
            if categorical:
                argv += ["--categorical", *categorical]
            if spec.get("task"):
                argv += ["--task", spec["task"]]
            with open(os.devnull, "w") as quiet:
                stdout, sys.stdout = sys.stdout, quiet
                try:
                    code = cli.main(argv)
                finally:
                    sys.stdout = stdout
            if code != 0:
                raise SystemExit(f"onboard {name} exited {code}")
        commands_done = time.perf_counter() - started
        print(f"{len(plan)} onboard commands took {commands_done:.0f} s ({commands_done / len(plan):.1f} s each)")
        import dagster as dg

        from retrain_platform.defs.onboarding import onboarding_id, onboarding_progress

        from retrain_platform.definitions import defs
        from retrain_platform.runner import with_warehouse_retry

        warehouse = defs.resources["warehouse"].get_warehouse()
        registry = defs.resources["registry"].get_registry()
        keys = {
            name: onboarding_id(name, requested)
            for name, requested in with_warehouse_retry(lambda: onboarding.all_statuses(warehouse))[
                ["customer", "requested_at"]
            ].itertuples(index=False)
        }
        last = None
        with dg.DagsterInstance.get() as instance:
            while True:
                # Dagster's backfill records, not the warehouse: polling must not compete for DuckDB's lock.
                states = [onboarding_progress(instance, key)[0] for key in keys.values()]
                counts = {state: states.count(state) for state in sorted(set(states))}
                if counts != last:
                    print(f"  [{time.perf_counter() - started:6.0f} s] {counts}", flush=True)
                    last = counts
                if counts.get(onboarding.READY, 0) + counts.get(onboarding.FAILED, 0) == len(plan):
                    break
                if time.perf_counter() - started > args.timeout:
                    raise SystemExit("timed out")
                time.sleep(5)
        elapsed = time.perf_counter() - started
    finally:
        daemon.__exit__(None, None, None)
        sampler.stopped.set()
        sampler.join()

    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_run_records()
    ok = sum(1 for record in runs if record.dagster_run.status == dg.DagsterRunStatus.SUCCESS)
    champions = sum(1 for name, _, _ in plan if registry.alias_version(f"retrain-{name}", "champion") is not None)
    ready = counts.get(onboarding.READY, 0)
    print(f"\nready: {ready}/{len(plan)} customers, champions: {champions}, runs: {len(runs)} ({ok} succeeded)")
    print(f"wall time until every onboarding was done: {elapsed:.0f} s ({elapsed / len(plan):.1f} s per customer)")
    print(
        f"peak memory of the process tree: {sampler.peak_total:,.0f} MB in all, {sampler.peak_single:,.0f} MB in one process"
    )
    return 0 if ready == len(plan) else 1


if __name__ == "__main__":
    sys.exit(main())
