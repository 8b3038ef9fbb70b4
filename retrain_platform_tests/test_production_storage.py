"""The production back ends, for real: a PostgreSQL server as Dagster's storage, and an `mlflow server` as the
registry. Both run as processes on 127.0.0.1 for this module only and are stopped at its end.

Dagster's instance takes its storage block from `deploy/dagster.yaml` (secrets from the environment, as in a
team deployment), so the file a team deploys is the one tested. The warehouse stays the embedded DuckDB: only
Dagster's storage, or only the registry, is swapped, and the code that runs is the platform's own `Runner`.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import sqlalchemy
import yaml

from retrain_platform import customers as customer_store
from retrain_platform import deployment, ledger, triggers
from retrain_platform.defs.automation import EVIDENCE_TAG, NEW_LABELS_SENSOR
from retrain_platform.defs.resources import Clock, MlflowRegistry
from retrain_platform.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from retrain_platform.runner import Runner
from retrain_platform.settings import CUSTOMER_TAG, TRIGGER_TAG
from retrain_platform_tests.conftest import TEST_SEARCH, project_definitions, skip_unless_required

pytestmark = pytest.mark.e2e

CUSTOMER = "lumen-streaming"
T0 = datetime(2026, 10, 1)  # the first training; the demo history ends the day before
TRAINING_ASSETS = ("training_dataset", "features", "candidate_models", "evaluation_report", "deployed_model")
DEPLOY_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"
# Debian's `postgresql` package creates this account; the server refuses to run as root.
POSTGRES_OS_USER = "postgres"
# The driver dagster-postgres depends on, named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3.
POSTGRES_SCHEME = "postgresql+psycopg2"
SERVER_START_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_binaries() -> Path | None:
    """The newest of Debian's `/usr/lib/postgresql/<major>/bin` (not on PATH), else `initdb`'s folder on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def code_location(resources: dict) -> dg.Definitions:
    """The project's assets, checks and jobs bound to `resources`, with its sensors and schedules."""
    from retrain_platform.definitions import defs

    return dg.Definitions.merge(
        project_definitions(resources), dg.Definitions(sensors=defs.sensors, schedules=defs.schedules)
    )


# ---------------------------------------------------------------------------------------------------
# A PostgreSQL server, and a Dagster instance whose storage lives in it


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str

    def query(self, sql: str, **params) -> list[tuple]:
        """Rows read straight from Postgres, past Dagster: what is there is in the database."""
        url = sqlalchemy.URL.create(
            "postgresql+psycopg2", self.user, self.password, self.host, self.port, self.database
        )
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params)]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A fresh cluster (initdb) served by pg_ctl on a free port of 127.0.0.1, password-authenticated over TCP,
    with an empty `dagster` database; stopped and deleted afterwards. As root, the server runs as `postgres`."""
    binaries = _postgres_binaries()
    if binaries is None:
        skip_unless_required("PostgreSQL's server binaries are not installed (Debian package `postgresql`; .ci/run installs it)")
    as_owner: list[str] = []
    # Not under pytest's tmp_path: its folders are private to root, and the server's user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="retrain-postgres-"))
    password = "retrain-test-password"
    (root / "password").write_text(password + "\n")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            shutil.rmtree(root)
            skip_unless_required(f"running as root and there is no `{POSTGRES_OS_USER}` user to run PostgreSQL as")
        for path in (root, root / "password"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", POSTGRES_OS_USER, "--"]
    server = PostgresServer("127.0.0.1", _free_port(), "dagster", password, "dagster")
    data, log = root / "data", root / "server.log"

    def run(*command: str, env: dict | None = None) -> None:
        completed = subprocess.run(
            command, check=False, capture_output=True, text=True, env=env, timeout=SERVER_START_SECONDS
        )
        assert completed.returncode == 0, f"{' '.join(command)}: {completed.stderr}\n{_tail(log)}"

    run(
        *as_owner, str(binaries / "initdb"), "-D", str(data), "-U", server.user, f"--pwfile={root / 'password'}",
        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    options = f"-h {server.host} -p {server.port} -k {root} -F"
    run(*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        run(
            str(binaries / "createdb"), "-h", server.host, "-p", str(server.port), "-U", server.user, server.database,
            env={**os.environ, "PGPASSWORD": password},
        )  # fmt: skip
        yield server
    finally:
        subprocess.run(
            [*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_instance(postgres, tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose `dagster.yaml` holds the `storage` block of `deploy/dagster.yaml`, its
    environment variables pointing at the test server."""
    storage = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())["storage"]
    # The file's driver when it names one; `test_the_deployed_instance_names_the_driver_it_installs` asks it to.
    storage["postgres"]["postgres_db"].setdefault("scheme", POSTGRES_SCHEME)
    values = {
        "hostname": postgres.host,
        "port": postgres.port,
        "username": postgres.user,
        "password": postgres.password,
        "db_name": postgres.database,
    }
    home = tmp_path_factory.mktemp("dagster-home-postgres")
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}}))
    with pytest.MonkeyPatch.context() as environment:
        for field, value in storage["postgres"]["postgres_db"].items():
            if isinstance(value, dict) and "env" in value:
                environment.setenv(value["env"], str(values[field]))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance


