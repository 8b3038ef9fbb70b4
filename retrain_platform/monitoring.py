"""Scoring batches and measuring them: predictions, drift and realized or estimated performance.

Everything here works chunk by chunk, so a batch of ten million rows is scored and compared with the
baseline in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from retrain_platform import drift, labelling, performance
from retrain_platform.evaluation import ModelOutput, compute_metrics, predicted_labels
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform.modelling import decision_threshold
from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import Warehouse, quote

PREDICTIONS_TABLE = "batch_predictions"
# Where a batch's predictions are written chunk by chunk before they replace its stored ones (`score_batch`).
SCORING_TABLE = "batch_predictions_scoring"
DRIFT_TABLE = "drift_statistics"
METRICS_TABLE = "batch_metrics"
DRIFT_BATCHES_TABLE = "drift_batches"
# The columns a stored prediction has besides its row: the predicted value (as text) and its score.
PREDICTION = "prediction"
SCORE = "score"
CHAMPION_ROLE = "champion"
MAX_METRIC_ROWS = 1_000_000
CHALLENGER_ROLE = "challenger"
# The champion a promotion replaced, scored in shadow so a bad promotion shows on the next labelled batches.
PREVIOUS_CHAMPION_ROLE = "previous_champion"


def serving_role(models: dict) -> str | None:
    """The role whose predictions are the batch's: the champion, or before any champion the challenger."""
    for role in (CHAMPION_ROLE, CHALLENGER_ROLE):
        if role in models:
            return role
    return None


