"""Training: dataset, features, candidate models, evaluation report and the deployed model, per customer."""


import functools
import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pydantic

from retrain_platform import batches as batch_states
from retrain_platform import customers as customer_store
from retrain_platform import ledger, performance, quality
from retrain_platform.defs.partitions import customers
from retrain_platform.defs.resources import Clock, MlflowRegistry
from retrain_platform.deployment import APPROVAL_TAG, PENDING
from retrain_platform.evaluation import PROMOTE, EvaluationReport, ModelOutput, evaluate
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform.modelling import (
    FeatureSet,
    SearchSettings,
    content_hash,
    make_features,
    refit_with_holdout,
    reusable_params,
    train_candidates,
)
from retrain_platform.registry import (
    CHALLENGER,
    CHAMPION,
    EVALUATED_MODEL_TAG,
    FAMILY_TAG,
    FULL_SEARCH,
    PARAMS_TAG,
    REFIT,
    ROWS_TAG,
    SEARCH_TAG,
    THRESHOLD_TAG,
)
from retrain_platform.settings import TRIGGER_TAG
from retrain_platform.spec import APPROVE_MODE, AUTO_MODE, CustomerSpec
from retrain_platform.status import HOLDOUT_ESTIMATED_TAG_PREFIX, HOLDOUT_TAG_PREFIX
from retrain_platform.warehouse import Warehouse, quote

TRAINING_DATA_QUALITY = "training_data_quality"
FEATURES_ARE_FINITE = "features_are_finite"
CHAMPION_SERVES_AS_TRAINED = "champion_serves_as_trained"

SEARCH_AUTO = "auto"

# A file another process holds (DuckDB's single writer, MLflow's sqlite) frees itself within seconds. Only
# these are retried: a Dagster retry policy would also retry an interrupted step, so Ctrl-C or SIGTERM would
# start the step again instead of stopping the run.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (duckdb.IOException, duckdb.TransactionException, sqlite3.OperationalError)
try:
    from snowflake.connector.errors import OperationalError as SnowflakeOperationalError

    TRANSIENT_ERRORS += (SnowflakeOperationalError,)
except ImportError:  # pragma: no cover - dagster-snowflake brings it
    pass
TRANSIENT_RETRIES = 2


def retry_when_busy(compute):
    """Run an asset's body again, up to twice, when it failed on a file or warehouse another process held."""

    @functools.wraps(compute)
    def body(*args, **kwargs):
        try:
            return compute(*args, **kwargs)
        except TRANSIENT_ERRORS as error:
            raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=2) from error

    return body


class WarehouseProvider(Protocol):
    def get_warehouse(self) -> Warehouse: ...


def snapshot_table(customer: str) -> str:
    return f"training_dataset__{customer}"


class TrainingConfig(dg.Config):
    """Knobs a user may turn for one run from the launchpad."""

    search_iterations: int = 4
    cv_splits: int = 3
    max_search_rows: int = 20_000
    search_jobs: int = 2
    # `auto`: a full hyper-parameter search every `full_search_every` trainings (or when the training set
    # halved or doubled since the last one), a refit of the last search's family and hyper-parameters in
    # between: a search costs about three refits, and the hyper-parameters of one data source move slowly.
    search: str = SEARCH_AUTO
    full_search_every: int = 8
    trigger: str = "manual"

    @pydantic.field_validator("search")
    @classmethod
    def _search_mode(cls, value: str) -> str:
        if value not in (SEARCH_AUTO, FULL_SEARCH, REFIT):
            raise ValueError(f"search must be {SEARCH_AUTO!r}, {FULL_SEARCH!r} or {REFIT!r}, not {value!r}")
        return value


@dataclass
class TrainedModels:
    """What `candidate_models` hands on: the registered challenger and a summary of every candidate."""

    customer: str
    model_name: str
    challenger_version: str
    challenger_run_id: str
    challenger_family: str
    pipeline: Any
    leaderboard: pd.DataFrame
    window: str = "all"
    train_rows: int = 0
    threshold: float | None = None
    # The same model trained without the holdout rows: what the evaluation judges. `pipeline` is refit
    # on the holdout too, and serves.
    evaluated_pipeline: Any = None
    served_rows: int = 0

    @property
    def judged_pipeline(self) -> Any:
        return self.evaluated_pipeline if self.evaluated_pipeline is not None else self.pipeline


