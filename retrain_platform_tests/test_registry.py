"""The model registry against a real MLflow: sqlite for tracking and registry, files for artifacts.

Two small sklearn pipelines are logged once for the module; each alias test registers them under its own
model name, so tests do not share alias state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from retrain_platform.registry import CHAMPION, PREVIOUS_CHAMPION, LoggedModel, ModelRegistry, RegistryError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def frame(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"monthly_fee": rng.normal(30, 8, rows), "plan": rng.choice(["basic", "pro", "team"], rows)})
    y = ((X["monthly_fee"] > 30) ^ (X["plan"] == "team")).astype(int).to_numpy()
    return X, y


def pipeline(C: float) -> Pipeline:
    columns = ColumnTransformer(
        [("numeric", StandardScaler(), ["monthly_fee"]), ("categorical", OneHotEncoder(handle_unknown="ignore"), ["plan"])]
    )
    return Pipeline([("preprocess", columns), ("model", LogisticRegression(C=C))])


class Logged:
    def __init__(self, registry, root, runs, pipelines, parent_run_id):
        self.registry: ModelRegistry = registry
        self.root: Path = root
        self.runs: dict[str, LoggedModel] = runs
        self.pipelines: dict[str, Pipeline] = pipelines
        self.parent_run_id: str = parent_run_id


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Logged:
    """Two candidates logged under one training run, from a working directory MLflow must not write to."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    previous_uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry = ModelRegistry(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "artifacts"))
        X, y = frame(300, seed=1)
        pipelines = {"weak": pipeline(0.01).fit(X, y), "strong": pipeline(10.0).fit(X, y)}
        runs = {}
        with registry.start_training_run("acme", run_name="train-1", tags={"dagster_run_id": "run-1"}) as parent:
            for name, fitted in pipelines.items():
                runs[name] = registry.log_candidate(
                    name,
                    fitted,
                    params={"C": fitted.named_steps["model"].C, "solver": None, "classes": [0, 1]},
                    metrics={"cv_roc_auc": 0.6 if name == "weak" else 0.9, "cv_log_loss": float("nan")},
                    input_example=X.head(5),
                    tags={"family": "logistic_regression", "candidate": name},
                )
        yield Logged(registry, root, runs, pipelines, parent.info.run_id)
    mlflow.set_tracking_uri(previous_uris[0])
    mlflow.set_registry_uri(previous_uris[1])


@pytest.fixture
def model_name(request) -> str:
    return f"retrain-{request.node.name.removeprefix('test_').replace('_', '-')}"


def register_both(logged: Logged, model_name: str) -> tuple[str, str]:
    first = logged.registry.register(model_name, logged.runs["weak"], tags={"family": "logistic_regression"})
    second = logged.registry.register(model_name, logged.runs["strong"])
    return first, second


def aliases(logged: Logged, model_name: str) -> tuple[str | None, str | None]:
    registry = logged.registry
    return registry.alias_version(model_name, CHAMPION), registry.alias_version(model_name, PREVIOUS_CHAMPION)


def test_the_tracking_store_is_sqlite_and_needs_no_file_store(logged):
    assert (logged.root / "mlflow.db").is_file()
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    assert logged.registry.registry_uri == logged.registry.tracking_uri


