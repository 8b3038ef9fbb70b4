"""Online scoring: each customer's champion behind HTTP, a canary share for its challenger, Prometheus metrics.

`create_app` builds a Starlette app over a warehouse (the customers' specs, and the `online_predictions` table
every answer lands in) and the model registry. Models are loaded by alias (`models:/<name>@champion`, and the
`challenger` while it awaits promotion), cached, and swapped whole when an alias moves: a request reads one
immutable snapshot of a customer's models, never a half-loaded one. Scoring runs the same code path as batch
scoring (`monitoring.classified`, the model's own decision threshold).
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from retrain_platform import customers, deployment, labelling, ledger, monitoring
from retrain_platform.modelling import decision_threshold
from retrain_platform.registry import CHALLENGER, CHAMPION, ModelRegistry
from retrain_platform.settings import Home
from retrain_platform.spec import CustomerSpec, SpecError, class_value
from retrain_platform.warehouse import Warehouse, duckdb_connection_factory

log = logging.getLogger(__name__)

ONLINE_PREDICTIONS_TABLE = "online_predictions"
CHAMPION_ARM = monitoring.CHAMPION_ROLE
CHALLENGER_ARM = monitoring.CHALLENGER_ROLE
# The metric label of an error that came before any arm was chosen (a bad request, an unknown customer).
NO_ARM = "none"
# Unknown customers share one metric label: a label per path anyone can type would grow without bound.
UNKNOWN_CUSTOMER_LABEL = "unknown"
MAX_ROWS_PER_REQUEST = 10_000
ALIAS_CHECK_SECONDS = 1.0
SPEC_CHECK_SECONDS = 30.0
MAX_REMEMBERED_UNKNOWN = 10_000
FLUSH_SECONDS = 1.0
# Rows kept for the warehouse while it refuses writes (another process holds DuckDB's lock); beyond, the oldest go.
MAX_BUFFERED_ROWS = 200_000
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# How old the platform's own gauges (drift, realized and estimated metric) may be when /metrics is scraped: they
# are read from the warehouse, which monitoring updates per batch, so a scrape every second need not read it.
PLATFORM_GAUGE_SECONDS = 5.0


class ServingError(Exception):
    """A request that cannot be answered; `status` is its HTTP status, the message says why in one line."""

    status = 500


class UnknownCustomer(ServingError):
    status = 404


class NoChampion(ServingError):
    status = 409


class InvalidRows(ServingError):
    status = 422


@dataclass
class _Job:
    frame: pd.DataFrame
    done: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    outcome: tuple | None = None
    error: BaseException | None = None


class ModelBatcher:
    """Scores the rows of concurrent requests to one model in one call.

    A single row costs a scikit-learn pipeline about as much as a hundred (its per-call checks dominate), so
    rows that arrive while the model is busy wait and are scored together by the next call. No request waits
    for a timer: the first request in scores at once, and only requests that would have queued anyway batch."""

    def __init__(self, score: Callable[[pd.DataFrame], tuple]):
        self._score = score
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._busy = False

    def __call__(self, frame: pd.DataFrame) -> tuple:
        """The model's outputs for `frame`, each a sequence with one item per row."""
        job = _Job(frame)
        with self._lock:
            self._queue.append(job)
            lead = not self._busy
            self._busy = True
        if not lead:
            job.done.wait()  # set when the job is scored, or when it is its turn to lead
        if not job.finished:
            with self._lock:
                batch, self._queue = self._queue, []
            self._run(batch)
            with self._lock:
                if self._queue:
                    self._queue[0].done.set()
                else:
                    self._busy = False
        if job.error is not None:
            raise job.error
        return job.outcome

    def _run(self, batch: list[_Job]) -> None:
        try:
            frame = batch[0].frame if len(batch) == 1 else pd.concat([job.frame for job in batch], ignore_index=True)
            outputs = self._score(frame)
            start = 0
            for job in batch:
                end = start + len(job.frame)
                job.outcome = tuple(output[start:end] for output in outputs)
                start = end
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
            else:  # one request's rows broke the call: score each alone, so only that request fails
                for job in batch:
                    self._run([job])
                return
        for job in batch:
            job.finished = True
            job.done.set()


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version, the decision threshold it was trained with (None: the most probable class), and
    the batcher its scoring goes through."""

    version: str
    pipeline: Any
    threshold: float | None
    score: ModelBatcher

    @classmethod
    def load(cls, version: str, pipeline: Any, task: str) -> ServedModel:
        if task == "regression":
            batcher = ModelBatcher(lambda frame: monitoring.prediction_scores(pipeline, frame, task)[:1])
        else:
            batcher = ModelBatcher(lambda frame: monitoring.classified(pipeline, frame))
        return cls(version=version, pipeline=pipeline, threshold=decision_threshold(pipeline), score=batcher)


@dataclass(frozen=True)
class CustomerModels:
    """What answers a customer's requests, as one immutable snapshot: replaced whole, never changed in place."""

    spec: CustomerSpec
    champion: ServedModel | None
    challenger: ServedModel | None
    refusal: str | None
    checked_at: float
    spec_loaded_at: float


