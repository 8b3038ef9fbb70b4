"""The model registry: MLflow runs for every candidate, registered versions, and the champion alias.

Aliases (not the deprecated stages) say which version serves: `challenger` is the latest trained
candidate, `champion` the one that scores, `previous-champion` the one a rollback returns to.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"

# On a training's parent run: whether it searched hyper-parameters ("full") or refit known ones ("refit"),
# the hyper-parameters per family it trained with (JSON), the family it chose, and how many training rows
# it had.
SEARCH_TAG = "retrain.search"
FULL_SEARCH, REFIT = "full", "refit"
PARAMS_TAG = "retrain.params"
ROWS_TAG = "retrain.train_rows"
FAMILY_TAG = "retrain.family"
# On a registered version: the cut-off at which a binary model predicts the positive class.
THRESHOLD_TAG = "decision_threshold"
# On a registered version: the URI of the same model trained without the holdout rows. The version itself is
# refit on them to serve; later challengers are compared with this twin, which never saw any holdout.
EVALUATED_MODEL_TAG = "retrain.evaluated_model"


# Loaded pipelines by (registry, model URI), oldest first.
_LOADED_VERSIONS: dict[tuple[str, str], Any] = {}
MAX_LOADED_VERSIONS = 8


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    model_uri: str | None
    evaluated_model_uri: str | None = None


class ModelRegistry:
    """MLflow tracking and registry behind a small API, with no global state left behind for callers."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, artifact_root: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.artifact_root = artifact_root
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def _activate(self):
        # mlflow.sklearn.log_model only works through the fluent API, which reads process-wide URIs.
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        return mlflow

    def experiment_id(self, customer: str) -> str:
        name = f"retrain/{customer}"
        client = self.client
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = None
        if self.artifact_root:
            location = f"{self.artifact_root.rstrip('/')}/{customer}"
            if "://" not in location:
                from pathlib import Path

                location = Path(location).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)

    def start_training_run(self, customer: str, run_name: str, tags: dict[str, str]):
        """A parent MLflow run for one training; candidates are nested under it."""
        mlflow = self._activate()
        return mlflow.start_run(experiment_id=self.experiment_id(customer), run_name=run_name, tags=tags)

    def close_abandoned_runs(self, customer: str, abandoned: Callable[[str], bool]) -> list[str]:
        """End as KILLED the customer's MLflow runs still RUNNING whose Dagster run (`dagster_run_id` tag)
        `abandoned` says is over: a training whose process was killed never ends its MLflow runs."""
        client = self.client
        experiment = client.get_experiment_by_name(f"retrain/{customer}")
        if experiment is None:
            return []
        running = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")
        closed = []
        for run in running:
            dagster_run = run.data.tags.get("dagster_run_id")
            if dagster_run and abandoned(dagster_run):
                client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.info.run_id)
        return closed

    def recent_trainings(self, customer: str, count: int) -> list[dict[str, str]]:
        """The tags of this customer's latest `count` training runs, newest first."""
        client = self.client
        experiment = client.get_experiment_by_name(f"retrain/{customer}")
        if experiment is None:
            return []
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{SEARCH_TAG}` LIKE '%'",
            order_by=["attributes.start_time DESC"],
            max_results=count,
        )
        return [dict(run.data.tags) for run in runs]

    def log_candidate(
        self,
        name: str,
        pipeline: Any | None,
        params: dict[str, Any],
        metrics: dict[str, float],
        input_example: Any,
        tags: dict[str, str],
        evaluated_pipeline: Any | None = None,
    ) -> LoggedModel:
        """Log one candidate as a nested run: params, metrics and, when given, the whole fitted pipeline
        (a candidate that lost is a record of its scores; only the winner is refit and kept as a model), and
        the winner's twin trained without the holdout (`evaluated_pipeline`)."""
        import cloudpickle
        import sklearn
        from mlflow import sklearn as mlflow_sklearn

        def log_model(model: Any, name: str) -> str:
            return mlflow_sklearn.log_model(
                model,
                name=name,
                serialization_format="cloudpickle",
                # Explicit requirements skip MLflow's inference, which imports the model in a subprocess.
                pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"cloudpickle=={cloudpickle.__version__}"],
                signature=_signature(model, input_example),
            ).model_uri

        mlflow = self._activate()
        parent = mlflow.active_run()
        experiment_id = parent.info.experiment_id if parent else None
        with mlflow.start_run(run_name=name, nested=True, tags=tags, experiment_id=experiment_id) as run:
            mlflow.log_params({key: _param(value) for key, value in params.items()})
            mlflow.log_metrics({key: float(value) for key, value in metrics.items() if value == value})
            if pipeline is None:
                return LoggedModel(run_id=run.info.run_id, model_uri=None)
            evaluated_uri = log_model(evaluated_pipeline, "evaluated-model") if evaluated_pipeline is not None else None
            return LoggedModel(run_id=run.info.run_id, model_uri=log_model(pipeline, "model"), evaluated_model_uri=evaluated_uri)

    def register(self, model_name: str, logged: LoggedModel, tags: dict[str, str] | None = None) -> str:
        client = self.client
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(model_name)
        except MlflowException:
            client.create_registered_model(model_name)
        # MLflow 3 resolves a `models:/m-...` source through the process-wide tracking URI, whichever
        # registry set it last: a process with two homes (a server, the tests) must point it here first.
        self._activate()
        # A logged model's URI is `models:/<model id>`. A tracking server refuses that source without the id
        # (a sqlite store works it out itself).
        model_id = logged.model_uri.removeprefix("models:/") if logged.model_uri.startswith("models:/") else None
        version = client.create_model_version(
            model_name, source=logged.model_uri, run_id=logged.run_id, tags=tags or {}, model_id=model_id
        )
        return str(version.version)

    def alias_version(self, model_name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, str(version))

    def version_run_id(self, model_name: str, version: str) -> str | None:
        return self.client.get_model_version(model_name, str(version)).run_id

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model_name, str(version)).tags)

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(model_name, str(version), key, value)

    def versions(self, model_name: str) -> list[str]:
        found = self.client.search_model_versions(f"name = '{model_name}'")
        return sorted((str(v.version) for v in found), key=int)

    def load(self, model_name: str, reference: str) -> Any:
        """Load a version (`"3"`) or an alias (`"champion"`) as the sklearn pipeline it was logged as.

        A version never changes once registered, so a process that runs many batches in a row (a range run,
        a replay) keeps the last few it loaded; an alias is resolved each time, since it moves."""
        import mlflow.sklearn

        self._activate()
        if str(reference).isdigit():
            return self._load_once(f"models:/{model_name}/{reference}")
        return mlflow.sklearn.load_model(f"models:/{model_name}@{reference}")

    def _load_once(self, uri: str) -> Any:
        """Load a model URI that never changes, keeping the last few loaded."""
        import mlflow.sklearn

        key = (str(self.registry_uri), uri)
        if key not in _LOADED_VERSIONS:
            _LOADED_VERSIONS[key] = mlflow.sklearn.load_model(uri)
            while len(_LOADED_VERSIONS) > MAX_LOADED_VERSIONS:
                _LOADED_VERSIONS.pop(next(iter(_LOADED_VERSIONS)))
        return _LOADED_VERSIONS[key]

    def load_evaluated(self, model_name: str, version: str) -> Any:
        """The version as it was judged: its twin trained without its holdout rows when it has one (see
        `EVALUATED_MODEL_TAG`), else the version itself."""
        uri = self.version_tags(model_name, version).get(EVALUATED_MODEL_TAG)
        if not uri:
            return self.load(model_name, version)
        self._activate()
        return self._load_once(uri)

    def promote(self, model_name: str, version: str) -> str | None:
        """Make `version` the champion; the one it replaces becomes `previous-champion`."""
        previous = self.alias_version(model_name, CHAMPION)
        if previous == str(version):
            return previous
        if previous is not None:
            self.set_alias(model_name, PREVIOUS_CHAMPION, previous)
        self.set_alias(model_name, CHAMPION, version)
        return previous

    def rollback(self, model_name: str, to_version: str | None = None) -> tuple[str, str]:
        """Move the champion back (to `previous-champion` unless a version is named); returns (from, to)."""
        current = self.alias_version(model_name, CHAMPION)
        if current is None:
            raise RegistryError(f"{model_name} has no champion to roll back")
        target = to_version or self.alias_version(model_name, PREVIOUS_CHAMPION)
        if target is None:
            raise RegistryError(f"{model_name} has no previous champion; name a version with --to")
        if str(target) not in self.versions(model_name):
            raise RegistryError(f"{model_name} has no version {target}")
        if str(target) == current:
            raise RegistryError(f"version {target} is already the champion of {model_name}")
        self.set_alias(model_name, CHAMPION, str(target))
        self.set_alias(model_name, PREVIOUS_CHAMPION, current)
        return current, str(target)

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def load_dict(self, run_id: str, artifact_file: str) -> dict:
        # Through this registry's own client, not the fluent API's process-wide URIs, which another registry
        # in the same process (a test, a server) may have pointed elsewhere.
        with tempfile.TemporaryDirectory() as folder:
            return json.loads(Path(self.client.download_artifacts(run_id, artifact_file, folder)).read_text())

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)


def _param(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)


def _signature(pipeline: Any, input_example: Any):
    from mlflow.models import infer_signature

    try:
        return infer_signature(input_example, pipeline.predict(input_example))
    except Exception:  # a signature is documentation; a model without one still serves
        return None


def move_local_store(database, old_root: str, new_root: str) -> None:
    """Point a copied sqlite tracking store at its own folder. MLflow keeps absolute artifact locations
    (experiments, runs, logged models, model versions): a copy of a home would otherwise load, and log,
    artifacts in the home it was copied from."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(database)) as connection, connection:
        tables = [name for (name,) in connection.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            for column in [row[1] for row in connection.execute(f'pragma table_info("{table}")')]:
                connection.execute(
                    f'update "{table}" set "{column}" = replace("{column}", ?, ?) '
                    f'where typeof("{column}") = \'text\' and instr("{column}", ?) > 0',
                    (old_root, new_root, old_root),
                )