@pytest.fixture(scope="module")
def on_postgres(postgres_instance, open_platform, tmp_path_factory):
    """A platform (DuckDB warehouse, sqlite MLflow) whose Dagster instance is the Postgres one, with CUSTOMER
    onboarded and trained once by the runner; a retraining needs 300 new labelled rows."""
    with open_platform(tmp_path_factory.mktemp("postgres-platform")) as local:
        platform = dataclasses.replace(local, instance=postgres_instance, defs=code_location(local.resources))
        spec = platform.load_customer(CUSTOMER, automation={"new_labels_threshold": 300, "new_labels_share": 0.0})
        runner = Runner(platform.defs, postgres_instance)
        first = runner.train(
            CUSTOMER, trigger="test: postgres storage", clock=Clock(frozen_at=T0.isoformat()), search=TEST_SEARCH
        )
        yield platform, runner, spec, first


def test_the_deployed_instance_names_the_driver_it_installs():
    database = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())["storage"]["postgres"]["postgres_db"]
    assert database.get("scheme") == POSTGRES_SCHEME, (
        f"deploy/dagster.yaml: storage.postgres.postgres_db needs `scheme: {POSTGRES_SCHEME}`: dagster-postgres "
        "installs psycopg2, and SQLAlchemy 2.1 reads a bare postgresql:// URL as psycopg 3, which is not installed"
    )