def prediction_scores(pipeline: Any, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
    """What a model says about each row: (prediction, score). The score is the positive-class probability
    for a binary task, the top-class probability for multiclass, and the predicted value for regression."""
    if task == "regression":
        values = np.asarray(pipeline.predict(frame), dtype=float)
        return values, values
    predicted, proba = classified(pipeline, frame)
    return predicted, class_score(proba, task)


def class_score(proba: np.ndarray, task: str) -> np.ndarray:
    """A classifier's score per row from its class probabilities: the positive class's for a binary task, the
    top class's for multiclass."""
    return proba[:, 1] if task == "binary" else proba.max(axis=1)


def classified(pipeline: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's (predicted label, probability of each class in `pipeline.classes_` order) per row, the
    label at the decision threshold the model was trained with: the one rule batch and online scoring share."""
    proba = np.asarray(pipeline.predict_proba(frame), dtype=float)
    return predicted_labels(proba, np.asarray(pipeline.classes_), decision_threshold(pipeline)), proba


def baseline_predictions(pipeline: Any, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, str]:
    """The prediction distribution a baseline keeps: scores for binary and regression, classes for multiclass."""
    predicted, score = prediction_scores(pipeline, frame, task)
    if task == "multiclass":
        return predicted.astype(str), "categorical"
    return score, "numeric"


def batch_rows(warehouse: Warehouse, spec: CustomerSpec, batch_id: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    # No ORDER BY: scoring and drift do not depend on row order, and sorting would hold the whole batch.
    sql = f"select * from {quote(spec.landing_table)} where {quote(BATCH_COLUMN)} = ?"
    yield from warehouse.query_chunks(sql, [batch_id], chunk_rows)


@dataclass
class ScoredBatch:
    rows: int
    labelled_rows: int
    versions: dict[str, str]
    mean_score: dict[str, float]


def score_batch(
    warehouse: Warehouse,
    spec: CustomerSpec,
    batch_id: str,
    models: dict[str, tuple[str, Any]],
    chunk_rows: int = 250_000,
    uncertain: labelling.MostUncertain | None = None,
) -> ScoredBatch:
    """Score every row of a batch with each model (role -> (version, pipeline)) and replace the batch's
    stored predictions, so re-running a batch never duplicates them. `uncertain`, for a classifier, is given the
    serving model's class probabilities of every unlabelled row (the labelling queue's candidates)."""
    key = {"customer": spec.customer, "batch_id": batch_id}
    # Chunks land in a scoring table and replace the batch's predictions in one swap at the end, so a run
    # that dies half way leaves the batch's earlier predictions whole (and its own leftovers are cleared here).
    warehouse.delete_where(SCORING_TABLE, key)
    written = False
    rows = labelled = 0
    sums = {role: 0.0 for role in models}
    serving = serving_role(models)
    for chunk in batch_rows(warehouse, spec, batch_id, chunk_rows):
        rows += len(chunk)
        has_label = chunk[spec.label_column].notna().to_numpy()
        labelled += int(has_label.sum())
        row_ids = chunk[spec.id_column].astype(str) if spec.id_column else chunk.index.astype(str)
        parts = []
        for role, (version, pipeline) in models.items():
            if uncertain is not None and role == serving and spec.task != "regression":
                predicted, proba = classified(pipeline, chunk[spec.feature_names])
                score = class_score(proba, spec.task)
                uncertain.add(row_ids.to_numpy(), proba, labelled=has_label)
            else:
                predicted, score = prediction_scores(pipeline, chunk[spec.feature_names], spec.task)
            sums[role] += float(score.sum())
            parts.append(
                pd.DataFrame(
                    {
                        "customer": spec.customer,
                        "batch_id": batch_id,
                        "row_id": row_ids.to_numpy(),
                        "model_role": role,
                        "model_version": str(version),
                        PREDICTION: pd.Series(predicted).astype(str).to_numpy(),
                        SCORE: score,
                    }
                )
            )
        if parts:
            warehouse.write(SCORING_TABLE, pd.concat(parts, ignore_index=True))
            written = True
    if written:
        warehouse.move_rows(SCORING_TABLE, PREDICTIONS_TABLE, key)
    else:
        warehouse.delete_where(PREDICTIONS_TABLE, key)
    return ScoredBatch(
        rows=rows,
        labelled_rows=labelled,
        versions={role: str(version) for role, (version, _) in models.items()},
        mean_score={role: total / rows if rows else float("nan") for role, total in sums.items()},
    )


def scored_versions(warehouse: Warehouse, customer: str, batch_id: str) -> dict[str, str]:
    """Which model version scored a batch in each role."""
    if not warehouse.table_exists(PREDICTIONS_TABLE):
        return {}
    frame = warehouse.query(
        f'select distinct "model_role", "model_version" from {quote(PREDICTIONS_TABLE)} '
        'where "customer" = ? and "batch_id" = ?',
        [customer, batch_id],
    )
    return dict(zip(frame["model_role"], frame["model_version"]))


@dataclass
class BatchReport:
    drift: drift.DriftResult
    realized: dict[str, dict[str, float]]
    estimated: dict[str, float]
    labelled_rows: int
    rows: int


def measure_batch(
    warehouse: Warehouse,
    spec: CustomerSpec,
    batch_id: str,
    baseline: drift.Baseline,
    models: dict[str, tuple[str, Any]],
    chunk_rows: int = 250_000,
    max_metric_rows: int = MAX_METRIC_ROWS,
    seed: int = 0,
) -> BatchReport:
    """Drift of every feature and of the champion's predictions, the label-free estimate of the champion's
    performance, and the realized metrics of each model on the rows whose labels have arrived.

    Realized metrics use every labelled row up to `max_metric_rows`, and a uniform random sample of that
    size beyond it: the sampling error is then far below any difference that matters, and memory stays
    bounded whatever the batch size."""
    labelled_total = _labelled_rows(warehouse, spec, batch_id)
    keep_share = min(1.0, max_metric_rows / labelled_total) if labelled_total else 1.0
    sampler = np.random.default_rng(seed)
    labels: list[np.ndarray] = []
    # Per role, the outputs on labelled rows only: probabilities as float32 (or regression values).
    outputs: dict[str, list[np.ndarray]] = {role: [] for role in models}
    estimate_scores: list[np.ndarray] = []
    serving = serving_role(models)
    champion = models.get(serving) if serving else None

    def model_outputs(pipeline: Any, frame: pd.DataFrame) -> np.ndarray:
        if spec.task == "regression":
            return np.asarray(pipeline.predict(frame), dtype=float)
        return np.asarray(pipeline.predict_proba(frame), dtype=np.float32)

    def chunks() -> Iterable[pd.DataFrame]:
        # Only the labels and the models' outputs on labelled rows are kept, never the rows themselves.
        for chunk in batch_rows(warehouse, spec, batch_id, chunk_rows):
            features = chunk[spec.feature_names]
            is_labelled = chunk[spec.label_column].notna().to_numpy()
            if keep_share < 1.0:
                is_labelled &= sampler.random(len(chunk)) < keep_share
            champion_output = None
            if champion is not None:
                champion_output = model_outputs(champion[1], features)
                if spec.task == "regression":
                    chunk = chunk.assign(**{drift.PREDICTION: champion_output})
                elif spec.task == "binary":
                    estimate_scores.append(champion_output[:, 1])
                    chunk = chunk.assign(**{drift.PREDICTION: champion_output[:, 1]})
                else:
                    estimate_scores.append(champion_output)
                    classes = np.asarray(champion[1].classes_)
                    chunk = chunk.assign(**{drift.PREDICTION: classes[np.argmax(champion_output, axis=1)].astype(str)})
            if is_labelled.any():
                y = chunk.loc[is_labelled, spec.label_column].to_numpy()
                labels.append(y.astype(float) if spec.task == "regression" else y)
                for role, (_, pipeline) in models.items():
                    if role == serving and champion_output is not None:
                        outputs[role].append(champion_output[is_labelled])
                    else:
                        outputs[role].append(model_outputs(pipeline, features[is_labelled]))
            yield chunk

    # The champion's output rides in the chunk under a name onboarding refuses for a column: a feature named
    # `score` keeps its own values.
    result = drift.detect(baseline, chunks(), predictions=drift.PREDICTION if champion is not None else None)
    realized: dict[str, dict[str, float]] = {}
    labelled_rows = int(sum(len(y) for y in labels))
    if labelled_rows:
        y_true = np.concatenate(labels)
        for role, parts in outputs.items():
            values = np.concatenate(parts)
            if spec.task == "regression":
                output = ModelOutput.from_values(values)
            else:
                pipeline = models[role][1]
                output = ModelOutput.from_proba(
                    values.astype(float), np.asarray(pipeline.classes_), decision_threshold(pipeline)
                )
            realized[role] = compute_metrics(spec.task, y_true, output)
    estimated: dict[str, float] = {}
    if estimate_scores:
        cut = decision_threshold(champion[1]) if spec.task == "binary" else None
        estimated = performance.estimate_metrics(np.concatenate(estimate_scores), spec.task, cut)
    return BatchReport(
        drift=result,
        realized=realized,
        estimated=estimated,
        labelled_rows=labelled_total,
        rows=result.n_rows,
    )


# ------------------------------------------------------------------------------ counts the warehouse makes

# A double at or beyond this magnitude rounds to infinity as a float32, which the drift counters count as missing.
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


def _float32_floor(edge: float) -> tuple[float, bool]:
    """Which doubles round to a float32 at or above the float32 `edge`: those above the midpoint between the
    edge and the float32 below it, and the midpoint itself when a tie rounds to the edge (an even mantissa).
    The drift counters compare values rounded to float32 (`drift._as_float32`) with float32 edges; Snowflake
    has no float32, so the warehouse compares the doubles with these thresholds instead, with the same result."""
    upper = np.float32(edge)
    lower = np.nextafter(upper, np.float32(-np.inf))
    midpoint = (float(lower) + float(upper)) / 2  # exact: both are float32, so their mean fits in a double
    return midpoint, int(upper.view(np.uint32)) % 2 == 0


@dataclass(frozen=True)
class BinnedCounts:
    """A numeric column's rows per baseline bin ((-inf, e0), [e0, e1), ..., [e_last, inf)), their sums, and its
    missing values (NULL, NaN, infinite), as `drift._NumericCounter` counts them."""

    counts: np.ndarray
    sums: np.ndarray
    n_missing: int


def binned_counts(
    warehouse: Warehouse, table: str, column: str, edges: np.ndarray, where: str = "", params: list | tuple = ()
) -> BinnedCounts:
    """One GROUP BY in the warehouse: the rows of `table` matching `where` per bin of `column` against a
    baseline's interior `edges`. Only len(edges) + 1 rows come back, whatever the batch's size."""
    value = f"cast({quote(column)} as double)"
    cases, bounds = [], []
    for position, edge in enumerate(edges):
        floor, inclusive = _float32_floor(float(edge))
        cases.append(f"when \"v\" {'<' if inclusive else '<='} ? then {position}")
        bounds.append(floor)
    binned = f"case {' '.join(cases)} else {len(edges)} end" if cases else "0"
    filtered = f" where {where}" if where else ""
    # NaN sorts above every number on both engines, so the range test also leaves NaN out.
    frame = warehouse.query(
        f'select {binned} as "bin", count(*) as "n", sum("v") as "total" '
        f'from (select {value} as "v" from {quote(table)}{filtered}) rows_ '
        f'where "v" > ? and "v" < ? group by 1',
        [*bounds, *params, -_FLOAT32_OVERFLOW, _FLOAT32_OVERFLOW],
    )
    counts = np.zeros(len(edges) + 1, dtype=np.int64)
    sums = np.zeros(len(edges) + 1, dtype=np.float64)
    positions = frame["bin"].to_numpy(dtype=np.int64)
    counts[positions] = frame["n"].to_numpy(dtype=np.int64)
    sums[positions] = frame["total"].to_numpy(dtype=np.float64)
    return BinnedCounts(counts, sums, row_count(warehouse, table, where, params) - int(counts.sum()))


def category_counts(
    warehouse: Warehouse, table: str, column: str, where: str = "", params: list | tuple = ()
) -> tuple[pd.Series, int]:
    """One GROUP BY in the warehouse: rows per category label of `column` (as `drift._CategoricalCounter` labels
    them) among the rows of `table` matching `where`, and the number of NULLs."""
    name = quote(column)
    filtered = f"{where} and " if where else ""
    frame = warehouse.query(
        f'select {name} as "value", count(*) as "n" from {quote(table)} where {filtered}{name} is not null group by 1',
        list(params),
    )
    counts = drift.labelled_counts(pd.Series(frame["n"].to_numpy(dtype=np.int64), index=pd.Index(frame["value"])))
    return counts, row_count(warehouse, table, where, params) - int(counts.sum())


def row_count(warehouse: Warehouse, table: str, where: str = "", params: list | tuple = ()) -> int:
    filtered = f" where {where}" if where else ""
    counted = warehouse.query(f'select count(*) as "n" from {quote(table)}{filtered}', list(params))
    return int(counted["n"].iloc[0])


def batch_filter(batch_id: str) -> tuple[str, list]:
    """The `where` and parameters that select one batch of a landing table."""
    return f"{quote(BATCH_COLUMN)} = ?", [batch_id]


def _labelled_rows(warehouse: Warehouse, spec: CustomerSpec, batch_id: str) -> int:
    counted = warehouse.query(
        f'select count({quote(spec.label_column)}) as "n" from {quote(spec.landing_table)} '
        f"where {quote(BATCH_COLUMN)} = ?",
        [batch_id],
    )
    return int(counted["n"].iloc[0])


def store_report(
    warehouse: Warehouse,
    spec: CustomerSpec,
    batch_id: str,
    report: BatchReport,
    versions: dict[str, str],
    measured_at: datetime | None = None,
) -> None:
    """Every raw statistic, per customer x batch x column, and every metric, in tables a dashboard can query;
    and one summary row per batch (`drift_batches`) that the drift sensor reads."""
    key = {"customer": spec.customer, "batch_id": batch_id}
    columns = report.drift.columns.copy()
    if report.drift.prediction_drift is not None:
        columns = pd.concat([columns, pd.DataFrame([report.drift.prediction_drift])], ignore_index=True)
    serving = serving_role(versions)
    columns = columns.assign(**key, model_version=versions.get(serving))
    for name in columns.columns:
        if columns[name].dtype == object:
            columns[name] = columns[name].astype("string")
    warehouse.write(DRIFT_TABLE, columns, replace_where=key)

    rows = []
    for role, metrics in report.realized.items():
        rows += [
            {"model_role": role, "model_version": versions.get(role), "kind": "realized", "metric": m, "value": v}
            for m, v in metrics.items()
        ]
    rows += [
        {"model_role": serving, "model_version": versions.get(serving), "kind": "estimated", "metric": m, "value": v}
        for m, v in report.estimated.items()
    ]
    frame = pd.DataFrame(rows, columns=["model_role", "model_version", "kind", "metric", "value"])
    frame = frame.assign(**key, labelled_rows=report.labelled_rows, rows=report.rows)
    frame["value"] = frame["value"].astype(float)
    warehouse.delete_where(METRICS_TABLE, key)
    if len(frame):
        warehouse.write(METRICS_TABLE, frame)

    measured_at = measured_at or datetime.now(timezone.utc).replace(tzinfo=None)
    summary = pd.DataFrame(
        {
            **{name: [value] for name, value in key.items()},
            "batch_start": [batch_start(warehouse, spec, batch_id)],
            "rows": [int(report.rows)],
            "labelled_rows": [int(report.labelled_rows)],
            "drift_share": [float(report.drift.drift_share)],
            "dataset_drifted": [bool(report.drift.dataset_drifted)],
            "drifted_columns": [", ".join(report.drift.drifted_columns)],
            "model_version": pd.Series([versions.get(serving)], dtype="string"),
            "measured_at": [pd.Timestamp(measured_at)],
        }
    )
    summary["batch_start"] = pd.to_datetime(summary["batch_start"])
    warehouse.write(DRIFT_BATCHES_TABLE, summary, replace_where=key)


def batch_measured(warehouse: Warehouse, customer: str, batch_id: str, rows: int) -> bool:
    """Whether the batch's monitoring finished over all its `rows`: the serving model's predictions cover every
    row and its drift summary counts them. Not after an ingest that stopped before monitoring, nor a run killed
    while it scored."""
    if not (warehouse.table_exists(PREDICTIONS_TABLE) and warehouse.table_exists(DRIFT_BATCHES_TABLE)):
        return False
    key = [customer, batch_id]
    scored = warehouse.query(
        f'select "model_role", count(*) as "n" from {quote(PREDICTIONS_TABLE)} '
        'where "customer" = ? and "batch_id" = ? group by 1',
        key,
    )
    counts = {str(role): int(n) for role, n in zip(scored["model_role"], scored["n"], strict=True)}
    serving = serving_role(counts)
    if serving is None or counts[serving] != rows:
        return False
    summary = warehouse.query(
        f'select "rows" from {quote(DRIFT_BATCHES_TABLE)} where "customer" = ? and "batch_id" = ?', key
    )
    return len(summary) == 1 and int(summary["rows"].iloc[0]) == rows


def forget_batch(warehouse: Warehouse, customer: str, batch_id: str) -> None:
    """Remove a batch's predictions, drift statistics and metrics, once its rows were replaced: they describe
    rows that are gone, and the sensors must not act on them while the new rows wait for their monitoring."""
    for table in (PREDICTIONS_TABLE, SCORING_TABLE, DRIFT_TABLE, METRICS_TABLE, DRIFT_BATCHES_TABLE):
        warehouse.delete_where(table, {"customer": customer, "batch_id": batch_id})
    labelling.forget_batch(warehouse, customer, batch_id)


def drift_by_batch(warehouse: Warehouse) -> pd.DataFrame:
    """Per customer, batch and feature whether it drifted (the prediction's own row left out), oldest first."""
    if not warehouse.table_exists(DRIFT_TABLE):
        return pd.DataFrame(columns=["customer", "batch_id", "column", "drifted"])
    frame = warehouse.query(
        f'select "customer", "batch_id", "column", "drifted" from {quote(DRIFT_TABLE)} '
        'where "column" <> ? order by "customer", "batch_id"',
        [drift.PREDICTION],
    )
    frame["drifted"] = frame["drifted"].astype(str).str.lower().isin(["true", "1"])
    return frame


def batch_summaries(warehouse: Warehouse, customer: str, batch_prefix: str = "") -> pd.DataFrame:
    """One row per measured batch of the customer (id, start, rows, drift share, drifted columns), by time."""
    if not warehouse.table_exists(DRIFT_BATCHES_TABLE):
        return pd.DataFrame(columns=["batch_id", "batch_start", "rows", "drift_share", "drifted_columns"])
    return warehouse.query(
        'select "batch_id", "batch_start", "rows", "drift_share", "drifted_columns" '
        f'from {quote(DRIFT_BATCHES_TABLE)} where "customer" = ? and "batch_id" like ? order by "batch_start"',
        [customer, batch_prefix + "%"],
    )


def batch_start(warehouse: Warehouse, spec: CustomerSpec, batch_id: str):
    """The earliest timestamp of a batch: batches are ordered by the time their rows describe."""
    frame = warehouse.query(
        f'select min({quote(spec.timestamp_column)}) as "first" from {quote(spec.landing_table)} '
        f"where {quote(BATCH_COLUMN)} = ?",
        [batch_id],
    )
    return frame["first"].iloc[0] if len(frame) else None


def metric_history(warehouse: Warehouse, customer: str, metric: str) -> pd.DataFrame:
    """The serving model's realized and estimated `metric` over the customer's batches, oldest first: the
    champion's, or the challenger's on batches scored before any champion."""
    if not warehouse.table_exists(METRICS_TABLE):
        return pd.DataFrame(columns=["batch_id", "kind", "value"])
    frame = warehouse.query(
        f'select "batch_id", "kind", "value", "model_role" from {quote(METRICS_TABLE)} '
        'where "customer" = ? and "metric" = ? and "model_role" in (?, ?) order by "batch_id"',
        [customer, metric, CHAMPION_ROLE, CHALLENGER_ROLE],
    )
    has_champion = set(frame.loc[frame["model_role"] == CHAMPION_ROLE, "batch_id"])
    keep = (frame["model_role"] == CHAMPION_ROLE) | ~frame["batch_id"].isin(has_champion)
    return frame.loc[keep, ["batch_id", "kind", "value"]].reset_index(drop=True)


LATEST_FIGURE_COLUMNS = ["customer", "metric", "drift_share", "dataset_drifted", "realized", "estimated"]


def latest_batch_figures(warehouse: Warehouse, specs: list[CustomerSpec]) -> pd.DataFrame:
    """Per customer with a measured batch, one row: the drift share and verdict of its latest batch (by the time
    its rows describe), and the serving model's primary metric, realized on the latest batch with at least the
    customer's `min_labelled_rows` labels and estimated (label-free) on the latest batch that has an estimate.
    A figure not measured yet is NaN."""
    if not specs or not warehouse.table_exists(DRIFT_BATCHES_TABLE):
        return pd.DataFrame(columns=LATEST_FIGURE_COLUMNS)
    batches = warehouse.query(
        f'select "customer", "batch_id", "drift_share", "dataset_drifted", "batch_start" from {quote(DRIFT_BATCHES_TABLE)}'
    )
    batches = batches.sort_values(["customer", "batch_start", "batch_id"], ascending=False, na_position="last")
    metrics = pd.DataFrame(columns=["customer", "batch_id", "model_role", "kind", "metric", "value", "labelled_rows"])
    primary = sorted({spec.primary_metric for spec in specs if spec.primary_metric})
    if primary and warehouse.table_exists(METRICS_TABLE):
        marks = ", ".join("?" for _ in primary)
        metrics = warehouse.query(
            f'select "customer", "batch_id", "model_role", "kind", "metric", "value", "labelled_rows" '
            f'from {quote(METRICS_TABLE)} where "model_role" in (?, ?) and "metric" in ({marks})',
            [CHAMPION_ROLE, CHALLENGER_ROLE, *primary],
        )
    rows = []
    for spec in specs:
        mine = batches[batches["customer"] == spec.customer]
        if mine.empty:
            continue
        latest = mine.iloc[0]
        order = {batch: rank for rank, batch in enumerate(mine["batch_id"])}
        values = metrics[(metrics["customer"] == spec.customer) & (metrics["metric"] == spec.primary_metric)]
        # The serving model's figure: the champion's, or the challenger's on a batch scored before any champion.
        has_champion = set(values.loc[values["model_role"] == CHAMPION_ROLE, "batch_id"])
        values = values[(values["model_role"] == CHAMPION_ROLE) | ~values["batch_id"].isin(has_champion)]
        values = values[values["batch_id"].isin(order)]
        values = values.assign(rank=values["batch_id"].map(order)).sort_values("rank")
        realized = values[
            (values["kind"] == "realized") & (values["labelled_rows"] >= spec.automation.min_labelled_rows)
        ]
        estimated = values[values["kind"] == "estimated"]
        rows.append(
            {
                "customer": spec.customer,
                "metric": spec.primary_metric,
                "drift_share": float(latest["drift_share"]),
                "dataset_drifted": str(latest["dataset_drifted"]).lower() in ("true", "1"),
                "realized": float(realized["value"].iloc[0]) if len(realized) else float("nan"),
                "estimated": float(estimated["value"].iloc[0]) if len(estimated) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=LATEST_FIGURE_COLUMNS)