@dataclass
class Deployment:
    model_name: str
    task: str
    champion_version: str | None
    action: str
    sample: pd.DataFrame
    expected_scores: np.ndarray | None


def run_trigger(context: dg.AssetExecutionContext, config: TrainingConfig) -> str:
    """The config's trigger, else the run's trigger tag (backfill runs carry tags, not config), else manual."""
    if config.trigger != TrainingConfig().trigger:
        return config.trigger
    return context.run.tags.get(TRIGGER_TAG, config.trigger)


def _spec(warehouse: WarehouseProvider, customer: str) -> CustomerSpec:
    return customer_store.load_spec(warehouse.get_warehouse(), customer)


def utc_now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def blocking_check_result(result: quality.QualityResult) -> dg.AssetCheckResult:
    """A failed suite is an ERROR: the run stops before anything downstream, and the UI names column and rule."""
    return dg.AssetCheckResult(
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.summary(),
        metadata=result.to_metadata(),
    )


def _snapshot_window(landing: pd.DataFrame, spec: CustomerSpec) -> pd.DataFrame:
    """Labelled rows inside the training window, with every spec column kept raw for the quality checks."""
    columns = [c for c in [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column] if c]
    labelled = landing.loc[landing[spec.label_column].notna(), columns]
    timestamps = pd.to_datetime(labelled[spec.timestamp_column], errors="coerce")
    # The window ends at the latest plausible row, so one future-dated row cannot push the real data out.
    plausible = timestamps[timestamps <= utc_now()]
    end = plausible.max() if len(plausible) else timestamps.max()
    start = end - pd.Timedelta(days=spec.training_window_days)
    # Unparseable and future timestamps stay in the snapshot, so the blocking check can name them.
    keep = timestamps.isna() | (timestamps >= start)
    return labelled.loc[keep].reset_index(drop=True)


def _snapshot_in_warehouse(db: Warehouse, spec: CustomerSpec, target: str) -> pd.DataFrame | None:
    """`_snapshot_window` as SQL: the warehouse selects the labelled rows inside the window, leaving out
    quarantined batches (they stay in the landing table for a person to correct, release or drop; never in
    training), into `target` (CREATE OR REPLACE TABLE ... AS SELECT); only those rows come back, in a stable order.

    None when the landing table's timestamp column holds no timestamps (a load that typed it as text) or lacks
    a column: then pandas selects, keeping unparseable values for the quality check to name."""
    columns = [c for c in [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column] if c]
    held = db.columns(spec.landing_table)
    if any(column not in held for column in columns):
        return None
    landing, timestamp, label = quote(spec.landing_table), quote(spec.timestamp_column), quote(spec.label_column)
    probe = db.query(f'select {timestamp} as "t" from {landing} where {timestamp} is not null limit 1')
    if probe.empty or not pd.api.types.is_datetime64_any_dtype(probe["t"]):
        return None
    usable, params = f"{label} is not null", []
    quarantined = batch_states.quarantined_batches(db, spec.customer)
    if quarantined and BATCH_COLUMN in held:
        batch = quote(BATCH_COLUMN)
        usable += f" and ({batch} is null or {batch} not in ({', '.join('?' for _ in quarantined)}))"
        params += quarantined
    # The window ends at the latest plausible row, so one future-dated row cannot push the real data out.
    now = utc_now().to_pydatetime()
    ends = db.query(
        f'select max(case when {timestamp} <= ? then {timestamp} end) as "plausible", max({timestamp}) as "latest" '
        f"from {landing} where {usable}",
        [now, *params],
    ).iloc[0]
    end = ends["plausible"] if not pd.isna(ends["plausible"]) else ends["latest"]
    selected = ", ".join(quote(column) for column in columns)
    start = None if pd.isna(end) else (pd.Timestamp(end) - pd.Timedelta(days=spec.training_window_days)).to_pydatetime()
    window = f" and ({timestamp} is null or {timestamp} >= ?)" if start is not None else ""
    db.execute(
        f"create or replace table {quote(target)} as select {selected}, cast(? as varchar) as {quote('customer')} "
        f"from {landing} where {usable}{window}",
        [spec.customer, *params, *([start] if start is not None else [])],
    )
    order = ", ".join(str(position) for position in range(1, len(columns) + 1))
    return db.query(f"select {selected} from {quote(target)} order by {order}")


