"""The code location: `workspace.yaml` and `pyproject.toml` both point here."""

import dagster as dg

from retrain_platform.defs.automation import automation_jobs, automation_schedules, automation_sensors
from retrain_platform.defs.monitoring import (
    drift_baseline,
    monitor_batch,
    monitoring_assets,
    monitoring_checks,
    remeasure_batch,
)
from retrain_platform.defs.onboarding import onboarding_assets, onboarding_sensors
from retrain_platform.defs.resources import resources_for_environment
from retrain_platform.defs.sources import source_sensors
from retrain_platform.defs.training import train_customer, training_assets, training_checks
from retrain_platform.library_notices import quiet_known_notices

quiet_known_notices()

defs = dg.Definitions(
    assets=[*training_assets, drift_baseline, *monitoring_assets, *onboarding_assets],
    asset_checks=[*training_checks, *monitoring_checks],
    jobs=[train_customer, monitor_batch, remeasure_batch, *automation_jobs],
    sensors=[*automation_sensors, *onboarding_sensors, *source_sensors],
    schedules=automation_schedules,
    resources=resources_for_environment(),
    # Steps run in the run's own process: one DuckDB writer per run, and no re-import cost per step.
    executor=dg.in_process_executor,
)
