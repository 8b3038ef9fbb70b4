"""The team deployment in `deploy/`, checked offline: the Dagster instance by Dagster's own config validation,
the compose file by `docker-compose config`, the Helm values against the keys Dagster's chart reads, the
Dockerfile against the code location and the workspace; and the IO manager production uses, by a training
run whose values a second process loads from the shared path alone."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml

# dagster.yaml's schema and its configurable classes have no public validation API; these are what
# `DagsterInstance.from_config` runs.
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config
from dagster._serdes.config_class import ConfigurableClassData

from retrain_platform import settings
from retrain_platform.defs.resources import SharedIOManager, local_resources
from retrain_platform_tests.conftest import TEST_SEARCH, Platform, project_definitions, skip_unless_required

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

PG_SETTINGS = {
    "DAGSTER_PG_HOST": "db.internal",
    "DAGSTER_PG_PORT": "6543",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
}
COMPOSE_SERVICES = {"postgres", "mlflow", "code_location", "webserver", "daemon"}

# Every key path deploy/helm/values.yaml may set, as Dagster's chart (helm/dagster, 1.13) reads them: its
# values.yaml and the pydantic schema its values.schema.json is generated from (schema/charts/dagster/values.py
# and subschema/{global_,daemon,postgresql,run_launcher,telemetry}.py; dagster_user_deployments/subschema/
# user_deployments.py). `[]` stands for every item of a list of objects; other lists are values.
CHART_KEYS = {
    "global.postgresqlSecretName",
    "dagster-user-deployments.enabled",
    "dagster-user-deployments.enableSubchart",
    "dagster-user-deployments.deployments[].name",
    "dagster-user-deployments.deployments[].image.repository",
    "dagster-user-deployments.deployments[].image.tag",
    "dagster-user-deployments.deployments[].image.pullPolicy",
    "dagster-user-deployments.deployments[].codeServerArgs",
    "dagster-user-deployments.deployments[].dagsterApiGrpcArgs",
    "dagster-user-deployments.deployments[].port",
    "dagster-user-deployments.deployments[].includeConfigInLaunchedRuns.enabled",
    "dagster-user-deployments.deployments[].env",
    "dagster-user-deployments.deployments[].envConfigMaps",
    "dagster-user-deployments.deployments[].envSecrets",
    "dagster-user-deployments.deployments[].resources",
    "runLauncher.type",
    "runLauncher.config.k8sRunLauncher.jobNamespace",
    "runLauncher.config.k8sRunLauncher.envConfigMaps",
    "runLauncher.config.k8sRunLauncher.envSecrets",
    "runLauncher.config.k8sRunLauncher.envVars",
    "postgresql.enabled",
    "postgresql.postgresqlHost",
    "postgresql.postgresqlUsername",
    "postgresql.postgresqlDatabase",
    "postgresql.postgresqlScheme",
    "postgresql.postgresqlParams",
    "postgresql.postgresqlScheme",
    "postgresql.service.port",
    "generatePostgresqlPasswordSecret",
    "dagsterDaemon.enabled",
    "dagsterDaemon.runCoordinator.enabled",
    "dagsterDaemon.runCoordinator.type",
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns",
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits",
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.dequeueIntervalSeconds",
    "dagsterDaemon.runMonitoring.enabled",
    "dagsterDaemon.runMonitoring.startTimeoutSeconds",
    "dagsterDaemon.runMonitoring.pollIntervalSeconds",
    "dagsterDaemon.runMonitoring.maxResumeRunAttempts",
    "telemetry.enabled",
}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _dockerfile_cmd() -> list[str]:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    return json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))


def _flag(arguments: list[str], *names: str) -> str:
    return next(arguments[i + 1] for i, argument in enumerate(arguments) if argument in names)


# ---------------------------------------------------------------------------------------------------
# deploy/dagster.yaml


@pytest.fixture
def instance_config(monkeypatch, tmp_path) -> dict:
    """deploy/dagster.yaml as Dagster loads it from a DAGSTER_HOME, validated against the instance schema."""
    for name, value in PG_SETTINGS.items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_instance_class = dagster_instance_config(str(tmp_path))
    assert custom_instance_class is None
    return config


def test_instance_keeps_runs_events_and_schedules_in_postgres_from_the_environment(instance_config):
    storage = instance_config["storage"]
    assert set(storage) == {"postgres"}, "one Postgres database for runs, event logs and schedules"
    database = storage["postgres"]["postgres_db"]
    assert database["password"] == {"env": "DAGSTER_PG_PASSWORD"}, "the password comes from the environment"
    fields = dict(database)
    assert fields.pop("scheme") == "postgresql+psycopg2", "the driver dagster-postgres installs"
    assert all(isinstance(value, dict) and set(value) == {"env"} for value in fields.values())

    resolved = process_config(pg_config(), storage["postgres"])
    assert resolved.success, resolved.errors
    assert resolved.value["postgres_db"] == {
        "hostname": "db.internal",
        "port": 6543,
        "username": "dagster",
        "password": "not-a-real-password",
        "db_name": "dagster",
        "params": {},
        "scheme": "postgresql+psycopg2",
    }


def test_queue_runs_many_customers_at_once_but_one_run_per_customer(instance_config):
    coordinator = instance_config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    config = coordinator["config"]
    assert config["tag_concurrency_limits"] == [
        {"key": settings.CUSTOMER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    local_limit = yaml.safe_load(settings.DAGSTER_YAML)["run_coordinator"]["config"]["max_concurrent_runs"]
    assert config["max_concurrent_runs"] > local_limit, "Snowflake takes concurrent writers; DuckDB one"
    ConfigurableClassData(coordinator["module"], coordinator["class"], yaml.safe_dump(config)).rehydrate(as_type=object)


def test_instance_watches_run_workers_and_sends_no_telemetry(instance_config):
    assert instance_config["run_monitoring"]["enabled"] is True
    assert instance_config["telemetry"] == {"enabled": False}
    launcher = instance_config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    if importlib.util.find_spec("dagster_docker") is not None:  # the `production` extra
        ConfigurableClassData(launcher["module"], launcher["class"], yaml.safe_dump(launcher["config"])).rehydrate(
            as_type=object
        )


# ---------------------------------------------------------------------------------------------------
# deploy/docker-compose.yaml and deploy/.env.example


def _compose(*arguments: str, env_file: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        skip_unless_required("docker-compose is not installed (Debian package `docker-compose`)")
    # Only PATH and HOME: no variable of the developer's shell may fill in a secret the env file lacks.
    clean = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(DEPLOY / "docker-compose.yaml"), *arguments],
        capture_output=True, text=True, env=clean, timeout=60,
    )  # fmt: skip


def _mounts(service: dict) -> dict[str, str]:
    """Target to source; docker-compose v1 prints `source:target[:mode]`, v2 a mapping."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = source
    return mounts


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as docker-compose resolves it with deploy/.env.example's placeholders."""
    completed = _compose("config", env_file=DEPLOY / ".env.example")
    assert completed.returncode == 0, completed.stderr
    return yaml.safe_load(completed.stdout)