def _new_snapshot_rows(db: Warehouse, spec: CustomerSpec, snapshot: pd.DataFrame, incoming: str, last: str) -> int:
    """Rows of the new snapshot the last one did not hold: by id (counted in the warehouse), else those after
    the last snapshot's latest timestamp."""
    if not db.table_exists(last):
        return len(snapshot)
    held = db.columns(last)
    if spec.id_column and spec.id_column in held:
        # As text on both sides: a reload may have changed the id column's type.
        key = quote(spec.id_column)
        counted = db.query(
            f'select count(*) as "n" from {quote(incoming)} n where not exists '
            f"(select 1 from {quote(last)} p where cast(p.{key} as varchar) = cast(n.{key} as varchar))"
        )
        return int(counted["n"].iloc[0])
    if spec.timestamp_column not in held:
        return len(snapshot)
    latest = db.query(f'select max({quote(spec.timestamp_column)}) as "latest" from {quote(last)}')["latest"].iloc[0]
    if latest is None or (not isinstance(latest, str) and pd.isna(latest)):
        return len(snapshot)
    last_seen = pd.to_datetime(pd.Series([latest]), errors="coerce").iloc[0]
    return int((pd.to_datetime(snapshot[spec.timestamp_column], errors="coerce") > last_seen).sum())


@dg.asset(
    partitions_def=customers,
    group_name="training",
    kinds={"python", "pandas"},
)
@retry_when_busy
def training_dataset(context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[WarehouseProvider]):
    """The customer's labelled rows inside its training window, snapshotted in the warehouse.

    The snapshot is what every later stage trains and evaluates on; its content hash is the data version,
    so an unchanged dataset is visible as such in the UI.
    """
    customer = context.partition_key
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, customer)
    table = snapshot_table(customer)
    # The new snapshot lands beside the last one, so the warehouse counts its new rows without sending the last
    # one here; then it takes the last one's place. Replacing the table whole lets a column change type between
    # loads, so that the quality check, not a conversion error, is what reports it.
    incoming = f"{table}__next"
    snapshot = _snapshot_in_warehouse(db, spec, incoming)
    if snapshot is None:
        snapshot = _snapshot_window(batch_states.usable_rows(db, spec), spec)
        db.execute(f"drop table if exists {quote(incoming)}")
        db.write(incoming, snapshot.assign(customer=customer))
    new_rows = _new_snapshot_rows(db, spec, snapshot, incoming, table)
    db.execute(f"drop table if exists {quote(table)}")
    db.execute(f"alter table {quote(incoming)} rename to {quote(table)}")

    digest = content_hash(snapshot)
    timestamps = pd.to_datetime(snapshot[spec.timestamp_column], errors="coerce")
    metadata: dict[str, Any] = {
        "rows": dg.MetadataValue.int(len(snapshot)),
        "new_labelled_rows": dg.MetadataValue.int(new_rows),
        "time_range": f"{timestamps.min()} .. {timestamps.max()}",
        "content_hash": digest,
        "table": table,
        "dagster/row_count": dg.MetadataValue.int(len(snapshot)),
    }
    if spec.task == "regression":
        labels = pd.to_numeric(snapshot[spec.label_column], errors="coerce")
        metadata["label_mean"] = dg.MetadataValue.float(float(labels.mean()))
    else:
        balance = snapshot[spec.label_column].astype(str).value_counts(normalize=True).sort_index()
        metadata["label_balance"] = dg.MetadataValue.md(balance.rename("share").to_frame().to_markdown())
        if len(balance) == 2:
            metadata["positive_rate"] = dg.MetadataValue.float(float(balance.iloc[-1]))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(digest))


