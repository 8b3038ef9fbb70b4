"""Every resource key, defined once, and the one place that picks local or production settings.

Assets ask for a `warehouse` and a `registry`; they never know whether that is DuckDB and a sqlite MLflow
under `RETRAIN_HOME`, or Snowflake and a shared MLflow server.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from dagster_snowflake import SnowflakeResource
from pydantic import Field
from upath import UPath

from retrain_platform import alerts, settings
from retrain_platform.registry import ModelRegistry
from retrain_platform.warehouse import Warehouse


# DuckDB files held open by this process (see `duckdb_kept_open`), by path.
_KEPT_OPEN: dict[str, duckdb.DuckDBPyConnection] = {}


@contextmanager
def duckdb_kept_open(database: str) -> Iterator[None]:
    """Within the block, every `DuckDBWarehouse` on `database` in this process shares one open database.

    For in-process work that runs many jobs in a row (replay, the demo): opening the file costs more than
    most statements. It locks other processes out of the file meanwhile, so commands that wait on a daemon's
    runs never use it."""
    connection = duckdb.connect(database)
    _KEPT_OPEN[database] = connection
    try:
        yield
    finally:
        _KEPT_OPEN.pop(database, None)
        connection.close()


class DuckDBWarehouse(DuckDBResource):
    """The embedded warehouse: one DuckDB file, opened for each statement so other processes can share it."""

    def get_warehouse(self) -> Warehouse:
        @contextmanager
        def connect():
            kept = _KEPT_OPEN.get(self.database)
            if kept is not None:
                cursor = kept.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
                return
            with self.get_connection() as conn:
                yield conn

        return Warehouse(connect, "duckdb")


def one_connection_per_tick(evaluate):
    """Evaluate a sensor over one open DuckDB database instead of one per statement: opening the file reads its
    whole catalog, a quarter to half a second at 1,000 customers' tables, which cost a tick more than its
    work. Other processes wait for the file meanwhile (dagster-duckdb retries for about a minute), as they wait
    for any writer. Snowflake and a file this process holds open already (a replay) are left as they are."""

    @functools.wraps(evaluate)
    def tick(*args, **kwargs):
        provider = kwargs.get("warehouse")
        database = getattr(provider, "database", None)
        if not isinstance(provider, DuckDBWarehouse) or database in _KEPT_OPEN:
            return evaluate(*args, **kwargs)
        with ExitStack() as stack:
            try:
                stack.enter_context(duckdb_kept_open(database))
            except duckdb.Error:
                pass  # another process holds the file: statement by statement, each waiting its turn
            return evaluate(*args, **kwargs)

    return tick


class SnowflakeWarehouse(SnowflakeResource):
    """The production warehouse, through dagster-snowflake's connection settings."""

    def get_warehouse(self) -> Warehouse:
        return Warehouse(self.get_connection, "snowflake")


class MlflowRegistry(dg.ConfigurableResource):
    """MLflow tracking and model registry.

    A configurable resource rather than dagster-mlflow's `mlflow_tracking`: that one is a legacy function
    resource that rewrites `os.environ` and ends the MLflow run after the first op; we tag every MLflow run
    with the Dagster run id instead.
    """

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///.retrain/mlflow.db or https://mlflow.internal")
    registry_uri: str | None = Field(default=None, description="Model registry URI; the tracking URI when unset")
    artifact_root: str | None = Field(default=None, description="Where new experiments keep artifacts")

    def get_registry(self) -> ModelRegistry:
        return ModelRegistry(self.tracking_uri, self.registry_uri, self.artifact_root)


class Clock(dg.ConfigurableResource):
    """What time it is for every decision the platform takes: the real time, or a fixed instant.

    Sensors, schedules and the ledger ask this resource, never the wall clock, so a dataset's history can
    be replayed through the same sensors at simulated times (and tests can freeze time).
    """

    frozen_at: str | None = Field(default=None, description="ISO timestamp to use as now (UTC), e.g. 2026-10-15T00:00")

    def now(self) -> datetime:
        """Naive UTC, like every timestamp the warehouse keeps."""
        if self.frozen_at:
            moment = datetime.fromisoformat(self.frozen_at)
            return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
        return datetime.now(timezone.utc).replace(tzinfo=None)