def test_compose_runs_the_team_setup_on_one_host(compose):
    services = compose["services"]
    assert set(services) == COMPOSE_SERVICES
    assert services["code_location"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(services["code_location"]["build"]["context"]) == ROOT
    image = services["code_location"]["image"]
    assert {service["image"] for service in services.values() if service is not services["postgres"]} == {image}
    assert services["code_location"]["environment"]["DAGSTER_CURRENT_IMAGE"] == image

    for name in ("code_location", "webserver", "daemon"):
        assert services[name]["environment"]["DAGSTER_PG_HOST"] == "postgres"
        mounts = _mounts(services[name])
        for file in ("dagster.yaml", "workspace.yaml"):
            assert Path(mounts[f"/opt/dagster/dagster_home/{file}"]) == DEPLOY / file
    for name in ("code_location", "daemon"):
        environment = services[name]["environment"]
        assert environment["RETRAIN_ENV"] == settings.PRODUCTION
        tracking = urlparse(environment["MLFLOW_TRACKING_URI"])
        assert tracking.hostname == "mlflow" and f"--port={tracking.port}" in services["mlflow"]["command"]
    assert not any(name.startswith("SNOWFLAKE_") for name in services["webserver"]["environment"])

    mlflow = services["mlflow"]["command"]
    assert "--serve-artifacts" in mlflow
    assert "mlflow:5000" in _flag([part for arg in mlflow for part in arg.split("=", 1)], "--allowed-hosts").split(",")


def test_compose_and_the_run_launcher_agree_on_network_volume_and_environment(compose):
    instance = _yaml(DEPLOY / "dagster.yaml")["run_launcher"]["config"]
    assert instance["network"] in {network["name"] for network in compose["networks"].values()}
    io_volume, io_path = instance["container_kwargs"]["volumes"][0].split(":")
    assert io_volume in {volume["name"] for volume in compose["volumes"].values() if "name" in volume}
    code_location = compose["services"]["code_location"]["environment"]
    assert code_location[settings.IO_BASE_PATH_ENV] == io_path
    # A run's container gets what the code location has, bar what names the image it runs in.
    assert set(instance["env_vars"]) == set(code_location) - {"DAGSTER_CURRENT_IMAGE"}


def test_compose_takes_every_secret_from_the_env_file_and_names_a_missing_one(tmp_path):
    example = (DEPLOY / ".env.example").read_text()
    compose_text = (DEPLOY / "docker-compose.yaml").read_text()
    for name in ("DAGSTER_PG_PASSWORD", "SNOWFLAKE_PASSWORD"):
        assert f"${{{name}:?" in compose_text, f"{name} is required, not defaulted"
        assert f"{name}=change-me" in example
    empty = tmp_path / "empty.env"
    empty.write_text("")
    completed = _compose("config", env_file=empty)
    assert completed.returncode != 0
    assert "set DAGSTER_PG_USER in deploy/.env" in completed.stderr


# ---------------------------------------------------------------------------------------------------
# deploy/Dockerfile and deploy/workspace.yaml


def test_dockerfile_serves_the_code_location_on_the_port_the_workspace_uses():
    command = _dockerfile_cmd()
    assert command[:3] == ["dagster", "code-server", "start"]
    module = _flag(command, "--module-name", "-m")
    assert module == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert importlib.util.find_spec(module) is not None
    port = int(_flag(command, "--port", "-p"))
    assert f"EXPOSE {port}" in (DEPLOY / "Dockerfile").read_text()

    [server] = [entry["grpc_server"] for entry in _yaml(DEPLOY / "workspace.yaml")["load_from"]]
    assert (server["port"], server["location_name"]) == (port, _flag(command, "--location-name"))
    assert server["host"] in COMPOSE_SERVICES


def test_dockerfile_copies_files_that_exist_and_installs_the_production_extra():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            assert all((ROOT / source).exists() for source in sources), line
    assert 'pip install ".[production]"' in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("s3fs") for requirement in extras["production"])