@dg.asset_check(asset=training_dataset, name=TRAINING_DATA_QUALITY, blocking=True, partitions_def=customers)
def training_data_quality(
    context: dg.AssetCheckExecutionContext, warehouse: dg.ResourceParam[WarehouseProvider]
) -> dg.AssetCheckResult:
    """great-expectations suite: schema and types, label present, categories and ranges, minimum rows,
    unique ids, timestamps that parse and are not in the future."""
    customer = context.partition_key
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, customer)
    snapshot = db.query(f'select * from "{snapshot_table(customer)}" where "customer" = ?', [customer])
    return blocking_check_result(quality.validate_customer_rows(snapshot, spec, now=utc_now()))


@dg.asset(
    partitions_def=customers,
    group_name="training",
    kinds={"scikit-learn"},
    deps=[training_dataset],
)
def features(context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[WarehouseProvider]) -> dg.Output[FeatureSet]:
    """One fitted preprocessing (imputation, scaling, one-hot with unknown categories handled) and a
    time-ordered train/holdout split. The fitted preprocessing is frozen inside every candidate model."""
    customer = context.partition_key
    db = warehouse.get_warehouse()
    spec = customer_store.load_spec(db, customer)
    snapshot = db.query(f'select * from "{snapshot_table(customer)}" where "customer" = ?', [customer])
    snapshot[spec.timestamp_column] = pd.to_datetime(snapshot[spec.timestamp_column])
    feature_set = make_features(snapshot.drop(columns=["customer"]), spec)
    return dg.Output(
        feature_set,
        metadata={
            "train_rows": dg.MetadataValue.int(len(feature_set.train)),
            "holdout_rows": dg.MetadataValue.int(len(feature_set.holdout)),
            "holdout_starts": str(feature_set.cutoff),
            "features_in": dg.MetadataValue.int(len(spec.feature_names)),
            "features_out": dg.MetadataValue.int(len(feature_set.feature_names_out)),
            "feature_kinds": dg.MetadataValue.json(spec.kinds),
        },
    )


@dg.asset_check(asset=features, name=FEATURES_ARE_FINITE, blocking=True, partitions_def=customers)
def features_are_finite(features: FeatureSet) -> dg.AssetCheckResult:
    """No NaN or infinity survives the fitted preprocessing, on the training rows or the holdout."""
    transformed = np.vstack([features.transform(features.train), features.transform(features.holdout)])
    frame = features.per_input_feature(transformed)
    return blocking_check_result(quality.validate(frame, quality.features_suite(list(frame.columns))))


