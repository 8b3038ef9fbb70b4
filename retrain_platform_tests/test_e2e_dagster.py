"""The platform as `dagster dev` runs it: dagster-webserver and dagster-daemon in subprocesses on a free
localhost port, over a home the platform prepared (its own dagster.yaml with the queued run coordinator).

Training runs, one per customer, are launched at once through Dagster's GraphQL client; the queue runs
them one at a time (DuckDB has a single writer) and every one succeeds. Meanwhile the daemon ticks the
platform's sensors against the same warehouse. The suite launches two runs; `RETRAIN_E2E_CUSTOMERS=5`
launches one for each of the five demo customers (about a minute more per customer).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from retrain_platform import customers, ledger
from retrain_platform.defs.resources import local_resources
from retrain_platform.demo_data import DEMO_CUSTOMER_NAMES, demo_customers
from retrain_platform.ingest import HISTORY_BATCH
from retrain_platform.registry import CHAMPION, PREVIOUS_CHAMPION
from retrain_platform.settings import CUSTOMER_TAG, Home
from retrain_platform.spec import complete_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HISTORY_ROWS = 1_500
CUSTOMER_COUNT = int(os.environ.get("RETRAIN_E2E_CUSTOMERS", "2"))
STARTUP_SECONDS = 180
RUNS_SECONDS = 300
RUN_CONFIG = {
    "ops": {
        "candidate_models": {"config": {"search_iterations": 2, "cv_splits": 2, "trigger": "e2e"}},
        "deployed_model": {"config": {"trigger": "e2e"}},
    }
}
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_home(root: Path, count: int) -> tuple[Home, list[str]]:
    """What `retrain-platform demo` does before training: a home, small demo customers, their partitions."""
    home = Home(root).ensure()
    resources = local_resources(home)
    warehouse = resources["warehouse"].get_warehouse()
    names = []
    for customer in demo_customers(seed=0, history_rows=HISTORY_ROWS, batch_rows=10, n_batches=0)[:count]:
        spec = complete_spec(parse_spec(customer.spec), customer.history)
        warehouse.write(spec.landing_table, customer.history.assign(batch_id=HISTORY_BATCH))
        customers.save_spec(warehouse, spec)
        names.append(spec.customer)
    # Create MLflow's tables now, not concurrently from a run and a sensor.
    resources["registry"].get_registry().client.search_registered_models()
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        instance.add_dynamic_partitions("customers", names)
    return home, names


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    # A session of its own, so the process and the code servers it spawns can be stopped together.
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def status(client: DagsterGraphQLClient, run_id: str) -> str | None:
    try:
        return client.get_run_status(run_id).value
    except DagsterGraphQLClientError:  # the run is not visible yet
        return None


def wait_for_webserver(port: int, processes: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        for process, log in zip(processes, logs):
            assert process.poll() is None, f"{log.name} exited early:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the webserver did not answer within {STARTUP_SECONDS} s:\n{logs[0].read_text()[-3000:]}")


@pytest.mark.e2e
@pytest.mark.slow
def test_runs_launched_at_once_through_graphql_all_succeed_one_at_a_time(tmp_path):
    home, names = prepare_home(tmp_path / "home", CUSTOMER_COUNT)
    assert names == list(DEMO_CUSTOMER_NAMES[:CUSTOMER_COUNT])
    port = free_port()
    env = {
        **os.environ,
        "RETRAIN_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster_home),
        "RETRAIN_ENV": "local",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
    }
    logs = [tmp_path / "webserver.log", tmp_path / "daemon.log"]
    processes = []
    try:
        webserver = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]
        processes.append(start(webserver, env, logs[0]))
        processes.append(start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, logs[1]))
        wait_for_webserver(port, processes, logs)

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_ids = {
            name: client.submit_job_execution(
                "train_customer", run_config=RUN_CONFIG, tags={"dagster/partition": name, CUSTOMER_TAG: name}
            )
            for name in names
        }
        deadline = time.monotonic() + RUNS_SECONDS
        while True:
            statuses = {name: status(client, run_id) for name, run_id in run_ids.items()}
            if all(value in DONE for value in statuses.values()) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert statuses == dict.fromkeys(names, "SUCCESS"), f"{statuses}\n{logs[1].read_text()[-3000:]}"
    finally:
        for process in processes:
            stop(process)

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        records = [instance.get_run_record_by_id(run_id) for run_id in run_ids.values()]
        spans = sorted((record.start_time, record.end_time) for record in records)
        tags = {record.dagster_run.tags["dagster/partition"]: record.dagster_run.tags for record in records}
    # The queue let one run at a time write to DuckDB.
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    assert {name: tag[CUSTOMER_TAG] for name, tag in tags.items()} == {name: name for name in names}

    resources = local_resources(home)
    warehouse, registry = resources["warehouse"].get_warehouse(), resources["registry"].get_registry()
    history = ledger.history(warehouse)
    assert sorted(history["customer"]) == sorted(names)
    assert set(history["trigger"]) == {"e2e"}
    assert set(history["dagster_run_id"]) == set(run_ids.values())
    for spec in customers.list_specs(warehouse):
        expected = None if spec.mode == "approve" else "1"
        assert registry.alias_version(spec.model_name, CHAMPION) == expected
        assert registry.alias_version(spec.model_name, PREVIOUS_CHAMPION) is None