class ModelStore:
    """Each customer's champion (and canary challenger), loaded on first use and kept current.

    A request that finds its customer's snapshot older than `alias_check_seconds` asks the background worker
    to check the aliases (one registry read each); a moved alias is loaded there and then swapped in, so no
    request waits for a model load except the customer's very first one. The spec, which holds the canary
    share, is read again every `spec_check_seconds`."""

    def __init__(
        self,
        warehouse: Warehouse,
        registry: ModelRegistry,
        *,
        alias_check_seconds: float = ALIAS_CHECK_SECONDS,
        spec_check_seconds: float = SPEC_CHECK_SECONDS,
        on_swap: Callable[[str, CustomerModels], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.warehouse = warehouse
        self.registry = registry
        self.alias_check_seconds = alias_check_seconds
        self.spec_check_seconds = spec_check_seconds
        self._on_swap = on_swap
        self._clock = clock
        self._entries: dict[str, CustomerModels] = {}
        self._unknown: dict[str, tuple[float, str]] = {}
        # First loads take turns: they happen once per customer, and one lock cannot grow with the names asked.
        self._first_load = threading.Lock()
        self._guard = threading.Lock()
        self._refreshing: set[str] = set()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-refresh")

    def get(self, customer: str) -> CustomerModels:
        """The customer's current snapshot; raises `UnknownCustomer` for a customer without a spec."""
        entry = self._entries.get(customer)
        if entry is None:
            return self._load_first(customer)
        if self._clock() - entry.checked_at >= self.alias_check_seconds:
            self._schedule_refresh(customer)
        return entry

    def refresh(self, customer: str) -> CustomerModels:
        """Check the customer's aliases (and, when due, its spec) now, swap in what moved, return the snapshot."""
        previous = self._entries.get(customer)
        try:
            entry = self._resolve(customer, previous)
        except UnknownCustomer:
            self._entries.pop(customer, None)
            raise
        except Exception as error:  # the registry or warehouse is busy or down: keep serving what was loaded
            if previous is None:
                raise
            log.warning("could not refresh the models of %s, serving what is loaded: %s", customer, error)
            entry = replace(previous, checked_at=self._clock())
        self._entries[customer] = entry
        if self._on_swap is not None and previous is not entry:
            self._on_swap(customer, entry)
        return entry

    def loaded(self) -> dict[str, CustomerModels]:
        """A copy of every snapshot held, by customer."""
        return dict(self._entries)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _load_first(self, customer: str) -> CustomerModels:
        unknown = self._unknown.get(customer)
        if unknown is not None and self._clock() - unknown[0] < self.alias_check_seconds:
            raise UnknownCustomer(unknown[1])
        with self._first_load:
            entry = self._entries.get(customer)
            if entry is not None:
                return entry
            try:
                return self.refresh(customer)
            except UnknownCustomer as error:
                if len(self._unknown) >= MAX_REMEMBERED_UNKNOWN:
                    self._unknown.clear()
                self._unknown[customer] = (self._clock(), str(error))
                raise

    def _schedule_refresh(self, customer: str) -> None:
        with self._guard:
            if customer in self._refreshing:
                return
            self._refreshing.add(customer)

        def run() -> None:
            try:
                self.refresh(customer)
            except Exception as error:
                log.warning("could not refresh the models of %s: %s", customer, error)
            finally:
                with self._guard:
                    self._refreshing.discard(customer)

        try:
            self._worker.submit(run)
        except RuntimeError:  # shutting down
            with self._guard:
                self._refreshing.discard(customer)

    def _resolve(self, customer: str, previous: CustomerModels | None) -> CustomerModels:
        now = self._clock()
        if previous is None or now - previous.spec_loaded_at >= self.spec_check_seconds:
            spec = self._load_spec(customer, previous)
            spec_loaded_at = now
        else:
            spec, spec_loaded_at = previous.spec, previous.spec_loaded_at
        name = spec.model_name
        champion_version = self.registry.alias_version(name, CHAMPION)
        challenger_version = None
        if champion_version is not None and spec.canary_fraction > 0:
            challenger_version = self.registry.alias_version(name, CHALLENGER)
            if challenger_version == champion_version:
                challenger_version = None
        champion = self._model(name, champion_version, spec.task, previous)
        challenger = self._model(name, challenger_version, spec.task, previous)
        unchanged = (
            previous is not None
            and previous.spec is spec
            and previous.champion is champion
            and previous.challenger is challenger
        )
        if unchanged:
            return replace(previous, checked_at=now)
        refusal = None if champion is not None else no_champion_reason(self.warehouse, self.registry, spec)
        return CustomerModels(spec, champion, challenger, refusal, checked_at=now, spec_loaded_at=spec_loaded_at)

    def _load_spec(self, customer: str, previous: CustomerModels | None) -> CustomerSpec:
        try:
            spec = customers.load_spec(self.warehouse, customer)
        except (customers.UnknownCustomerError, SpecError) as error:
            raise UnknownCustomer(str(error).splitlines()[0]) from None
        except Exception:
            if previous is None:
                raise
            log.warning("could not read the spec of %s; keeping the one loaded", customer)
            return previous.spec
        if previous is not None and previous.spec == spec:
            return previous.spec
        return spec

    def _model(self, name: str, version: str | None, task: str, previous: CustomerModels | None) -> ServedModel | None:
        if version is None:
            return None
        for held in (previous.champion, previous.challenger) if previous is not None else ():
            if held is not None and held.version == version:
                return held
        return ServedModel.load(version, self.registry.load(name, version), task)


def no_champion_reason(warehouse: Warehouse, registry: ModelRegistry, spec: CustomerSpec) -> str:
    """Why a customer has no champion, in one line that says what to do."""
    customer = spec.customer
    versions = registry.versions(spec.model_name) if _registered(registry, spec.model_name) else []
    if not versions:
        return f"{customer} has no champion: no model has been trained yet (retrain-platform train {customer})"
    pending = deployment.pending_versions(registry, spec)
    if pending:
        return (
            f"{customer} has no champion: version {pending[-1]} awaits approval "
            f"(retrain-platform approve {customer})"
        )
    latest = versions[-1]
    verdict = ""
    if warehouse.table_exists(ledger.LEDGER_TABLE):
        history = ledger.history(warehouse, customer)
        if len(history):
            verdict = f" (verdict {history['verdict'].iloc[-1]})"
    return f"{customer} has no champion: its latest model, version {latest}, was not promoted{verdict}"


def _registered(registry: ModelRegistry, model_name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        registry.client.get_registered_model(model_name)
    except MlflowException:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Requests: validation against the spec, routing, scoring


def parse_rows(spec: CustomerSpec, body: Any) -> tuple[pd.DataFrame, list[str]]:
    """The request's rows as a frame of the spec's features, and each row's id (the spec's id column, or a new
    one when the customer has none). Raises `InvalidRows` naming the row and column that break a rule."""
    if not isinstance(body, dict) or "rows" not in body:
        raise InvalidRows('the body must be a JSON object with "rows": a list of objects, one per row')
    rows = body["rows"]
    if not isinstance(rows, list) or not rows:
        raise InvalidRows('"rows" must be a non-empty list of objects, one per row')
    if len(rows) > MAX_ROWS_PER_REQUEST:
        raise InvalidRows(f'"rows" holds {len(rows)} rows; at most {MAX_ROWS_PER_REQUEST} per request')
    numeric = set(spec.numeric_features)
    columns: dict[str, list] = {name: [] for name in spec.feature_names}
    ids: list[str] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidRows(f"row {index}: must be a JSON object of column: value")
        for name, values in columns.items():
            if name not in row:
                raise InvalidRows(f"row {index}: feature {name!r} is missing")
            values.append(_feature_value(row[name], name, index, name in numeric))
        ids.append(_row_id(spec, row, index))
    frame = pd.DataFrame(
        {name: np.asarray(values, dtype=float) if name in numeric else pd.Series(values, dtype=object)
         for name, values in columns.items()}
    )  # fmt: skip
    return frame, ids


def _feature_value(value: Any, name: str, index: int, numeric: bool) -> Any:
    if value is None:
        return math.nan if numeric else None  # missing: the model imputes it, as in training
    if numeric:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRows(f"row {index}: feature {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidRows(f"row {index}: feature {name!r} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRows(f"row {index}: feature {name!r} must be a text or a finite number, got {value!r}")
    if not isinstance(value, (str, int, float)):
        raise InvalidRows(f"row {index}: feature {name!r} is categorical: a text or a number, got {value!r}")
    return value


def _row_id(spec: CustomerSpec, row: dict, index: int) -> str:
    if spec.id_column is None:
        return uuid.uuid4().hex
    value = row.get(spec.id_column)
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InvalidRows(
            f"row {index}: id column {spec.id_column!r} is missing or not a text or an integer "
            "(late labels and the canary split need it)"
        )
    return str(value)


def canary_position(customer: str, row_id: str) -> float:
    """Where a row id falls in [0, 1), the same in every process and run: rows below the customer's
    `canary_fraction` go to the challenger, so one id always meets the same arm."""
    digest = hashlib.blake2b(f"{customer}\x00{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def route(models: CustomerModels, row_ids: list[str]) -> np.ndarray:
    """Per row, whether the challenger answers it."""
    fraction = models.spec.canary_fraction
    if models.challenger is None or fraction <= 0:
        return np.zeros(len(row_ids), dtype=bool)
    customer = models.spec.customer
    return np.fromiter((canary_position(customer, row_id) < fraction for row_id in row_ids), bool, len(row_ids))


@dataclass
class ArmAnswer:
    """What one arm said about its rows: the position of each row in the request and its answer."""

    arm: str
    model: ServedModel
    positions: np.ndarray
    predictions: list
    probabilities: list[dict[str, float]] | None
    scores: np.ndarray


def score_arm(arm: str, model: ServedModel, frame: pd.DataFrame, positions: np.ndarray, task: str) -> ArmAnswer:
    """Score the rows at `positions` with one model, at the decision threshold it was trained with."""
    rows = frame if len(positions) == len(frame) else frame.iloc[positions].reset_index(drop=True)
    if task == "regression":
        (values,) = model.score(rows)
        return ArmAnswer(arm, model, positions, [float(v) for v in values], None, values)
    predicted, proba = model.score(rows)
    classes = [str(class_value(c)) for c in model.pipeline.classes_]
    probabilities = [dict(zip(classes, map(float, row))) for row in proba]
    scores = proba[:, 1] if task == "binary" else proba.max(axis=1)
    return ArmAnswer(arm, model, positions, [class_value(p) for p in predicted], probabilities, scores)


# ---------------------------------------------------------------------------------------------------
# The warehouse log of online predictions


class PredictionLog:
    """Online predictions, buffered in memory and written to `online_predictions` by a background thread every
    `flush_seconds`: a request never waits for the warehouse. A write that fails (DuckDB's one writer is
    another process) is retried at the next flush."""

    columns = ("customer", "row_id", "arm", "model_version", monitoring.PREDICTION, monitoring.SCORE, "predicted_at")

    def __init__(self, warehouse: Warehouse, flush_seconds: float = FLUSH_SECONDS, max_buffered: int = MAX_BUFFERED_ROWS):
        self.warehouse = warehouse
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.dropped = 0
        self.written = 0
        self._pending: list[tuple] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, records: list[tuple]) -> None:
        """Queue records in the order of `columns`."""
        with self._lock:
            self._pending.extend(records)
            overflow = len(self._pending) - self.max_buffered
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="online-predictions", daemon=True)
            self._thread.start()

    def flush(self) -> int:
        """Write what is queued now; returns the rows written (0 when the write failed and they wait)."""
        with self._flushing:
            with self._lock:
                records, self._pending = self._pending, []
            if not records:
                return 0
            frame = pd.DataFrame.from_records(records, columns=list(self.columns))
            frame[monitoring.SCORE] = frame[monitoring.SCORE].astype(float)
            frame["predicted_at"] = pd.to_datetime(frame["predicted_at"])
            try:
                self.warehouse.write(ONLINE_PREDICTIONS_TABLE, frame)
            except Exception as error:
                log.warning("online predictions not written yet (%d rows wait): %s", len(records), error)
                self.add(records)
                return 0
            self.written += len(records)
            return len(records)

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()


def online_predictions(warehouse: Warehouse, customer: str) -> pd.DataFrame:
    """The customer's logged online predictions, oldest first."""
    if not warehouse.table_exists(ONLINE_PREDICTIONS_TABLE):
        return pd.DataFrame(columns=list(PredictionLog.columns))
    return warehouse.query(
        f'select * from "{ONLINE_PREDICTIONS_TABLE}" where "customer" = ? order by "predicted_at"', [customer]
    )


# ---------------------------------------------------------------------------------------------------
# Prometheus metrics


class ServingMetrics:
    """The server's Prometheus metrics, in a registry of their own (two apps in one process never collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "retrain_serving_requests", "Prediction requests answered, per customer and arm (a request the "
            "canary split counts under both arms)", ["customer", "arm"], registry=self.registry,
        )  # fmt: skip
        self.rows = Counter(
            "retrain_serving_rows", "Rows scored, per customer and arm", ["customer", "arm"], registry=self.registry
        )
        self.errors = Counter(
            "retrain_serving_errors", "Prediction requests refused or failed, per customer, arm and HTTP status",
            ["customer", "arm", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "retrain_serving_latency_seconds", "Time to answer a prediction request, per customer and arm",
            ["customer", "arm"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.version = Gauge(
            "retrain_serving_model_version", "The model version that serves each arm (absent: the arm is idle)",
            ["customer", "arm"], registry=self.registry,
        )  # fmt: skip
        self.log_dropped = Gauge(
            "retrain_serving_logged_rows_dropped", "Online predictions dropped before the warehouse took them",
            registry=self.registry,
        )  # fmt: skip

    def served(self, customer: str, models: CustomerModels) -> None:
        """Set the served-version gauges from a snapshot just swapped in."""
        for arm, model in ((CHAMPION_ARM, models.champion), (CHALLENGER_ARM, models.challenger)):
            if model is None:
                try:
                    self.version.remove(customer, arm)
                except KeyError:
                    pass
            else:
                self.version.labels(customer, arm).set(float(model.version))

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class PlatformGauges:
    """The platform's own figures per customer, as a Prometheus collector: the latest batch's drift share and
    verdict, the serving model's latest realized and estimated primary metric (`monitoring.latest_batch_figures`),
    and the rows waiting in the labelling queue.

    They are read from the warehouse the monitoring writes, at most every `refresh_seconds` (`refresh_if_due`,
    called before a scrape), never per request; a read that fails (DuckDB's one writer is another process) keeps
    the figures of the last read, whose time `retrain_platform_gauges_read_timestamp_seconds` tells."""

    def __init__(self, warehouse: Warehouse, refresh_seconds: float = PLATFORM_GAUGE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.warehouse = warehouse
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._read_at: float | None = None
        self._figures = pd.DataFrame(columns=monitoring.LATEST_FIGURE_COLUMNS)
        self._queued: dict[str, int] = {}

    def refresh_if_due(self) -> None:
        """Read the figures again when the last read is `refresh_seconds` old (one reader at a time)."""
        with self._lock:
            now = self._clock()
            if self._checked_at is not None and now - self._checked_at < self.refresh_seconds:
                return
            self._checked_at = now
            try:
                figures = monitoring.latest_batch_figures(self.warehouse, customers.list_specs(self.warehouse))
                queued = labelling.open_counts(self.warehouse)
            except Exception as error:
                log.warning("platform gauges not refreshed, keeping the last read: %s", error)
                return
            self._figures, self._queued, self._read_at = figures, queued, time.time()

    def describe(self) -> list:
        return list(self._families())

    def collect(self) -> list:
        figures, queued, read_at = self._figures, self._queued, self._read_at
        drift, drifted, metric, queue, read = self._families()
        for row in figures.itertuples():
            drift.add_metric([row.customer], row.drift_share)
            drifted.add_metric([row.customer], float(row.dataset_drifted))
            for kind in ("realized", "estimated"):
                value = getattr(row, kind)
                if not math.isnan(value):
                    metric.add_metric([row.customer, row.metric, kind], value)
        for customer, rows in sorted(queued.items()):
            queue.add_metric([customer], rows)
        if read_at is not None:
            read.add_metric([], read_at)
        return [drift, drifted, metric, queue, read]

    @staticmethod
    def _families() -> tuple:
        from prometheus_client.core import GaugeMetricFamily

        return (
            GaugeMetricFamily(
                "retrain_batch_drift_share", "Share of features drifted on the customer's latest measured batch",
                labels=["customer"],
            ),
            GaugeMetricFamily(
                "retrain_batch_dataset_drifted", "1 when the customer's latest measured batch drifted as a whole",
                labels=["customer"],
            ),
            GaugeMetricFamily(
                "retrain_batch_primary_metric", "The serving model's primary metric on the latest batch measured for "
                "it: realized (on enough labels) or estimated without labels", labels=["customer", "metric", "kind"],
            ),
            GaugeMetricFamily(
                "retrain_labelling_queue_open_rows", "Rows queued for experts to label that have no label yet",
                labels=["customer"],
            ),
            GaugeMetricFamily(
                "retrain_platform_gauges_read_timestamp_seconds", "Unix time the platform gauges were last read from "
                "the warehouse",
            ),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The service and its HTTP app


@dataclass
class OnlineScoring:
    """Scores requests for any customer: validation, canary routing, scoring, logging and metrics."""

    store: ModelStore
    predictions: PredictionLog
    metrics: ServingMetrics
    started: float = field(default_factory=time.monotonic)
    gauges: PlatformGauges | None = None

    def predict(self, customer: str, body: Any) -> dict:
        """The answer to `POST /customers/{customer}/predict`; raises `ServingError` with its HTTP status."""
        started = time.perf_counter()
        label, current_arm = UNKNOWN_CUSTOMER_LABEL, NO_ARM
        try:
            models = self.store.get(customer)
            label = customer
            if models.champion is None:
                raise NoChampion(models.refusal or f"{customer} has no champion")
            spec = models.spec
            frame, row_ids = parse_rows(spec, body)
            to_challenger = route(models, row_ids)
            answers = []
            for arm, model, mask in (
                (CHAMPION_ARM, models.champion, ~to_challenger),
                (CHALLENGER_ARM, models.challenger, to_challenger),
            ):
                if mask.any():
                    current_arm = arm
                    answers.append(score_arm(arm, model, frame, np.flatnonzero(mask), spec.task))
        except ServingError as error:
            self.metrics.errors.labels(label, current_arm, str(error.status)).inc()
            raise
        except Exception:
            self.metrics.errors.labels(label, current_arm, "500").inc()
            raise
        answer = self._answer(customer, row_ids, answers)
        elapsed = time.perf_counter() - started
        for arm_answer in answers:
            self.metrics.requests.labels(customer, arm_answer.arm).inc()
            self.metrics.rows.labels(customer, arm_answer.arm).inc(len(arm_answer.positions))
            self.metrics.latency.labels(customer, arm_answer.arm).observe(elapsed)
        return answer

    def _answer(self, customer: str, row_ids: list[str], answers: list[ArmAnswer]) -> dict:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows: list[dict | None] = [None] * len(row_ids)
        records = []
        for answer in answers:
            for i, position in enumerate(answer.positions):
                row = {
                    "id": row_ids[position],
                    "prediction": answer.predictions[i],
                    "arm": answer.arm,
                    "model_version": answer.model.version,
                }
                if answer.probabilities is not None:
                    row["probabilities"] = answer.probabilities[i]
                rows[position] = row
                records.append(
                    (customer, row_ids[position], answer.arm, answer.model.version, str(answer.predictions[i]),
                     float(answer.scores[i]), now)
                )  # fmt: skip
        self.predictions.add(records)
        self.metrics.log_dropped.set(self.predictions.dropped)
        models = {
            answer.arm: {"model_version": answer.model.version, "decision_threshold": answer.model.threshold}
            for answer in answers
        }
        return {"customer": customer, "predictions": rows, "models": models}

    def exposition(self) -> tuple[bytes, str]:
        """What `GET /metrics` answers: the serving metrics and the platform gauges, read again when due."""
        if self.gauges is not None:
            self.gauges.refresh_if_due()
        return self.metrics.exposition()

    def health(self) -> dict:
        """What `GET /health` says: the server is up, and which customers it holds models for."""
        loaded = self.store.loaded()
        return {
            "status": "ok",
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "customers": {
                customer: {
                    CHAMPION_ARM: models.champion.version if models.champion else None,
                    CHALLENGER_ARM: models.challenger.version if models.challenger else None,
                }
                for customer, models in sorted(loaded.items())
            },
        }

    def close(self) -> None:
        self.store.close()
        self.predictions.close()


def create_service(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    alias_check_seconds: float = ALIAS_CHECK_SECONDS,
    spec_check_seconds: float = SPEC_CHECK_SECONDS,
    flush_seconds: float = FLUSH_SECONDS,
    gauge_seconds: float = PLATFORM_GAUGE_SECONDS,
) -> OnlineScoring:
    """The scoring service over a warehouse and a registry, without HTTP."""
    metrics = ServingMetrics()
    gauges = PlatformGauges(warehouse, gauge_seconds)
    metrics.registry.register(gauges)
    store = ModelStore(
        warehouse,
        registry,
        alias_check_seconds=alias_check_seconds,
        spec_check_seconds=spec_check_seconds,
        on_swap=metrics.served,
    )
    return OnlineScoring(store, PredictionLog(warehouse, flush_seconds), metrics, gauges=gauges)


def create_app(service: OnlineScoring):
    """The Starlette app: `POST /customers/{customer}/predict`, `GET /health`, `GET /metrics`. Its lifespan
    starts the prediction log's writer and, at shutdown, writes what is left."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        customer = request.path_params["customer"]
        try:
            body = await request.json()
        except ValueError:
            service.metrics.errors.labels(UNKNOWN_CUSTOMER_LABEL, NO_ARM, "400").inc()
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        try:
            # In a worker thread: scoring holds the CPU, and a customer's first request loads its model.
            answer = await run_in_threadpool(service.predict, customer, body)
        except ServingError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except Exception as error:
            log.exception("scoring for %s failed", customer)
            return JSONResponse({"error": f"scoring failed: {type(error).__name__}: {error}"}, status_code=500)
        return JSONResponse(answer)

    async def health(request: Request) -> Response:
        return JSONResponse(service.health())

    async def metrics(request: Request) -> Response:
        # In a worker thread: the platform gauges, when due, are read from the warehouse.
        body, content_type = await run_in_threadpool(service.exposition)
        return Response(body, media_type=content_type)

    @asynccontextmanager
    async def lifespan(app):
        service.predictions.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    return Starlette(
        routes=[
            Route("/customers/{customer}/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def local_service(home: Home, **options) -> OnlineScoring:
    """The service over a local home: its DuckDB warehouse and sqlite MLflow registry."""
    if not home.warehouse_path.exists():
        raise ServingError(f"no platform home at {home.root}: nothing to serve")
    warehouse = Warehouse(duckdb_connection_factory(str(home.warehouse_path)), "duckdb")
    registry = ModelRegistry(home.tracking_uri, artifact_root=str(home.artifacts_dir))
    return create_service(warehouse, registry, **options)


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on, before uvicorn logs its own failure."""
    if not 0 <= port <= 65535:
        raise ServingError(f"--port {port}: a port is a number from 0 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ServingError(f"--host {host}: not an address this machine can listen on ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise ServingError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --port") from None


def make_server(app, host: str, port: int):
    """A uvicorn server for `app`, quiet (warnings only, no access log)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


def serve(home: Home, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the home's customers until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    check_port(host, port)
    server = make_server(create_app(local_service(home)), host, port)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal it shut down on; the shutdown is done
        pass