@dg.asset(
    partitions_def=customers,
    group_name="training",
    kinds={"scikit-learn", "mlflow"},
)
@retry_when_busy
def candidate_models(
    context: dg.AssetExecutionContext, config: TrainingConfig, registry: MlflowRegistry, features: FeatureSet
) -> dg.Output[TrainedModels]:
    """Several model families, each tuned by a hyper-parameter search under time-series cross-validation
    (or, between full searches, refit with the hyper-parameters found last), each trained on the history
    window (all, last half, last quarter) that predicts the latest training rows best. The winner, with its
    decision threshold, is registered as a new version (which `deployed_model` names `challenger` once its
    decision is in the ledger); every candidate is an MLflow run."""
    spec = features.spec
    models = registry.get_registry()

    def run_is_over(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id)
        return run is None or run.is_finished

    if closed := models.close_abandoned_runs(spec.customer, run_is_over):
        context.log.warning(f"ended {len(closed)} MLflow run(s) that a killed training left RUNNING")
    train_rows = len(features.train)
    known = None
    if config.search == SEARCH_AUTO:
        recent = models.recent_trainings(spec.customer, config.full_search_every)
        known = reusable_params(recent, train_rows, config.full_search_every)
    elif config.search == REFIT:
        recent = models.recent_trainings(spec.customer, 1_000)
        known = reusable_params(recent, train_rows, len(recent) + 1)
    settings = SearchSettings(
        n_iter=config.search_iterations,
        n_splits=config.cv_splits,
        max_search_rows=config.max_search_rows,
        n_jobs=config.search_jobs,
        known_params=known,
    )
    training = train_candidates(features, settings)
    best = training.winner
    served, served_rows = refit_with_holdout(features, training, settings.seed)
    searched = REFIT if known else FULL_SEARCH
    trigger = run_trigger(context, config)
    tags = {"dagster_run_id": context.run_id, "customer": spec.customer, "trigger": trigger}
    parent_tags = {
        **tags,
        SEARCH_TAG: searched,
        PARAMS_TAG: json.dumps({c.family: c.best_params for c in training.candidates}),
        ROWS_TAG: str(train_rows),
        FAMILY_TAG: best.family,
    }
    logged = {}
    with models.start_training_run(spec.customer, run_name=f"training {context.run_id[:8]}", tags=parent_tags):
        for candidate in training.candidates:
            winner = candidate is best
            logged[candidate.family] = models.log_candidate(
                candidate.family,
                served if winner else None,
                params={"family": candidate.family, "window": candidate.window, **candidate.best_params},
                metrics={
                    f"cv_{spec.primary_metric}": abs(candidate.cv_score),
                    "cv_std": candidate.cv_std,
                    f"validation_{spec.primary_metric}": abs(candidate.validation_score),
                    **({"decision_threshold": training.threshold} if winner and training.threshold is not None else {}),
                },
                input_example=features.X_holdout.head(5),
                tags={**tags, "family": candidate.family},
                evaluated_pipeline=training.model if winner else None,
            )
    version_tags = {
        **tags,
        "family": best.family,
        "window": best.window,
        SEARCH_TAG: searched,
        EVALUATED_MODEL_TAG: logged[best.family].evaluated_model_uri,
    }
    if training.threshold is not None:
        version_tags[THRESHOLD_TAG] = f"{training.threshold:.6g}"
    version = models.register(spec.model_name, logged[best.family], tags=version_tags)

    leaderboard = pd.DataFrame(
        [
            {
                "family": c.family,
                "window": c.window,
                f"validation_{spec.primary_metric}": round(abs(c.validation_score), 4),
                f"cv_{spec.primary_metric}": round(abs(c.cv_score), 4),
                "hyper-parameters": "searched" if c.searched else "reused",
                "seconds": round(c.fit_seconds, 1),
                "best_params": json.dumps(c.best_params),
            }
            for c in sorted(training.candidates, key=lambda c: c is not best)
        ]
    )
    trained = TrainedModels(
        customer=spec.customer,
        model_name=spec.model_name,
        challenger_version=version,
        challenger_run_id=logged[best.family].run_id,
        challenger_family=best.family,
        pipeline=served,
        leaderboard=leaderboard,
        window=best.window,
        train_rows=training.train_rows,
        threshold=training.threshold,
        evaluated_pipeline=training.model,
        served_rows=served_rows,
    )
    metadata = {
        "challenger_version": version,
        "challenger_family": best.family,
        "training_window": f"{best.window} ({training.train_rows:,} rows)",
        "served_model": f"refit on {served_rows:,} rows of its window, the holdout included",
        "hyper_parameters": "searched" if searched == FULL_SEARCH else "reused from the last search",
        f"validation_{spec.primary_metric}": dg.MetadataValue.float(abs(best.validation_score)),
        "leaderboard": dg.MetadataValue.md(leaderboard.to_markdown(index=False)),
        "mlflow_run_id": logged[best.family].run_id,
    }
    if training.threshold is not None:
        metadata["decision_threshold"] = dg.MetadataValue.float(training.threshold)
    return dg.Output(trained, metadata=metadata)


