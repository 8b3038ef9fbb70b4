"""Watching: the drift baseline captured at training time, and each inference batch scored and measured."""

import base64
import io
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from retrain_platform import batches as batch_states
from retrain_platform import customers as customer_store
from retrain_platform import drift, labelling, monitoring, quality
from retrain_platform.defs.partitions import batches, customers
from retrain_platform.defs.resources import Clock, MlflowRegistry
from retrain_platform.defs.training import (
    TrainedModels,
    WarehouseProvider,
    blocking_check_result,
    retry_when_busy,
    utc_now,
)
from retrain_platform.ingest import BATCH_COLUMN, batch_partition_key, split_batch_partition_key
from retrain_platform.modelling import FeatureSet, feature_importance
from retrain_platform.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, ModelRegistry
from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import quote

BASELINE_ARTIFACT = "drift_baseline.json"
INFERENCE_BATCH_QUALITY = "inference_batch_quality"
# Who quarantines a batch, or clears it, in `batch_states` when no person does.
QUARANTINED_BY = f"check {INFERENCE_BATCH_QUALITY}"

# A batch materialized on its own (from the UI, a backfill) is scored and measured by the automation sensor,
# unless its blocking quality check failed: Dagster's declarative automation does not look at checks itself.
FOLLOWS_ITS_BATCH = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


class BatchConfig(dg.Config):
    """Rows per chunk: bounds memory whatever the batch size."""

    chunk_rows: int = 250_000


class DriftReportConfig(BatchConfig):
    """`chart`: draw the per-batch chart shown in the UI (a replay of many batches goes without)."""

    chart: bool = True


@dg.asset(partitions_def=customers, group_name="training", kinds={"mlflow"})
@retry_when_busy
def drift_baseline(
    registry: MlflowRegistry, features: FeatureSet, candidate_models: TrainedModels
) -> dg.MaterializeResult:
    """The reference distribution of every feature, of the challenger's predictions and of the label on the
    training rows, and the challenger's permutation importance per feature (the dataset drift verdict weighs
    each drifted feature by it), kept as a few kilobytes of JSON with the model version, so measuring drift
    on a batch never needs the training data again."""
    spec = features.spec
    predictions, prediction_kind = monitoring.baseline_predictions(candidate_models.pipeline, features.X_train, spec.task)
    baseline = drift.build_baseline(
        features.X_train,
        spec.kinds,
        predictions=predictions,
        prediction_kind=prediction_kind,
        labels=features.y_train if spec.task == "regression" else features.y_train.astype(str),
        label_kind="numeric" if spec.task == "regression" else "categorical",
        thresholds=spec.drift_thresholds or None,
        importance=feature_importance(candidate_models.pipeline, features),
    )
    payload = baseline.to_dict()
    registry.get_registry().log_dict(candidate_models.challenger_run_id, payload, BASELINE_ARTIFACT)
    return dg.MaterializeResult(
        metadata={
            "model_version": candidate_models.challenger_version,
            "reference_rows": dg.MetadataValue.int(baseline.n_rows),
            "size_kb": dg.MetadataValue.float(round(len(baseline.to_json()) / 1024, 1)),
            "features": dg.MetadataValue.int(len(baseline.features)),
            "importance": dg.MetadataValue.md(_importance_table(baseline.importance)),
        }
    )


def _importance_table(importance: dict[str, float] | None) -> str:
    if not importance:
        return "not computed (too many features, or a holdout that cannot be scored): drift counts every feature alike"
    ranked = sorted(importance.items(), key=lambda item: -item[1])
    return "\n".join(["| feature | importance |", "|---|---:|", *(f"| {name} | {weight:.3f} |" for name, weight in ranked)])


def _load_models(models: ModelRegistry, spec: CustomerSpec) -> dict[str, tuple[str, Any]]:
    loaded = {}
    champion = models.alias_version(spec.model_name, CHAMPION)
    challenger = models.alias_version(spec.model_name, CHALLENGER)
    if champion is not None:
        loaded[monitoring.CHAMPION_ROLE] = (champion, models.load(spec.model_name, champion))
    if challenger is not None and challenger != champion:
        loaded[monitoring.CHALLENGER_ROLE] = (challenger, models.load(spec.model_name, challenger))
    # Scored in shadow so the automatic rollback can compare both champions on the same labelled rows.
    previous = models.alias_version(spec.model_name, PREVIOUS_CHAMPION)
    if previous is not None and previous not in (champion, challenger):
        loaded[monitoring.PREVIOUS_CHAMPION_ROLE] = (previous, models.load(spec.model_name, previous))
    return loaded


