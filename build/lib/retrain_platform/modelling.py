"""Features and candidate models.

One `ColumnTransformer` is fitted on the training part of the data and then frozen inside every
candidate's `Pipeline`, so what runs at inference is exactly what was fitted at training.
Hyper-parameters are searched under time-series cross-validation: a fold never trains on the future.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import loguniform, randint
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import RandomizedSearchCV, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from retrain_platform.spec import CustomerSpec

SCORERS = {
    ("binary", "accuracy"): "accuracy",
    ("binary", "precision"): "precision",
    ("binary", "recall"): "recall",
    ("binary", "f1"): "f1",
    ("binary", "roc_auc"): "roc_auc",
    ("binary", "log_loss"): "neg_log_loss",
    ("multiclass", "accuracy"): "accuracy",
    ("multiclass", "precision"): "precision_macro",
    ("multiclass", "recall"): "recall_macro",
    ("multiclass", "f1"): "f1_macro",
    ("multiclass", "roc_auc"): "roc_auc_ovr",
    ("multiclass", "log_loss"): "neg_log_loss",
    ("regression", "rmse"): "neg_root_mean_squared_error",
    ("regression", "mae"): "neg_mean_absolute_error",
    ("regression", "r2"): "r2",
    ("regression", "calibration_slope"): "r2",
}


@dataclass
class SearchSettings:
    """How hard to look for hyper-parameters; the defaults keep a 50,000-row customer under a minute."""

    n_iter: int = 4
    n_splits: int = 3
    max_search_rows: int = 20_000
    n_jobs: int = 2
    seed: int = 0


@dataclass
class FeatureSet:
    """The fitted preprocessing and the time-ordered train/holdout split it was fitted on."""

    spec: CustomerSpec
    preprocessor: Pipeline
    train: pd.DataFrame
    holdout: pd.DataFrame
    cutoff: pd.Timestamp
    feature_names_out: list[str]
    classes: list[Any] | None = None

    @property
    def X_train(self) -> pd.DataFrame:
        return self.train[self.spec.feature_names]

    @property
    def y_train(self) -> pd.Series:
        return self.train[self.spec.label_column]

    @property
    def X_holdout(self) -> pd.DataFrame:
        return self.holdout[self.spec.feature_names]

    @property
    def y_holdout(self) -> pd.Series:
        return self.holdout[self.spec.label_column]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.preprocessor.transform(frame[self.spec.feature_names])

    def per_input_feature(self, transformed: np.ndarray) -> pd.DataFrame:
        """Fold the transformed matrix back to one column per input feature: the largest absolute value
        of its output columns, so a NaN or an infinity anywhere in a feature's block shows under its name."""
        blocks: dict[str, list[int]] = {name: [] for name in self.spec.feature_names}
        by_length = sorted(self.spec.feature_names, key=len, reverse=True)
        for index, output in enumerate(self.feature_names_out):
            owner = next(name for name in by_length if output == name or output.startswith(name + "_"))
            blocks[owner].append(index)
        with np.errstate(invalid="ignore"):
            return pd.DataFrame(
                {name: np.abs(transformed[:, columns]).max(axis=1) for name, columns in blocks.items() if columns}
            )


@dataclass
class Candidate:
    family: str
    pipeline: Pipeline
    best_params: dict[str, Any]
    cv_score: float
    cv_std: float
    scorer: str
    fit_seconds: float
    cv_results: dict[str, list] = field(default_factory=dict)


def coerce_types(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str], columns: list[str] | None = None
) -> pd.DataFrame:
    """Select the features by name and give each the type its kind says: numbers as floats, categories as
    strings (missing kept). Selecting by name means extra or reordered columns cannot shift values."""
    prepared = frame[columns].copy() if columns is not None else frame.copy()
    for name in numeric:
        prepared[name] = pd.to_numeric(prepared[name], errors="coerce").astype("float64")
    for name in categorical:
        column = prepared[name]
        if pd.api.types.is_float_dtype(column) and bool((column.dropna() % 1 == 0).all()):
            # Integer codes read back as floats (because of a NULL) must still match "10", not "10.0".
            column = column.astype("Int64")
        text = column.astype("string")
        prepared[name] = text.astype(object).where(text.notna(), np.nan)
    return prepared