class AlertChannel(dg.ConfigurableResource):
    """Where alerts go besides the warehouse's `alerts` table and the Dagster log: an optional webhook."""

    webhook_url: str | None = Field(default=None, description="POSTed a JSON body per alert; unset: no webhook")
    timeout_seconds: float = Field(default=alerts.WEBHOOK_TIMEOUT_SECONDS, gt=0)

    def send(self, warehouse: Warehouse, alert: alerts.Alert, log: logging.Logger | None = None) -> bool:
        return alerts.record(warehouse, alert, self.webhook_url, self.timeout_seconds, log)


class PickledUPathIOManager(dg.UPathIOManager):
    """Each asset value pickled at `<base path>/<asset key>/<partition>`, on any fsspec filesystem."""

    # No extension: the layout of Dagster's default filesystem IO manager, which the embedded set-up uses.
    extension = ""

    def dump_to_path(self, context: dg.OutputContext, obj, path: UPath) -> None:
        with path.open("wb") as file:
            pickle.dump(obj, file, pickle.HIGHEST_PROTOCOL)

    def load_from_path(self, context: dg.InputContext, path: UPath):
        with path.open("rb") as file:
            return pickle.load(file)


class SharedIOManager(dg.ConfigurableIOManagerFactory):
    """Where intermediate asset values (features, candidate models, evaluation report, deployment) travel
    between steps and between runs, when the runs do not share a disk.

    Re-executing a run from its failed step, or materializing `evaluation_report` or `deployed_model` alone,
    loads the inputs an earlier run stored; on Kubernetes or in per-run containers that run's disk went with
    its pod. So production keeps them under one base path every run worker reaches: object storage
    (`s3://`, with the `production` extra) or a folder on a volume they all mount.
    """

    base_path: str = Field(description="Folder or fsspec URL, e.g. s3://bucket/retrain-io or /var/retrain-io")

    def create_io_manager(self, context: dg.InitResourceContext) -> PickledUPathIOManager:
        return PickledUPathIOManager(base_path=UPath(self.base_path))


def local_resources(home: settings.Home, clock: Clock | None = None) -> dict:
    return {
        "warehouse": DuckDBWarehouse(database=str(home.warehouse_path)),
        "registry": MlflowRegistry(tracking_uri=home.tracking_uri, artifact_root=str(home.artifacts_dir)),
        "clock": clock or Clock(),
        "alerts": AlertChannel(webhook_url=_optional_env(settings.ALERT_WEBHOOK_ENV)),
    }


def production_resources() -> dict:
    return {
        "warehouse": SnowflakeWarehouse(
            account=dg.EnvVar("SNOWFLAKE_ACCOUNT"),
            user=dg.EnvVar("SNOWFLAKE_USER"),
            password=dg.EnvVar("SNOWFLAKE_PASSWORD"),
            database=dg.EnvVar("SNOWFLAKE_DATABASE"),
            schema=dg.EnvVar("SNOWFLAKE_SCHEMA"),
            warehouse=dg.EnvVar("SNOWFLAKE_WAREHOUSE"),
            role=dg.EnvVar("SNOWFLAKE_ROLE"),
        ),
        "registry": MlflowRegistry(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
            registry_uri=_optional_env("MLFLOW_REGISTRY_URI"),
            artifact_root=_optional_env("MLFLOW_ARTIFACT_ROOT"),
        ),
        "clock": Clock(),
        "alerts": AlertChannel(webhook_url=_optional_env(settings.ALERT_WEBHOOK_ENV)),
        "io_manager": SharedIOManager(base_path=dg.EnvVar(settings.IO_BASE_PATH_ENV)),
    }


def _optional_env(name: str) -> dg.EnvVar | None:
    return dg.EnvVar(name) if os.environ.get(name) else None


def resources_for_environment(home: settings.Home | None = None) -> dict:
    if settings.environment() == settings.PRODUCTION:
        return production_resources()
    return local_resources((home or settings.Home.from_env()).ensure())