def test_the_training_chain_runs_with_postgres_as_dagster_storage(postgres, postgres_instance, on_postgres):
    platform, runner, spec, first = on_postgres

    assert first.success, first.failure
    assert type(postgres_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(postgres_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(postgres_instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    # Through Dagster's API...
    run = postgres_instance.get_run_by_id(first.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert (run.tags["dagster/partition"], run.tags[CUSTOMER_TAG]) == (CUSTOMER, CUSTOMER)
    job_assets = platform.defs.resolve_job_def("train_customer").asset_layer.executable_asset_keys
    assert {dg.AssetKey(asset) for asset in TRAINING_ASSETS} <= job_assets
    for key in job_assets:
        records = postgres_instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[CUSTOMER]), limit=1
        ).records
        assert [record.run_id for record in records] == [first.run_id], key
    # ...and in Postgres's own tables.
    assert postgres.query("select status from runs where run_id = :run", run=first.run_id) == [("SUCCESS",)]
    materialized = postgres.query(
        "select distinct asset_key, partition from event_logs where run_id = :run and dagster_event_type = :kind",
        run=first.run_id, kind="ASSET_MATERIALIZATION",
    )  # fmt: skip
    assert sorted(materialized) == sorted((key.to_string(), CUSTOMER) for key in job_assets)
    assert postgres.query("select partition from dynamic_partitions where partitions_def_name = 'customers'") == [
        (CUSTOMER,)
    ]
    # The run deployed a champion, and the ledger names the run.
    assert runner.registry.alias_version(spec.model_name, CHAMPION) == "1"
    history = ledger.history(runner.warehouse, CUSTOMER)
    assert history.loc[history["dagster_run_id"] == first.run_id, "action"].tolist() == ["promote"]


def test_a_sensor_launched_retraining_runs_with_postgres_as_dagster_storage(postgres, postgres_instance, on_postgres):
    platform, runner, spec, first = on_postgres
    # 500 labelled rows the last training never saw: the new-labels sensor's evidence.
    runner.ingest_and_monitor(spec, platform.demo[CUSTOMER].batches[0], "2026-10-05", monitor=False)
    cursors: dict[str, str | None] = {}
    later = Clock(frozen_at=(T0 + timedelta(hours=48)).isoformat())  # past the 24 h cooldown

    (firing,) = runner.tick([NEW_LABELS_SENSOR], cursors, clock=later, search=TEST_SEARCH)
    again = runner.tick([NEW_LABELS_SENSOR], cursors, clock=later, search=TEST_SEARCH)

    assert firing.run.success, firing.run.failure
    assert (firing.sensor, firing.customer) == (NEW_LABELS_SENSOR, CUSTOMER)
    assert firing.evidence.startswith("500 new labelled rows")
    history = ledger.history(runner.warehouse, CUSTOMER)
    assert history.loc[history["dagster_run_id"] == firing.run.run_id, "action"].tolist() == [firing.action]
    assert again == []  # the same evidence never launches a second run
    expected_tags = {
        "dagster/sensor_name": NEW_LABELS_SENSOR,
        "dagster/run_key": f"{triggers.NEW_LABELS}:{CUSTOMER}:since-{first.run_id}",
        "dagster/partition": CUSTOMER,
        TRIGGER_TAG: triggers.NEW_LABELS,
        CUSTOMER_TAG: CUSTOMER,
        EVIDENCE_TAG: firing.evidence,
    }
    run = postgres_instance.get_run_by_id(firing.run.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert {key: run.tags.get(key) for key in expected_tags} == expected_tags
    stored = dict(postgres.query("select key, value from run_tags where run_id = :run", run=firing.run.run_id))
    assert {key: stored.get(key) for key in expected_tags} == expected_tags
    assert postgres.query("select status from runs where run_id = :run", run=firing.run.run_id) == [("SUCCESS",)]
    sensor_runs = postgres_instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": NEW_LABELS_SENSOR}))
    assert [r.run_id for r in sensor_runs] == [firing.run.run_id]


# ---------------------------------------------------------------------------------------------------
# A real MLflow tracking server as the registry


@dataclasses.dataclass(frozen=True)
class MlflowServer:
    uri: str
    artifacts: Path
    database: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """`mlflow server` on a free port of 127.0.0.1 (sqlite backend, artifacts served by the server), ready once
    /health answers; its process group is stopped afterwards, and this process's MLflow URIs put back."""
    import mlflow

    previous_uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    server = MlflowServer(f"http://127.0.0.1:{port}", root / "artifacts", root / "mlflow.db")
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", f"sqlite:///{server.database}",
        "--artifacts-destination", str(server.artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # The server's background job runners (evaluation jobs, trace archival) are of no use here.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log_path = root / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert process.poll() is None, f"mlflow server exited with {process.returncode}:\n{_tail(log_path)}"
            try:
                with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"mlflow server not up after {SERVER_START_SECONDS} s:\n{_tail(log_path)}"
            )
            time.sleep(0.5)
        yield server
    finally:
        # The server is a process group of its own (uvicorn and its worker): stop that group, nothing else.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # The registry points the fluent API at the server (`ModelRegistry._activate`); later tests expect none.
        mlflow.set_tracking_uri(previous_uris[0])
        mlflow.set_registry_uri(previous_uris[1])


def test_train_promote_and_roll_back_through_an_mlflow_server(mlflow_server, open_platform, tmp_path):
    from mlflow import MlflowClient

    with open_platform(tmp_path) as local:
        resources = {**local.resources, "registry": MlflowRegistry(tracking_uri=mlflow_server.uri)}
        platform = dataclasses.replace(local, resources=resources, defs=project_definitions(resources))
        spec = platform.load_customer(CUSTOMER)
        runner = Runner(platform.defs, platform.instance)
        server = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)

        def aliases() -> dict[str, str]:
            return {
                alias: str(version) for alias, version in server.get_registered_model(spec.model_name).aliases.items()
            }

        first = runner.train(CUSTOMER, trigger="test: first", clock=Clock(frozen_at=T0.isoformat()), search=TEST_SEARCH)
        assert first.success, first.failure
        assert aliases() == {CHAMPION: "1", CHALLENGER: "1"}
        # In alert mode a training registers its challenger and leaves the champion where it is.
        customer_store.save_spec(runner.warehouse, spec.model_copy(update={"mode": "alert"}))
        later = T0 + timedelta(hours=48)
        second = runner.train(
            CUSTOMER, trigger="test: second", clock=Clock(frozen_at=later.isoformat()), search=TEST_SEARCH
        )
        assert second.success, second.failure
        assert aliases() == {CHAMPION: "1", CHALLENGER: "2"}

        promoted = deployment.promote_challenger(
            runner.warehouse, runner.registry, spec, "2", now=later, reasons="test: better online",
            trigger="test: promote", expected_champion="1",
        )  # fmt: skip
        assert aliases() == {CHAMPION: "2", CHALLENGER: "2", PREVIOUS_CHAMPION: "1"}
        rolled_back = deployment.rollback(runner.warehouse, runner.registry, spec, now=later, reason="test: roll back")
        assert aliases() == {CHAMPION: "1", CHALLENGER: "2", PREVIOUS_CHAMPION: "2"}

        history = ledger.history(runner.warehouse, CUSTOMER)
        moves = history[["action", "from_version", "to_version", "champion_after", "dagster_run_id"]]
        assert moves.iloc[0].tolist() == ["promote", None, "1", "1", first.run_id]
        assert moves.iloc[1]["dagster_run_id"] == second.run_id
        assert moves.iloc[1]["champion_after"] == "1"
        assert moves.iloc[2:].values.tolist() == [
            [ledger.APPROVE, "1", "2", "2", None],
            ["rollback", "2", "1", "1", None],
        ]
        assert (promoted.champion_after, rolled_back.champion_after) == ("2", "1")

        # Every run and model lives on the server, its artifacts in the server's store, none in the local home.
        for version in server.search_model_versions(f"name = '{spec.model_name}'"):
            assert server.get_run(version.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert len(list(mlflow_server.artifacts.rglob("MLmodel"))) >= 2
        assert not any(platform.home.artifacts_dir.iterdir())
        local_store = MlflowClient(tracking_uri=platform.home.tracking_uri, registry_uri=platform.home.tracking_uri)
        assert local_store.search_registered_models() == []
        # The champion, downloaded from the server, scores rows.
        rows = platform.demo[CUSTOMER].batches[0].drop(columns=[spec.label_column]).head(50)
        scores = runner.registry.load(spec.model_name, CHAMPION).predict_proba(rows)
        assert scores.shape == (50, 2)
        assert np.allclose(scores.sum(axis=1), 1.0)