def test_the_training_run_is_in_the_customers_experiment_under_the_artifact_root(logged):
    client = logged.registry.client
    parent = client.get_run(logged.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "retrain/acme"
    assert experiment.artifact_location == (logged.root / "artifacts" / "acme").as_uri()
    assert parent.info.artifact_uri.startswith(experiment.artifact_location)


def test_candidate_artifacts_land_under_the_artifact_root_not_the_working_directory(logged):
    assert not (logged.root / "mlruns").exists(), "MLflow wrote ./mlruns in the working directory"
    models = sorted((logged.root / "artifacts").rglob("MLmodel"))
    assert len(models) == 2
    assert all(path.is_relative_to(logged.root / "artifacts" / "acme") for path in models)


def test_candidates_are_in_the_customers_experiment(logged):
    client = logged.registry.client
    experiment_id = client.get_run(logged.parent_run_id).info.experiment_id
    assert {client.get_run(model.run_id).info.experiment_id for model in logged.runs.values()} == {experiment_id}


def test_candidates_are_nested_under_the_training_run(logged):
    client = logged.registry.client
    parent = client.get_run(logged.parent_run_id)
    assert parent.info.run_name == "train-1"
    assert parent.data.tags["dagster_run_id"] == "run-1"
    for name, model in logged.runs.items():
        run = client.get_run(model.run_id)
        assert run.data.tags["mlflow.parentRunId"] == logged.parent_run_id
        assert run.data.tags["candidate"] == name
        assert run.info.run_name == name


def test_candidate_params_and_metrics_are_logged(logged):
    run = logged.registry.client.get_run(logged.runs["strong"].run_id)
    assert run.data.params == {"C": "10.0", "solver": "None", "classes": "[0, 1]"}
    # A NaN metric (a CV score that could not be computed) is left out rather than logged.
    assert logged.registry.run_metrics(logged.runs["strong"].run_id) == {"cv_roc_auc": 0.9}


def test_the_experiment_is_reused(logged):
    assert logged.registry.experiment_id("acme") == logged.registry.experiment_id("acme")
    assert logged.registry.experiment_id("acme") != logged.registry.experiment_id("globex")


def test_register_creates_consecutive_versions_with_tags(logged, model_name):
    first, second = register_both(logged, model_name)
    assert (first, second) == ("1", "2")
    assert logged.registry.versions(model_name) == ["1", "2"]
    assert logged.registry.version_run_id(model_name, "2") == logged.runs["strong"].run_id
    assert logged.registry.version_tags(model_name, "1") == {"family": "logistic_regression"}
    logged.registry.set_version_tag(model_name, "2", "verdict", "promote")
    assert logged.registry.version_tags(model_name, "2") == {"verdict": "promote"}


def test_no_aliases_before_a_promotion(logged, model_name):
    register_both(logged, model_name)
    assert aliases(logged, model_name) == (None, None)


def test_promote_sets_champion_and_previous_champion(logged, model_name):
    first, second = register_both(logged, model_name)
    assert logged.registry.promote(model_name, first) is None
    assert aliases(logged, model_name) == (first, None)

    assert logged.registry.promote(model_name, second) == first
    assert aliases(logged, model_name) == (second, first)


def test_promoting_the_champion_again_changes_nothing(logged, model_name):
    first, second = register_both(logged, model_name)
    logged.registry.promote(model_name, first)
    logged.registry.promote(model_name, second)
    assert logged.registry.promote(model_name, second) == second
    assert aliases(logged, model_name) == (second, first)


def test_rollback_moves_back_and_swaps(logged, model_name):
    first, second = register_both(logged, model_name)
    logged.registry.promote(model_name, first)
    logged.registry.promote(model_name, second)

    assert logged.registry.rollback(model_name) == (second, first)
    assert aliases(logged, model_name) == (first, second)
    # A second rollback undoes the first.
    assert logged.registry.rollback(model_name) == (first, second)
    assert aliases(logged, model_name) == (second, first)


def test_rollback_to_a_named_version(logged, model_name):
    first, second = register_both(logged, model_name)
    third = logged.registry.register(model_name, logged.runs["strong"])
    for version in (first, second, third):
        logged.registry.promote(model_name, version)
    assert logged.registry.rollback(model_name, to_version=first) == (third, first)
    assert aliases(logged, model_name) == (first, third)


def test_rollback_without_a_champion_raises(logged, model_name):
    register_both(logged, model_name)
    with pytest.raises(RegistryError, match="has no champion to roll back"):
        logged.registry.rollback(model_name)


def test_rollback_without_a_previous_champion_raises(logged, model_name):
    first, _ = register_both(logged, model_name)
    logged.registry.promote(model_name, first)
    with pytest.raises(RegistryError, match="has no previous champion; name a version with --to"):
        logged.registry.rollback(model_name)
    assert aliases(logged, model_name) == (first, None)


def test_rollback_to_an_unknown_version_raises_and_changes_nothing(logged, model_name):
    first, second = register_both(logged, model_name)
    logged.registry.promote(model_name, first)
    logged.registry.promote(model_name, second)
    with pytest.raises(RegistryError, match="has no version 99"):
        logged.registry.rollback(model_name, to_version="99")
    assert aliases(logged, model_name) == (second, first)


def test_rollback_to_the_current_champion_raises(logged, model_name):
    first, second = register_both(logged, model_name)
    logged.registry.promote(model_name, first)
    logged.registry.promote(model_name, second)
    with pytest.raises(RegistryError, match=f"version {second} is already the champion"):
        logged.registry.rollback(model_name, to_version=second)


def test_load_by_alias_and_by_version_predicts_like_the_fitted_pipeline(logged, model_name):
    first, second = register_both(logged, model_name)
    logged.registry.promote(model_name, first)
    logged.registry.promote(model_name, second)
    X, _ = frame(200, seed=7)
    X.loc[0, "plan"] = "enterprise"  # unseen at training: the pipeline's encoder ignores it

    champion = logged.registry.load(model_name, CHAMPION)
    np.testing.assert_array_equal(champion.predict(X), logged.pipelines["strong"].predict(X))
    np.testing.assert_allclose(champion.predict_proba(X), logged.pipelines["strong"].predict_proba(X))

    previous = logged.registry.load(model_name, PREVIOUS_CHAMPION)
    np.testing.assert_allclose(previous.predict_proba(X), logged.pipelines["weak"].predict_proba(X))
    by_number = logged.registry.load(model_name, first)
    np.testing.assert_allclose(by_number.predict_proba(X), logged.pipelines["weak"].predict_proba(X))
    # The two candidates really differ, so the comparisons above tell them apart.
    assert not np.allclose(previous.predict_proba(X), champion.predict_proba(X))


def test_the_logged_model_carries_a_signature(logged):
    from mlflow.models import get_model_info

    info = get_model_info(logged.runs["strong"].model_uri)
    assert info.signature is not None
    assert [column.name for column in info.signature.inputs.inputs] == ["monthly_fee", "plan"]


def test_dicts_round_trip_as_run_artifacts(logged):
    run_id = logged.runs["weak"].run_id
    report = {"verdict": "hold", "metrics": {"roc_auc": 0.71}, "reasons": ["O'Brien's floor"]}
    logged.registry.log_dict(run_id, report, "evaluation/report.json")
    assert logged.registry.load_dict(run_id, "evaluation/report.json") == report