# ---------------------------------------------------------------------------------------------------
# deploy/helm/values.yaml


def _key_paths(values: object, prefix: str = "") -> set[str]:
    if isinstance(values, dict):
        return set().union(*(_key_paths(value, f"{prefix}.{key}" if prefix else key) for key, value in values.items()))
    if isinstance(values, list) and prefix.endswith("deployments"):
        return set().union(*(_key_paths(item, f"{prefix}[]") for item in values))
    return {prefix}


def test_helm_values_set_only_keys_the_chart_reads():
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    unknown = _key_paths(values) - CHART_KEYS
    assert not unknown, f"keys Dagster's chart does not read: {sorted(unknown)}"


def test_helm_values_deploy_our_image_with_the_k8s_launcher_and_an_external_postgres():
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    assert deployment["image"]["repository"].endswith("/retrain-platform")
    assert deployment["image"]["tag"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    command = _dockerfile_cmd()
    assert _flag(deployment["codeServerArgs"], "--module-name") == _flag(command, "--module-name")
    assert deployment["port"] == int(_flag(command, "--port"))
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["RETRAIN_ENV"] == settings.PRODUCTION
    assert urlparse(env[settings.IO_BASE_PATH_ENV]).scheme == "s3", "run pods share no disk"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] == deployment["envSecrets"]

    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False
    assert postgresql["postgresqlHost"] and "postgresqlPassword" not in postgresql
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]