def build_preprocessor(spec: CustomerSpec) -> Pipeline:
    """Type coercion, imputation, scaling and one-hot encoding, as one estimator that travels with the model."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            (
                "encode",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=16, sparse_output=False
                ),
            ),
        ]
    )
    columns = ColumnTransformer(
        [("numeric", numeric, spec.numeric_features), ("categorical", categorical, spec.categorical_features)],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    types = FunctionTransformer(
        coerce_types,
        kw_args={
            "numeric": spec.numeric_features,
            "categorical": spec.categorical_features,
            "columns": spec.feature_names,
        },
        feature_names_out="one-to-one",
    )
    return Pipeline([("types", types), ("columns", columns)])


def time_split(frame: pd.DataFrame, spec: CustomerSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """The latest `holdout_fraction` of rows, by time, is the holdout; the rest trains."""
    ordered = frame.sort_values(spec.timestamp_column, kind="stable").reset_index(drop=True)
    split_at = int(round(len(ordered) * (1 - spec.holdout_fraction)))
    split_at = min(max(split_at, 1), len(ordered) - 1)
    cutoff = pd.Timestamp(ordered[spec.timestamp_column].iloc[split_at])
    return ordered.iloc[:split_at].reset_index(drop=True), ordered.iloc[split_at:].reset_index(drop=True), cutoff


def make_features(frame: pd.DataFrame, spec: CustomerSpec) -> FeatureSet:
    train, holdout, cutoff = time_split(frame, spec)
    preprocessor = build_preprocessor(spec).fit(train[spec.feature_names])
    classes = None
    if spec.task != "regression":
        classes = sorted(pd.unique(train[spec.label_column]).tolist())
    return FeatureSet(
        spec=spec,
        preprocessor=preprocessor,
        train=train,
        holdout=holdout,
        cutoff=cutoff,
        feature_names_out=list(preprocessor.get_feature_names_out()),
        classes=classes,
    )


def candidate_families(task: str, seed: int) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Three model families per task, each with the search space for its main hyper-parameters."""
    if task == "regression":
        return {
            "ridge": (Ridge(), {"alpha": loguniform(1e-3, 1e2)}),
            "hist_gradient_boosting": (
                HistGradientBoostingRegressor(random_state=seed, max_iter=150),
                {"learning_rate": loguniform(0.03, 0.3), "max_leaf_nodes": randint(8, 48), "l2_regularization": loguniform(1e-4, 1.0)},
            ),
            "random_forest": (
                RandomForestRegressor(n_estimators=50, random_state=seed, n_jobs=1, max_samples=0.5),
                {"max_depth": randint(4, 13), "min_samples_leaf": randint(2, 20), "max_features": ["sqrt", 0.2, 0.4]},
            ),
        }
    return {
        "logistic_regression": (
            LogisticRegression(max_iter=500),
            {"C": loguniform(1e-2, 1e2)},
        ),
        "hist_gradient_boosting": (
            HistGradientBoostingClassifier(random_state=seed, max_iter=150),
            {"learning_rate": loguniform(0.03, 0.3), "max_leaf_nodes": randint(8, 48), "l2_regularization": loguniform(1e-4, 1.0)},
        ),
        "random_forest": (
            RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1, max_samples=0.5),
            {"max_depth": randint(4, 13), "min_samples_leaf": randint(2, 20), "max_features": ["sqrt", 0.2, 0.4]},
        ),
    }


def train_candidates(features: FeatureSet, settings: SearchSettings | None = None) -> list[Candidate]:
    """Tune every family under time-series CV and refit the best of each on all training rows."""
    settings = settings or SearchSettings()
    spec = features.spec
    scorer = SCORERS[(spec.task, spec.primary_metric)]
    X = features.transform(features.train)
    y = features.y_train.to_numpy()
    # The search looks at the most recent rows only: they say most about the near future, and it bounds time.
    search_X, search_y = X[-settings.max_search_rows :], y[-settings.max_search_rows :]
    splitter = TimeSeriesSplit(n_splits=settings.n_splits)
    candidates = []
    try:
        for family, (estimator, space) in candidate_families(spec.task, settings.seed).items():
            started = time.perf_counter()
            search = RandomizedSearchCV(
                estimator,
                space,
                n_iter=settings.n_iter,
                scoring=scorer,
                cv=splitter,
                n_jobs=settings.n_jobs,
                random_state=settings.seed,
                refit=False,
                error_score=np.nan,
            )
            search.fit(search_X, search_y)
            scores = search.cv_results_["mean_test_score"]
            if np.all(np.isnan(scores)):
                continue
            best = int(np.nanargmax(scores))
            params = search.cv_results_["params"][best]
            model = estimator.set_params(**params).fit(X, y)
            pipeline = Pipeline([("preprocess", FrozenEstimator(features.preprocessor)), ("model", model)])
            candidates.append(
                Candidate(
                    family=family,
                    pipeline=pipeline,
                    best_params=dict(params),
                    cv_score=float(scores[best]),
                    cv_std=float(search.cv_results_["std_test_score"][best]),
                    scorer=scorer,
                    fit_seconds=time.perf_counter() - started,
                    cv_results={"mean_test_score": [float(s) for s in scores]},
                )
            )
    finally:
        release_search_workers()
    if not candidates:
        raise RuntimeError(f"no candidate could be scored with {scorer!r} under time-series cross-validation")
    return candidates


def release_search_workers() -> None:
    """Stop joblib's idle worker pool when this process is a multiprocessing child, as a Dagster run worker is.

    Such a child joins its child processes at exit, and loky keeps idle workers for 300 s: every finished run
    lingered five minutes with about a gigabyte resident. A main process (a test, a script) keeps the pool.
    """
    if multiprocessing.parent_process() is None:
        return
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def best_candidate(candidates: list[Candidate]) -> Candidate:
    """Scorers are all greater-is-better (sklearn negates errors), so the highest CV score wins."""
    return max(candidates, key=lambda candidate: candidate.cv_score)


def content_hash(frame: pd.DataFrame) -> str:
    """A stable fingerprint of a table's content, used as the Dagster data version."""
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()[:16]