@dg.asset(
    partitions_def=customers,
    group_name="training",
    kinds={"mlflow"},
)
@retry_when_busy
def evaluation_report(
    context: dg.AssetExecutionContext, registry: MlflowRegistry, features: FeatureSet, candidate_models: TrainedModels
) -> dg.Output[EvaluationReport]:
    """The challenger against the current champion on the same holdout: several metrics, a paired bootstrap
    interval of the primary metric's difference, and a PROMOTE / HOLD / REJECT verdict with a reason per gate."""
    spec = features.spec
    models = registry.get_registry()
    champion_version = models.alias_version(spec.model_name, CHAMPION)
    # Both sides as trained before their holdout: the challenger's twin that never saw this holdout, and
    # the champion's (a served champion was refit on its own holdout, which may overlap this one).
    challenger_output = ModelOutput.from_estimator(candidate_models.judged_pipeline, features.X_holdout, spec.task)
    champion_output = None
    if champion_version is not None and champion_version != candidate_models.challenger_version:
        champion = models.load_evaluated(spec.model_name, champion_version)
        champion_output = ModelOutput.from_estimator(champion, features.X_holdout, spec.task)
    report = evaluate(
        task=spec.task,
        primary_metric=spec.primary_metric,
        y_true=features.y_holdout.to_numpy(),
        challenger_output=challenger_output,
        champion_output=champion_output,
        thresholds=spec.thresholds,
        customer=spec.customer,
        challenger_version=candidate_models.challenger_version,
        champion_version=champion_version if champion_output is not None else None,
        objective=spec.decision.objective,
    )
    models.log_dict(candidate_models.challenger_run_id, report.to_dict(), "evaluation_report.json")
    for metric, value in report.challenger_metrics.items():
        models.set_version_tag(spec.model_name, candidate_models.challenger_version, HOLDOUT_TAG_PREFIX + metric, str(value))
    # The label-free estimate on the same holdout: a batch's estimate is compared with it, like with like
    # (an estimate can sit well away from the realized metric when probabilities are not calibrated).
    if challenger_output.proba is not None:
        scores = challenger_output.proba[:, 1] if spec.task == "binary" else challenger_output.proba
        estimated = performance.estimate_metrics(scores, spec.task, challenger_output.threshold)
        if spec.primary_metric in estimated:
            models.set_version_tag(
                spec.model_name,
                candidate_models.challenger_version,
                HOLDOUT_ESTIMATED_TAG_PREFIX + spec.primary_metric,
                str(estimated[spec.primary_metric]),
            )
    metadata: dict[str, Any] = {
        "verdict": report.verdict.decision,
        "report": dg.MetadataValue.md(report.to_markdown()),
        "challenger_version": candidate_models.challenger_version,
        "champion_version": str(champion_version),
        f"challenger_{spec.primary_metric}": dg.MetadataValue.float(report.challenger_metrics[spec.primary_metric]),
    }
    if report.champion_metrics:
        metadata[f"champion_{spec.primary_metric}"] = dg.MetadataValue.float(report.champion_metrics[spec.primary_metric])
    context.log.info(f"{spec.customer}: verdict {report.verdict.decision}")
    return dg.Output(report, metadata=metadata)