def test_helm_values_queue_runs_like_the_compose_instance():
    daemon = _yaml(DEPLOY / "helm" / "values.yaml")["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    instance = _yaml(DEPLOY / "dagster.yaml")
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert queued["tagConcurrencyLimits"] == instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert queued["maxConcurrentRuns"] == instance["run_coordinator"]["config"]["max_concurrent_runs"]
    assert daemon["runMonitoring"]["enabled"] is True
    assert _yaml(DEPLOY / "helm" / "values.yaml")["telemetry"] == {"enabled": False}


# ---------------------------------------------------------------------------------------------------
# The IO manager production uses

TRAINING_VALUES = ("features", "candidate_models", "evaluation_report", "deployed_model")

# A second process that shares only what a production deployment shares: the base path, and the customer
# partition its Dagster storage knows. Production's own definitions, a fresh instance, and placeholder
# warehouse settings it never connects with.
LOAD_ELSEWHERE = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from retrain_platform.definitions import defs

    customer = sys.argv[1]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("customers", [customer])
    loader = defs.get_asset_value_loader(instance=instance)
    with loader:
        deployment = loader.load_asset_value("deployed_model", partition_key=customer)
        models = loader.load_asset_value("candidate_models", partition_key=customer)
        report = loader.load_asset_value("evaluation_report", partition_key=customer)
        features = loader.load_asset_value("features", partition_key=customer)
    print(json.dumps({
        "champion_version": deployment.champion_version,
        "challenger_version": models.challenger_version,
        "verdict": str(report.verdict),
        "holdout_rows": len(features.holdout),
        "predictions": models.pipeline.predict(features.holdout[features.spec.feature_names]).tolist(),
    }))
    """
)


@pytest.mark.slow
@pytest.mark.e2e
def test_training_values_travel_through_the_shared_path_to_another_process(home, instance, demo_data, tmp_path):
    base = tmp_path / "shared-io"
    resources = {**local_resources(home), "io_manager": SharedIOManager(base_path=base.as_uri())}
    platform = Platform(home, resources, instance, demo_data, project_definitions(resources))
    spec = platform.load_customer("lumen-streaming")

    result = platform.train(spec.customer, **TEST_SEARCH)
    assert result.success
    for asset in TRAINING_VALUES:
        assert (base / asset / spec.customer).is_file(), f"{asset} was not stored under the shared path"
    assert not (Path(instance.storage_directory()) / "features").exists(), "nothing left in DAGSTER_HOME"

    environment = {
        **os.environ,
        "RETRAIN_ENV": settings.PRODUCTION,
        settings.IO_BASE_PATH_ENV: base.as_uri(),
        "MLFLOW_TRACKING_URI": home.tracking_uri,
        **{name: "placeholder" for name in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD")},
    }
    environment.pop("DAGSTER_HOME", None)
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE, spec.customer],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])

    models = result.output_for_node("candidate_models")
    features = result.output_for_node("features")
    assert loaded["champion_version"] == result.output_for_node("deployed_model").champion_version
    assert loaded["challenger_version"] == models.challenger_version
    assert loaded["verdict"] == str(result.output_for_node("evaluation_report").verdict)
    assert loaded["holdout_rows"] == len(features.holdout) > 0
    assert loaded["predictions"] == models.pipeline.predict(features.holdout[features.spec.feature_names]).tolist()


def test_production_reads_the_io_base_path_from_the_environment_and_needs_it(monkeypatch, tmp_path):
    from retrain_platform.defs.resources import production_resources

    @dg.asset
    def value() -> dict:
        """A small value to store."""
        return {"rows": 3}

    io_manager = production_resources()["io_manager"]
    assert isinstance(io_manager, SharedIOManager)
    monkeypatch.delenv(settings.IO_BASE_PATH_ENV, raising=False)
    with pytest.raises(dg.DagsterInvalidConfigError, match=settings.IO_BASE_PATH_ENV):
        dg.materialize([value], resources={"io_manager": io_manager})

    monkeypatch.setenv(settings.IO_BASE_PATH_ENV, (tmp_path / "io").as_uri())
    assert dg.materialize([value], resources={"io_manager": io_manager}).success
    with (tmp_path / "io" / "value").open("rb") as stored:
        assert pickle.load(stored) == {"rows": 3}