# A backfill over many batches (an onboarded customer's history) runs once for all of them, not once per
# batch: each asset below loops over the run's partition keys.
ONE_RUN_PER_BACKFILL = dg.BackfillPolicy.single_run()


@dg.asset(
    partitions_def=batches,
    group_name="monitoring",
    kinds={"pandas"},
    backfill_policy=ONE_RUN_PER_BACKFILL,
)
@retry_when_busy
def inference_batch(context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[WarehouseProvider]) -> dg.MaterializeResult:
    """One ingested batch of a customer's rows, as landed; labels may arrive for it later."""
    db = warehouse.get_warehouse()
    described = []
    for key in context.partition_keys:
        customer, batch_id = split_batch_partition_key(key)
        spec = customer_store.load_spec(db, customer)
        label, timestamp, batch = quote(spec.label_column), quote(spec.timestamp_column), quote(BATCH_COLUMN)
        counts = db.query(
            f'select count(*) as "n", count({label}) as "labelled", min({timestamp}) as "first", '
            f'max({timestamp}) as "last" from {quote(spec.landing_table)} where {batch} = ?',
            [batch_id],
        ).iloc[0]
        if int(counts["n"]) == 0:
            raise dg.Failure(f"batch {batch_id!r} of {customer!r} has no rows in {spec.landing_table}", allow_retries=False)
        described.append(
            {
                "batch": key,
                "rows": int(counts["n"]),
                "labelled_rows": int(counts["labelled"]),
                "time_range": f"{counts['first']} .. {counts['last']}",
            }
        )
    if len(described) == 1:
        only = described[0]
        return dg.MaterializeResult(
            metadata={
                "customer": split_batch_partition_key(only["batch"])[0],
                "rows": dg.MetadataValue.int(only["rows"]),
                "labelled_rows": dg.MetadataValue.int(only["labelled_rows"]),
                "time_range": only["time_range"],
            }
        )
    return dg.MaterializeResult(metadata=_range_metadata(described))


def _range_metadata(described: list[dict]) -> dict[str, Any]:
    """A run over several batches records one materialization per batch with the same metadata (Dagster
    has no per-partition metadata in a single-run backfill): a table with a row per batch."""
    frame = pd.DataFrame(described)
    metadata: dict[str, Any] = {
        "batches": dg.MetadataValue.int(len(frame)),
        "per_batch": dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=".4g")),
    }
    if "rows" in frame:
        metadata["rows"] = dg.MetadataValue.int(int(frame["rows"].sum()))
    return metadata


@dg.asset_check(asset=inference_batch, name=INFERENCE_BATCH_QUALITY, blocking=True, partitions_def=batches)
def inference_batch_quality(
    context: dg.AssetCheckExecutionContext, warehouse: dg.ResourceParam[WarehouseProvider]
) -> dg.AssetCheckResult:
    """The training suite without the label rule: schema and types, finite numbers, categories and ranges,
    unique ids, timestamps that parse and are not in the future. A failing batch is quarantined: its rows are
    kept but never scored, and training, drift and metrics leave them out until it is corrected, released or
    dropped (`retrain-platform batches`)."""
    db = warehouse.get_warehouse()
    keys = context.partition_keys
    now = utc_now()
    if len(keys) == 1:
        customer, batch_id = split_batch_partition_key(keys[0])
        spec = customer_store.load_spec(db, customer)
        rows = db.query(f"select * from {quote(spec.landing_table)} where {quote(BATCH_COLUMN)} = ?", [batch_id])
        result = quality.validate_customer_rows(rows, spec, now=now, labels_required=False)
        if not result.success:
            return _failed_batch(db, customer, [(batch_id, result)], now)
        batch_states.clear_quarantine(db, customer, [batch_id], now, QUARANTINED_BY)
        return blocking_check_result(result)
    # A backfill's batches are checked in one validation per customer (ids unique across them, too); only
    # when that fails are they checked one by one, to quarantine each failing batch.
    by_customer: dict[str, list[str]] = {}
    for key in keys:
        customer, batch_id = split_batch_partition_key(key)
        by_customer.setdefault(customer, []).append(batch_id)
    failed: list[dg.AssetCheckResult] = []
    for customer, batch_ids in by_customer.items():
        spec = customer_store.load_spec(db, customer)
        marks = ", ".join("?" for _ in batch_ids)
        batch = quote(BATCH_COLUMN)
        rows = db.query(f"select * from {quote(spec.landing_table)} where {batch} in ({marks})", batch_ids)
        together = quality.validate_customer_rows(rows, spec, now=now, labels_required=False)
        if together.success:
            batch_states.clear_quarantine(db, customer, batch_ids, now, QUARANTINED_BY)
            continue
        failing = []
        for batch_id, batch_rows in rows.groupby(BATCH_COLUMN, sort=True):
            result = quality.validate_customer_rows(batch_rows, spec, now=now, labels_required=False)
            if not result.success:
                failing.append((str(batch_id), result))
        if failing:
            failed.append(_failed_batch(db, customer, failing, now))
        else:
            # Only the batches together break a rule (an id in two of them): no single batch to quarantine.
            failed.append(_failed_check(f"batches of {customer} ({len(batch_ids)} together)", together))
    if failed:
        return failed[0]
    return dg.AssetCheckResult(
        passed=True, severity=dg.AssetCheckSeverity.ERROR, description=f"{len(keys)} batches pass the suite"
    )