@dg.asset(
    partitions_def=customers,
    group_name="training",
    kinds={"mlflow"},
)
@retry_when_busy
def deployed_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
    features: FeatureSet,
    candidate_models: TrainedModels,
    evaluation_report: EvaluationReport,
) -> dg.Output[Deployment]:
    """Applies the verdict: PROMOTE moves the `champion` alias (the replaced version stays one step away as
    `previous-champion`). Every decision, promotion or not, is appended to the model ledger; then the trained
    version becomes the `challenger`."""
    spec = features.spec
    models = registry.get_registry()
    db = warehouse.get_warehouse()
    decision = evaluation_report.verdict.decision
    before = models.alias_version(spec.model_name, CHAMPION)
    challenger = candidate_models.challenger_version

    if decision == PROMOTE and spec.mode == AUTO_MODE:
        models.promote(spec.model_name, challenger)
        action = ledger.PROMOTE
    elif decision == PROMOTE and spec.mode == APPROVE_MODE:
        models.set_version_tag(spec.model_name, challenger, APPROVAL_TAG, PENDING)
        action = ledger.AWAIT_APPROVAL
    elif decision == PROMOTE:
        action = ledger.ALERT_ONLY
    else:
        action = decision.lower()
    after = models.alias_version(spec.model_name, CHAMPION)

    trained = f"{candidate_models.challenger_family} on {candidate_models.window} ({candidate_models.train_rows:,} rows)"
    if candidate_models.served_rows:
        trained += f", serves refit on {candidate_models.served_rows:,} rows with the holdout"
    if candidate_models.threshold is not None:
        trained += f", threshold {candidate_models.threshold:.3f}"
    gates = [f"{g.name}: {'pass' if g.passed else 'fail'} ({g.reason})" for g in evaluation_report.verdict.gates]
    reasons = "; ".join([f"challenger: {trained}", *gates])
    ledger.append(
        db,
        ledger.LedgerEntry(
            customer=spec.customer,
            model_name=spec.model_name,
            action=action,
            verdict=decision,
            from_version=before,
            to_version=challenger,
            champion_after=after,
            reasons=reasons,
            trigger=run_trigger(context, config),
            dagster_run_id=context.run_id,
            data_version=_training_data_version(context),
            # The clock, not the wall: the cooldown between trainings is measured on this timestamp.
            recorded_at=clock.now(),
        ),
    )
    # Only now, with its evaluation and ledger row: a training killed before this leaves no challenger that
    # serving's canary would route rows to, or `canary --promote` could promote.
    models.set_alias(spec.model_name, CHALLENGER, challenger)

    sample = features.X_holdout.head(200)
    expected = None
    if after == challenger:
        expected = _scores(candidate_models.pipeline, sample, spec.task)
    elif after is not None:
        expected = _scores(models.load(spec.model_name, after), sample, spec.task)
    deployment = Deployment(spec.model_name, spec.task, after, action, sample, expected)
    metadata: dict[str, Any] = {
        "action": action,
        "verdict": decision,
        "champion_version": str(after),
        "previous_champion": str(before),
        "mode": spec.mode,
    }
    if after is not None:
        metadata["champion_uri"] = f"models:/{spec.model_name}@{CHAMPION}"
    return dg.Output(deployment, metadata=metadata)


@dg.asset_check(asset=deployed_model, name=CHAMPION_SERVES_AS_TRAINED, blocking=True, partitions_def=customers)
def champion_serves_as_trained(registry: MlflowRegistry, deployed_model: Deployment) -> dg.AssetCheckResult:
    """The champion loads from `models:/<name>@champion` and scores a sample exactly as the in-memory model did."""
    if deployed_model.champion_version is None:
        return dg.AssetCheckResult(passed=True, description="no champion yet: nothing serves")
    models = registry.get_registry()
    name = deployed_model.model_name
    served = _scores(models.load(name, CHAMPION), deployed_model.sample, deployed_model.task)
    identical = served.shape == deployed_model.expected_scores.shape and bool(
        np.array_equal(served, deployed_model.expected_scores)
    )
    max_difference = float(np.max(np.abs(served - deployed_model.expected_scores))) if served.shape == deployed_model.expected_scores.shape else float("inf")
    return dg.AssetCheckResult(
        passed=identical,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"models:/{name}@champion (version {deployed_model.champion_version}) scores the sample identically"
            if identical
            else f"models:/{name}@champion scores differ from the in-memory model (max difference {max_difference})"
        ),
        metadata={"sample_rows": len(deployed_model.sample), "max_abs_difference": dg.MetadataValue.float(max_difference)},
    )


def _scores(pipeline: Any, frame: pd.DataFrame, task: str) -> np.ndarray:
    if task == "regression":
        return np.asarray(pipeline.predict(frame), dtype=float)
    return np.asarray(pipeline.predict_proba(frame), dtype=float)


def _training_data_version(context: dg.AssetExecutionContext) -> str | None:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=training_dataset.key, asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return records[0].asset_materialization.tags.get("dagster/data_version")


training_assets = [training_dataset, features, candidate_models, evaluation_report, deployed_model]
training_checks = [training_data_quality, features_are_finite, champion_serves_as_trained]


train_customer = dg.define_asset_job(
    "train_customer",
    selection=dg.AssetSelection.groups("training"),
    description="Snapshot, featurise, train, evaluate and deploy one customer's model.",
)
