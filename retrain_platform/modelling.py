"""Features and candidate models.

One `ColumnTransformer` is fitted on the training part of the data and then frozen inside every
candidate's `Pipeline`, so what runs at inference is exactly what was fitted at training.
Hyper-parameters are searched under time-series cross-validation: a fold never trains on the future.
"""

from __future__ import annotations

import hashlib
import json
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
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.base import clone
from sklearn.metrics import f1_score, get_scorer, make_scorer, precision_score, recall_score
from sklearn.model_selection import (
    FixedThresholdClassifier,
    RandomizedSearchCV,
    TimeSeriesSplit,
    TunedThresholdClassifierCV,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from retrain_platform.registry import FAMILY_TAG, FULL_SEARCH, PARAMS_TAG, ROWS_TAG, SEARCH_TAG
from retrain_platform.spec import CustomerSpec, DecisionSettings, plain

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


TRAINING_WINDOWS = (("all", 1.0), ("last half", 0.5), ("last quarter", 0.25))


@dataclass
class SearchSettings:
    """How hard to look for hyper-parameters; the defaults keep a 50,000-row customer under a minute.

    `known_params` (family -> hyper-parameters from an earlier search) skips the search: a retraining then
    refits those families only, as they were tuned before, on the new rows, and chooses their training
    window."""

    n_iter: int = 4
    n_splits: int = 3
    max_search_rows: int = 20_000
    n_jobs: int = 2
    seed: int = 0
    known_params: dict[str, dict[str, Any]] | None = None
    min_window_rows: int = 200


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

    def output_blocks(self) -> dict[str, list[int]]:
        """The preprocessed columns each input feature became (one for a number, several for a category)."""
        blocks: dict[str, list[int]] = {name: [] for name in self.spec.feature_names}
        by_length = sorted(self.spec.feature_names, key=len, reverse=True)
        for index, output in enumerate(self.feature_names_out):
            owner = next(name for name in by_length if output == name or output.startswith(name + "_"))
            blocks[owner].append(index)
        return blocks

    def per_input_feature(self, transformed: np.ndarray) -> pd.DataFrame:
        """Fold the transformed matrix back to one column per input feature: the largest absolute value
        of its output columns, so a NaN or an infinity anywhere in a feature's block shows under its name."""
        with np.errstate(invalid="ignore"):
            return pd.DataFrame(
                {name: np.abs(transformed[:, columns]).max(axis=1) for name, columns in self.output_blocks().items() if columns}
            )


@dataclass
class Candidate:
    """One family: its hyper-parameters (searched, or known from an earlier search), its CV score, and the
    training window that scored best on the latest validation rows."""

    family: str
    best_params: dict[str, Any]
    cv_score: float
    cv_std: float
    scorer: str
    fit_seconds: float
    cv_results: dict[str, list] = field(default_factory=dict)
    searched: bool = True
    window: str = "all"
    window_share: float = 1.0
    validation_score: float = float("nan")
    validation_by_window: dict[str, float] = field(default_factory=dict)


@dataclass
class Training:
    """What training produced: every candidate, the winner, and the model that will serve if promoted
    (the winner refit on its window of all training rows, with its decision threshold for a binary task)."""

    candidates: list[Candidate]
    winner: Candidate
    model: Any
    train_rows: int
    validation_rows: int
    threshold: float | None = None


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


def holdout_rows(rows: int, holdout_fraction: float) -> int:
    """How many of a training's `rows` (the latest, by time) `time_split` holds out to judge it."""
    split_at = int(round(rows * (1 - holdout_fraction)))
    return rows - min(max(split_at, 1), rows - 1)


def time_split(frame: pd.DataFrame, spec: CustomerSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """The latest `holdout_fraction` of rows, by time, is the holdout; the rest trains."""
    ordered = frame.sort_values(spec.timestamp_column, kind="stable").reset_index(drop=True)
    split_at = len(ordered) - holdout_rows(len(ordered), spec.holdout_fraction)
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


def train_candidates(features: FeatureSet, settings: SearchSettings | None = None) -> Training:
    """Tune every family under time-series CV (or take its known hyper-parameters), choose each family's
    training window on the latest training rows, and refit the best family on its window of all rows.

    The window and the winner are chosen on the latest slice of the training rows (the last CV fold's
    validation rows), never on the holdout: the holdout stays untouched for the challenger-vs-champion
    comparison, so choosing among nine (family, window) pairs cannot flatter the challenger there."""
    settings = settings or SearchSettings()
    spec = features.spec
    scorer_name = SCORERS[(spec.task, spec.primary_metric)]
    X = features.transform(features.train)
    y = features.y_train.to_numpy()
    families = candidate_families(spec.task, settings.seed)
    if settings.known_params:
        families = {family: found for family, found in families.items() if family in settings.known_params}
    tuned: dict[str, Candidate] = {}
    try:
        for family, (estimator, space) in families.items():
            known = (settings.known_params or {}).get(family)
            if known is not None:
                tuned[family] = Candidate(family, dict(known), np.nan, np.nan, scorer_name, 0.0, searched=False)
                continue
            found = _search(family, estimator, space, X, y, scorer_name, settings)
            if found is not None:
                tuned[family] = found
    finally:
        release_search_workers()
    if not tuned:
        raise RuntimeError(f"no candidate could be scored with {scorer_name!r} under time-series cross-validation")

    validation_rows = max(1, len(X) // (settings.n_splits + 1))
    fit_X, fit_y = X[:-validation_rows], y[:-validation_rows]
    check_X, check_y = X[-validation_rows:], y[-validation_rows:]
    scorer = get_scorer(scorer_name)
    fitted: dict[str, Any] = {}
    for family, candidate in tuned.items():
        started = time.perf_counter()
        for window, share in TRAINING_WINDOWS:
            rows = int(round(len(fit_X) * share))
            if share < 1.0 and (rows < settings.min_window_rows or not _learnable(fit_y[-rows:], spec.task)):
                continue
            model = clone(families[family][0]).set_params(**candidate.best_params)
            try:
                model.fit(fit_X[-rows:], fit_y[-rows:])
                score = float(scorer(model, check_X, check_y))
            except ValueError:  # a window or a validation slice that one class dominates cannot be scored
                score = np.nan
            candidate.validation_by_window[window] = score
            if np.isfinite(score) and not score <= candidate.validation_score:
                candidate.window, candidate.window_share, candidate.validation_score = window, share, score
                fitted[family] = model
        candidate.fit_seconds += time.perf_counter() - started
    candidates = list(tuned.values())
    winner = best_candidate(candidates)

    threshold = None
    if spec.task == "binary" and winner.family in fitted:
        threshold = tune_threshold(fitted[winner.family], check_X, check_y, spec.decision)
    model, rows = _fit_winner(features, winner, X, y, threshold, settings.seed)
    return Training(candidates, winner, model, train_rows=rows, validation_rows=validation_rows, threshold=threshold)


def refit_with_holdout(features: FeatureSet, training: Training, seed: int = 0) -> tuple[Any, int]:
    """The winner as chosen (family, hyper-parameters, window share, decision threshold), refit on its window
    of the training *and* holdout rows: the model that serves has seen the latest labelled rows.

    The comparison with the champion keeps using `training.model`, which never saw the holdout; this one is
    what the registry serves. The preprocessing stays the one fitted on the training rows, so the drift
    baseline and the holdout comparison describe the same inputs. Returns the model and its row count."""
    both = pd.concat([features.train, features.holdout], ignore_index=True)
    X = features.transform(both)
    y = both[features.spec.label_column].to_numpy()
    return _fit_winner(features, training.winner, X, y, training.threshold, seed)


def _fit_winner(
    features: FeatureSet, winner: Candidate, X: np.ndarray, y: np.ndarray, threshold: float | None, seed: int
) -> tuple[Any, int]:
    families = candidate_families(features.spec.task, seed)
    rows = int(round(len(X) * winner.window_share))
    model = clone(families[winner.family][0]).set_params(**winner.best_params).fit(X[-rows:], y[-rows:])
    served = Pipeline([("preprocess", FrozenEstimator(features.preprocessor)), ("model", model)])
    if threshold is not None:
        served = FixedThresholdClassifier(FrozenEstimator(served), threshold=threshold).fit(
            features.X_train.head(2), features.y_train.head(2)
        )
    return served, rows


def reusable_params(recent: list[dict[str, str]], train_rows: int, full_search_every: int) -> dict[str, dict] | None:
    """The hyper-parameters of the latest full search, when this training may refit them instead of searching.

    `recent` holds the tags of the latest trainings, newest first (`registry.ModelRegistry.recent_trainings`).
    A search is reused by the next `full_search_every - 1` trainings, as long as the training set has not
    halved or doubled since: hyper-parameters move slowly, while each search costs most of a training. Only
    the family that search chose is refit; the families are compared again at the next search."""
    for age, tags in enumerate(recent):
        if tags.get(SEARCH_TAG) != FULL_SEARCH:
            continue
        searched_rows = int(tags.get(ROWS_TAG) or 0)
        if age >= full_search_every - 1 or not searched_rows or not 0.5 <= train_rows / searched_rows <= 2.0:
            return None
        try:
            params = json.loads(tags[PARAMS_TAG])
        except (KeyError, ValueError):
            return None
        chosen = tags.get(FAMILY_TAG)
        return {chosen: params[chosen]} if chosen in params else params
    return None


def _search(family, estimator, space, X, y, scorer_name, settings) -> Candidate | None:
    started = time.perf_counter()
    # The search looks at the most recent rows only: they say most about the near future, and it bounds time.
    search = RandomizedSearchCV(
        estimator,
        space,
        n_iter=settings.n_iter,
        scoring=scorer_name,
        cv=TimeSeriesSplit(n_splits=settings.n_splits),
        n_jobs=settings.n_jobs,
        random_state=settings.seed,
        refit=False,
        error_score=np.nan,
    )
    search.fit(X[-settings.max_search_rows :], y[-settings.max_search_rows :])
    scores = search.cv_results_["mean_test_score"]
    if np.all(np.isnan(scores)):
        return None
    best = int(np.nanargmax(scores))
    return Candidate(
        family=family,
        best_params={key: plain(value) for key, value in search.cv_results_["params"][best].items()},
        cv_score=float(scores[best]),
        cv_std=float(search.cv_results_["std_test_score"][best]),
        scorer=scorer_name,
        fit_seconds=time.perf_counter() - started,
        cv_results={"mean_test_score": [float(s) for s in scores]},
    )


def _learnable(y: np.ndarray, task: str) -> bool:
    return task == "regression" or len(np.unique(y)) > 1


def tune_threshold(model: Any, X: np.ndarray, y: np.ndarray, decision: DecisionSettings) -> float | None:
    """The cut-off that serves `decision`'s objective best on rows the model did not train on, chosen by
    scikit-learn's `TunedThresholdClassifierCV` over the frozen model; None when it cannot be chosen."""
    classes = np.asarray(model.classes_)
    if len(classes) != 2 or len(np.unique(y)) < 2:
        return None
    everything = np.arange(len(y))
    tuner = TunedThresholdClassifierCV(
        FrozenEstimator(model),
        scoring=decision_scorer(decision, positive=classes[1]),
        cv=[(everything, everything)],  # the model is frozen: the one split only says which rows score it
        refit=False,
        thresholds=100,
    )
    try:
        tuner.fit(X, y)
    except ValueError:
        return None
    return float(tuner.best_threshold_)


def decision_scorer(decision: DecisionSettings, positive: Any):
    """A scorer for the decision objective: F1, the negated cost of errors, or the best recall (precision)
    among cut-offs that keep precision (recall) at its target."""
    if decision.objective == "cost":
        def negative_cost(y_true, y_pred):
            false_positives = np.sum((y_pred == positive) & (y_true != positive))
            false_negatives = np.sum((y_pred != positive) & (y_true == positive))
            return -(decision.false_positive_cost * false_positives + decision.false_negative_cost * false_negatives)

        return make_scorer(negative_cost)
    if decision.objective in ("precision", "recall"):
        held, gained = (precision_score, recall_score) if decision.objective == "precision" else (recall_score, precision_score)

        def constrained(y_true, y_pred):
            kept = held(y_true, y_pred, pos_label=positive, zero_division=0)
            # Below the target, the cut-off nearest to reaching it wins; above it, the other metric decides.
            return gained(y_true, y_pred, pos_label=positive, zero_division=0) if kept >= decision.target else kept - 1.0

        return make_scorer(constrained)
    return make_scorer(f1_score, pos_label=positive, zero_division=0)


def decision_threshold(model: Any) -> float | None:
    """The cut-off a binary model predicts the positive class at, when it has one of its own."""
    threshold = getattr(model, "threshold", None)
    return float(threshold) if isinstance(threshold, (int, float)) else None


# Permutation importance costs one prediction per feature and repeat; past this many features the drift
# verdict falls back to the plain share of drifted features.
MAX_IMPORTANCE_FEATURES = 100
# In the primary metric's units (sklearn's scorer): below this summed loss, importance is not told.
MIN_TOTAL_IMPORTANCE = 0.01


def feature_importance(model: Any, features: FeatureSet, rows: int = 500, repeats: int = 2) -> dict[str, float] | None:
    """How much the model relies on each input feature: permutation importance of the primary metric on (a
    sample of) the holdout, clipped at zero, summed over the columns a feature becomes after preprocessing
    and normalised to sum to 1. None when it cannot be told.

    The columns are permuted after the frozen preprocessing, which then runs once instead of once per
    column and repeat: the estimator alone is scored."""
    spec = features.spec
    if len(spec.feature_names) > MAX_IMPORTANCE_FEATURES or len(features.holdout) < 2:
        return None
    sample = features.holdout.tail(rows)
    try:
        found = permutation_importance(
            served_estimator(model),
            features.transform(sample),
            sample[spec.label_column].to_numpy(),
            scoring=SCORERS[(spec.task, spec.primary_metric)],
            n_repeats=repeats,
            random_state=0,
        )
    except ValueError:  # a holdout sample with one class cannot be scored by ROC AUC
        return None
    # A column counts when shuffling it costs more than twice the spread between repeats: below that its
    # importance is noise. A model that relies on no column that way gets no weights, and drift is then
    # counted feature by feature.
    mean, spread = np.nan_to_num(found.importances_mean), np.nan_to_num(found.importances_std)
    by_output = np.where(mean > 2 * spread, mean, 0.0)
    weights = {name: float(by_output[columns].sum()) for name, columns in features.output_blocks().items()}
    total = sum(weights.values())
    if total < MIN_TOTAL_IMPORTANCE:
        return None
    return {name: weight / total for name, weight in weights.items()}


def served_estimator(model: Any) -> Any:
    """The fitted estimator inside a served model: past the threshold wrapper and the frozen preprocessing."""
    while not isinstance(model, Pipeline):
        model = model.estimator
    return model.named_steps["model"]


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
    """The best score on the latest validation rows, then the best CV score. Scorers are all
    greater-is-better (sklearn negates errors), so the highest number wins."""
    return max(
        candidates,
        key=lambda c: (bool(np.isfinite(c.validation_score)), np.nan_to_num(c.validation_score, nan=-np.inf), np.nan_to_num(c.cv_score, nan=-np.inf)),
    )


def content_hash(frame: pd.DataFrame) -> str:
    """A stable fingerprint of a table's content, used as the Dagster data version."""
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()[:16]