def _failed_batch(db, customer: str, failing: list[tuple[str, quality.QualityResult]], now) -> dg.AssetCheckResult:
    """Quarantine each failing batch; the check's description names the first one's column and rule."""
    records = [batch_states.quarantine(db, customer, batch_id, result, now, QUARANTINED_BY) for batch_id, result in failing]
    first_id, first = failing[0]
    more = f" with {len(failing) - 1} more of {customer}'s batches" if len(failing) > 1 else ""
    suffix = f"; quarantined{more}: see `retrain-platform batches {customer}`"
    described = _failed_check(batch_partition_key(customer, first_id), first, suffix=suffix)
    described.metadata["quarantined_batches"] = dg.MetadataValue.text(", ".join(r.batch_id for r in records))
    return described


def _failed_check(where: str, result: quality.QualityResult, suffix: str = "") -> dg.AssetCheckResult:
    if result.failures:
        more = len(result.failures) - 1
        problem = result.failures[0].message + (f" (and {more} more failed expectation(s))" if more else "")
    else:
        problem = result.summary()
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"batch {where}: {problem}{suffix}",
        metadata=result.to_metadata(),
    )


@dg.asset(
    partitions_def=batches,
    group_name="monitoring",
    kinds={"scikit-learn", "mlflow"},
    deps=[inference_batch],
    automation_condition=FOLLOWS_ITS_BATCH,
    backfill_policy=ONE_RUN_PER_BACKFILL,
)
@retry_when_busy
def batch_predictions(
    context: dg.AssetExecutionContext,
    config: BatchConfig,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
) -> dg.MaterializeResult:
    """The batch scored by the champion and, in shadow, by the challenger and the previous champion, with the
    registered pipelines. Before a first champion is approved, the challenger scores alone, so a reviewer sees
    how it would have done on the history. Re-running a batch replaces its predictions. The serving model's
    least certain unlabelled rows go to the labelling queue for experts (`retrain-platform label-queue`)."""
    db = warehouse.get_warehouse()
    models_registry = registry.get_registry()
    loaded: dict[str, dict[str, tuple[str, Any]]] = {}
    quarantined: dict[str, set[str]] = {}
    described = []
    for key in context.partition_keys:
        customer, batch_id = split_batch_partition_key(key)
        spec = customer_store.load_spec(db, customer)
        if customer not in loaded:
            loaded[customer] = _load_models(models_registry, spec)
            quarantined[customer] = set(batch_states.quarantined_batches(db, customer))
        models = loaded[customer]
        if not models:
            raise dg.Failure(f"{customer} has no model yet: train a model before scoring", allow_retries=False)
        picker = labelling.picker_for(spec)
        scored = monitoring.score_batch(db, spec, batch_id, models, chunk_rows=config.chunk_rows, uncertain=picker)
        row: dict[str, Any] = {"batch": key, "rows": scored.rows, "labelled_rows": scored.labelled_rows}
        if picker is not None and batch_id not in quarantined[customer]:
            row["queued_for_labelling"] = labelling.enqueue(db, customer, batch_id, picker.rows(), clock.now())
        for role, version in scored.versions.items():
            row[f"{role}_version"] = version
            row[f"{role}_mean_score"] = float(scored.mean_score[role])
        described.append(row)
    if len(described) > 1:
        return dg.MaterializeResult(metadata=_range_metadata(described))
    only = described[0]
    metadata: dict[str, Any] = {
        "rows": dg.MetadataValue.int(only["rows"]),
        "labelled_rows": dg.MetadataValue.int(only["labelled_rows"]),
    }
    if "queued_for_labelling" in only:
        metadata["queued_for_labelling"] = dg.MetadataValue.int(only["queued_for_labelling"])
    for name, value in only.items():
        if name.endswith("_version"):
            metadata[name] = value
        elif name.endswith("_mean_score"):
            metadata[name] = dg.MetadataValue.float(value)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    partitions_def=batches,
    group_name="monitoring",
    kinds={"scipy"},
    deps=[batch_predictions],
    automation_condition=FOLLOWS_ITS_BATCH,
    backfill_policy=ONE_RUN_PER_BACKFILL,
)
@retry_when_busy
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftReportConfig,
    warehouse: dg.ResourceParam[WarehouseProvider],
    registry: MlflowRegistry,
    clock: Clock,
) -> dg.MaterializeResult:
    """Per feature: the test or distance used, its value, the threshold and the verdict; the share of drifted
    features and the dataset verdict; drift of the champion's predictions; the realized metrics of the
    champion and the shadow models on labelled rows, and a label-free estimate of the champion's."""
    db = warehouse.get_warehouse()
    models_registry = registry.get_registry()
    if len(context.partition_keys) == 1:
        return _measure(db, models_registry, clock, config, context.partition_key, chart=config.chart).metadata
    described, loaded = [], {}
    for key in context.partition_keys:
        # One materialization's metadata stands for every batch of the run: no per-batch chart to draw.
        measured = _measure(db, models_registry, clock, config, key, chart=False, loaded=loaded)
        described.append(
            {
                "batch": key,
                "rows": measured.report.rows,
                "labelled_rows": measured.report.labelled_rows,
                "drift_share": round(float(measured.report.drift.drift_share), 3),
                "dataset_drifted": bool(measured.report.drift.dataset_drifted),
                "drifted_columns": ", ".join(measured.report.drift.drifted_columns) or "-",
                **{
                    f"realized_{role}_{measured.spec.primary_metric}": round(_finite(m[measured.spec.primary_metric]), 4)
                    for role, m in measured.report.realized.items()
                },
            }
        )
    metadata = _range_metadata(described)
    metadata["drifted_batches"] = dg.MetadataValue.int(sum(row["dataset_drifted"] for row in described))
    return dg.MaterializeResult(metadata=metadata)


