"""Online scoring latency: single-row requests to `retrain-platform serve` from a few concurrent clients.

Run by hand: `python benchmarks/bench_serving.py [--requests 10000] [--clients 4] [--home PATH --customer NAME]`.
Without `--home` it makes a home in a temporary folder and trains one demo customer there (lumen-streaming,
a small search), then starts `retrain-platform serve` in its own process on a free localhost port. Each client
keeps one HTTP/1.1 connection open and sends one row per request, each with a new id; the figures are the wall
time of each request as the client sees it. Prints throughput and p50 / p90 / p99 / max latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TIME_LIMIT_SECONDS = 120


def train_demo_customer(home_dir: Path, customer: str) -> None:
    os.environ["RETRAIN_HOME"] = str(home_dir)
    os.environ["DAGSTER_HOME"] = str(home_dir / "dagster")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from retrain_platform.demo_data import demo_customers
    from retrain_platform.runner import Runner
    from retrain_platform.settings import Home
    from retrain_platform.spec import complete_spec, parse_spec

    Home(home_dir).ensure()
    demo = {c.customer: c for c in demo_customers(seed=0, history_rows=2_000, batch_rows=500)}[customer]
    spec = complete_spec(parse_spec(demo.spec), demo.history)
    with Runner.open() as runner:
        runner.add_customer(spec, demo.history)
        outcome = runner.train(customer, trigger="benchmark", search={"search_iterations": 2, "cv_splits": 2})
        if not outcome.success:
            raise SystemExit(f"training {customer} failed: {outcome.failure}")


def sample_rows(home_dir: Path, customer: str, count: int) -> tuple[list[dict], str | None]:
    import pandas as pd

    from retrain_platform.customers import load_spec
    from retrain_platform.warehouse import Warehouse, duckdb_connection_factory, quote

    warehouse = Warehouse(duckdb_connection_factory(str(home_dir / "warehouse.duckdb")), "duckdb")
    spec = load_spec(warehouse, customer)
    columns = ", ".join(quote(c) for c in spec.feature_names)
    frame = warehouse.query(f"select {columns} from {quote(spec.landing_table)} limit {int(count)}")
    rows = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]
    return [{**row, spec.id_column: f"bench-{i}"} if spec.id_column else row for i, row in enumerate(rows)], spec.id_column


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("serve did not answer /health in time")


def client(port: int, path: str, bodies: list[bytes], latencies: list[float], errors: list[str], stop_at: float) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for body in bodies:
        if time.monotonic() > stop_at:
            errors.append("time limit")
            return
        started = time.perf_counter()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            errors.append(str(response.status))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--home", help="a home with a trained customer (default: a fresh one, trained here)")
    parser.add_argument("--customer", default="lumen-streaming")
    args = parser.parse_args()

    home_dir = Path(args.home).resolve() if args.home else Path(tempfile.mkdtemp(prefix="bench-serving-"))
    if not args.home:
        started = time.perf_counter()
        train_demo_customer(home_dir, args.customer)
        print(f"trained {args.customer} in {time.perf_counter() - started:.0f} s (home {home_dir})")
    rows, id_column = sample_rows(home_dir, args.customer, 500)

    port = free_port()
    environment = {**os.environ, "RETRAIN_HOME": str(home_dir), "MLFLOW_DISABLE_TELEMETRY": "true"}
    environment.pop("DAGSTER_HOME", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "retrain_platform.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        wait_until_up(port, server)
        path = f"/customers/{args.customer}/predict"
        bodies = []
        for number in range(args.requests):
            row = dict(rows[number % len(rows)])
            if id_column:
                row[id_column] = f"bench-{number}"
            bodies.append(json.dumps({"rows": [row]}).encode())
        warm: list[float] = []
        client(port, path, bodies[:50], warm, [], time.monotonic() + 60)  # loads the model, fills caches

        latencies: list[float] = []
        errors: list[str] = []
        stop_at = time.monotonic() + TIME_LIMIT_SECONDS
        threads = [
            threading.Thread(target=client, args=(port, path, bodies[i :: args.clients], latencies, errors, stop_at))
            for i in range(args.clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.communicate(timeout=60)

    print(f"{len(latencies):,} single-row requests, {args.clients} concurrent clients, {os.cpu_count()} cores")
    print(f"throughput: {len(latencies) / wall:,.0f} requests/s over {wall:.1f} s; errors: {len(errors)}")
    print(
        "latency: p50 {:.1f} ms, p90 {:.1f} ms, p99 {:.1f} ms, max {:.1f} ms (target p99 < 50 ms)".format(
            *(1000 * percentile(latencies, q) for q in (0.5, 0.9, 0.99)), 1000 * max(latencies)
        )
    )


if __name__ == "__main__":
    main()
