"""Where the platform keeps its state, and which environment it runs in.

Everything local lives under one home folder (`RETRAIN_HOME`, default `.retrain/` in the working directory):
the DuckDB warehouse, MLflow's sqlite tracking and registry database, model artifacts and `DAGSTER_HOME`.
Production swaps these for Snowflake and a shared MLflow server through environment variables only
(see `retrain_platform/defs/resources.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCAL = "local"
PRODUCTION = "production"

# The run tag that names the customer a run works for; the queue allows one run per customer at a time.
CUSTOMER_TAG = "retrain/customer"
# Why a run exists (a sensor, a schedule, onboarding); a backfill passes it to its runs as a tag, not config.
TRIGGER_TAG = "retrain/trigger"

# One writer at a time per DuckDB file: the queued run coordinator keeps runs from overlapping, so any
# number of runs launched at once (one per customer, from sensors or the UI) wait their turn. The
# per-customer limit is what still holds on a warehouse that takes concurrent writers (raise
# max_concurrent_runs there): never two runs for one customer at once.
DAGSTER_YAML = f"""\
# Written by retrain-platform for the embedded (local) environment.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
    dequeue_interval_seconds: 2
    tag_concurrency_limits:
      - key: "{CUSTOMER_TAG}"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
telemetry:
  enabled: false
"""

ALERT_WEBHOOK_ENV = "RETRAIN_ALERT_WEBHOOK_URL"
# Where production keeps intermediate asset values: a folder or URL every run worker reaches (s3://...).
IO_BASE_PATH_ENV = "RETRAIN_IO_BASE_PATH"
INFERENCE_SCHEDULE_ENV = "RETRAIN_INFERENCE_SCHEDULE"
RETRAINING_SCHEDULE_ENV = "RETRAIN_RETRAINING_SCHEDULE"
SCHEDULE_TIMEZONE_ENV = "RETRAIN_SCHEDULE_TIMEZONE"
DEFAULT_INFERENCE_SCHEDULE = "0 2 * * *"  # daily, 02:00
DEFAULT_RETRAINING_SCHEDULE = "0 3 * * 1"  # weekly, Monday 03:00


@dataclass(frozen=True)
class Home:
    """The folder that holds every piece of local state."""

    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(Path(os.environ.get("RETRAIN_HOME", ".retrain")).resolve())

    @property
    def warehouse_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    def ensure(self) -> Home:
        """Create the folders and a `dagster.yaml` if missing; never overwrite a user's edits."""
        for folder in (self.root, self.artifacts_dir, self.dagster_home):
            folder.mkdir(parents=True, exist_ok=True)
        dagster_yaml = self.dagster_home / "dagster.yaml"
        if not dagster_yaml.exists():
            dagster_yaml.write_text(DAGSTER_YAML)
        return self

    def export_environment(self) -> None:
        """Point Dagster and MLflow at this home for the current process and its children."""
        os.environ["RETRAIN_HOME"] = str(self.root)
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass(frozen=True)
class Schedules:
    """The cron strings of the daily inference and the weekly retraining, and their time zone."""

    inference: str
    retraining: str
    timezone: str


def schedules() -> Schedules:
    """From `RETRAIN_INFERENCE_SCHEDULE`, `RETRAIN_RETRAINING_SCHEDULE` and `RETRAIN_SCHEDULE_TIMEZONE`."""
    chosen = Schedules(
        inference=os.environ.get(INFERENCE_SCHEDULE_ENV, DEFAULT_INFERENCE_SCHEDULE).strip(),
        retraining=os.environ.get(RETRAINING_SCHEDULE_ENV, DEFAULT_RETRAINING_SCHEDULE).strip(),
        timezone=os.environ.get(SCHEDULE_TIMEZONE_ENV, "UTC").strip(),
    )
    for name, value in ((INFERENCE_SCHEDULE_ENV, chosen.inference), (RETRAINING_SCHEDULE_ENV, chosen.retraining)):
        if len(value.split()) != 5:
            raise ValueError(f"{name}: {value!r} is not a cron string (e.g. '0 2 * * *')")
    return chosen


def environment() -> str:
    """`local` (embedded defaults) unless `RETRAIN_ENV=production`."""
    value = os.environ.get("RETRAIN_ENV", LOCAL).strip().lower()
    if value not in (LOCAL, PRODUCTION):
        raise ValueError(f"RETRAIN_ENV must be {LOCAL!r} or {PRODUCTION!r}, not {value!r}")
    return value