@dataclass
class _Measured:
    spec: CustomerSpec
    report: monitoring.BatchReport
    metadata: dg.MaterializeResult


def _measure(
    db,
    models_registry: ModelRegistry,
    clock: Clock,
    config: BatchConfig,
    key: str,
    chart: bool = True,
    loaded: dict | None = None,
) -> _Measured:
    """Measure one batch; `loaded` keeps models and baselines across the batches of one run."""
    loaded = {} if loaded is None else loaded

    def once(what: tuple, load):
        if what not in loaded:
            loaded[what] = load()
        return loaded[what]

    customer, batch_id = split_batch_partition_key(key)
    spec = customer_store.load_spec(db, customer)
    versions = monitoring.scored_versions(db, customer, batch_id)
    serving = monitoring.serving_role(versions)
    if serving is None:
        raise dg.Failure(f"batch {batch_id} of {customer} has not been scored: materialize batch_predictions first", allow_retries=False)
    models = {}
    for role, version in versions.items():
        load = lambda v=version: models_registry.load(spec.model_name, v)  # noqa: E731
        models[role] = (version, once(("model", spec.model_name, version), load))

    def load_baseline() -> drift.Baseline:
        run_id = models_registry.version_run_id(spec.model_name, versions[serving])
        return drift.Baseline.from_dict(models_registry.load_dict(run_id, BASELINE_ARTIFACT))

    baseline = once(("baseline", spec.model_name, versions[serving]), load_baseline)
    report = monitoring.measure_batch(db, spec, batch_id, baseline, models, chunk_rows=config.chunk_rows)
    monitoring.store_report(db, spec, batch_id, report, versions, measured_at=clock.now())

    columns = report.drift.columns
    metadata: dict[str, Any] = {
        "customer": customer,
        "dataset_drifted": dg.MetadataValue.bool(bool(report.drift.dataset_drifted)),
        "drift_share": dg.MetadataValue.float(float(report.drift.drift_share)),
        **(
            {"drifted_importance_share": dg.MetadataValue.float(report.drift.importance_share)}
            if report.drift.importance_share is not None
            else {}
        ),
        "drifted_columns": ", ".join(report.drift.drifted_columns) or "none",
        "labelled_rows": dg.MetadataValue.int(report.labelled_rows),
        "features": dg.MetadataValue.md(_drift_table(columns)),
    }
    if serving != monitoring.CHAMPION_ROLE:
        metadata["scored_by"] = f"{serving} version {versions[serving]} (no champion yet)"
    for row in columns.itertuples():
        metadata[f"statistic/{row.column}"] = dg.MetadataValue.float(_finite(row.statistic))
    if report.drift.prediction_drift is not None:
        prediction = report.drift.prediction_drift
        metadata["prediction_drifted"] = dg.MetadataValue.bool(bool(prediction["drifted"]))
        metadata["prediction_statistic"] = dg.MetadataValue.float(_finite(prediction["statistic"]))
    for name, value in report.estimated.items():
        metadata[f"estimated_{name}"] = dg.MetadataValue.float(_finite(value))
    for role, metrics in report.realized.items():
        metadata[f"realized_{role}_{spec.primary_metric}"] = dg.MetadataValue.float(_finite(metrics[spec.primary_metric]))
    if chart:
        history = monitoring.metric_history(db, customer, spec.primary_metric)
        metadata["chart"] = dg.MetadataValue.md(_chart(columns, history, spec.primary_metric, batch_id))
    return _Measured(spec, report, dg.MaterializeResult(metadata=metadata))


def _finite(value: Any) -> float:
    value = float(value) if value is not None else float("nan")
    return value if np.isfinite(value) else float("nan")


def _drift_table(columns: pd.DataFrame) -> str:
    shown = columns[["column", "method", "statistic", "threshold", "drifted"]].copy()
    shown["statistic"] = shown["statistic"].map(lambda v: f"{v:.4g}")
    shown["threshold"] = shown["threshold"].map(lambda v: f"{v:.4g}")
    return shown.to_markdown(index=False)


def _chart(columns: pd.DataFrame, history: pd.DataFrame, metric: str, batch_id: str) -> str:
    """Drift per feature and the estimated vs realized metric over batches, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), dpi=80)
    # One scale for every method: 1 is the threshold (p-value tests: threshold / p; distances: value / threshold).
    tested = columns["method"].isin(["ks", "chi_square"])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(
            tested,
            columns["threshold"] / columns["p_value"].astype(float),
            columns["statistic"] / columns["threshold"],
        )
    score = np.clip(np.nan_to_num(score.astype(float), nan=0.0, posinf=3.0), 0.0, 3.0)
    left.barh(columns["column"], score, color=np.where(columns["drifted"], "#d62728", "#1f77b4"))
    left.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    left.set_title(f"drift per feature, batch {batch_id} (1 = threshold)", fontsize=9)
    left.tick_params(labelsize=7)
    for kind, style in (("realized", "o-"), ("estimated", "s--")):
        points = history[history["kind"] == kind]
        if len(points):
            right.plot(points["batch_id"], points["value"], style, label=kind)
    right.set_title(f"champion {metric} over batches", fontsize=9)
    right.tick_params(labelsize=7, rotation=30)
    if len(history):
        right.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![drift report](data:image/png;base64,{encoded})"


monitoring_assets = [inference_batch, batch_predictions, drift_report]
monitoring_checks = [inference_batch_quality]

monitor_batch = dg.define_asset_job(
    "monitor_batch",
    selection=dg.AssetSelection.assets(*monitoring_assets),
    description="Check, score and measure one ingested batch.",
)

remeasure_batch = dg.define_asset_job(
    "remeasure_batch",
    selection=dg.AssetSelection.assets(drift_report),
    description="Measure a scored batch again, after its late labels arrived: its realized metrics and drift report.",
)
