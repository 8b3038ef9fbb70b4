"""Onboarding a customer from a file of history, and offboarding it; nothing here knows about Dagster.

`prepare` reads what the user said about a dataset, infers the rest, and refuses with one clear sentence
anything a first training would trip over later. `load_history` writes the history into the warehouse,
cut into time periods (`history-2024-03`, ...) that the onboarding backfill scores and measures as if they
had arrived one by one. The `onboarding` table records where each customer's onboarding stands; the
Dagster layer moves it forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from retrain_platform import customers as customer_store
from retrain_platform import quality
from retrain_platform.drift import PREDICTION
from retrain_platform.ingest import (
    BATCH_COLUMN,
    HISTORY_PREFIX,
    PLATFORM_COLUMNS,
    IngestError,
    check_column_names,
    conform,
)
from retrain_platform.spec import (
    APPROVE_MODE,
    CustomerSpec,
    Mode,
    SpecError,
    Task,
    complete_spec,
    infer_kind,
    parse_spec,
    plain,
    validate_customer_id,
)
from retrain_platform.warehouse import Warehouse, quote

ONBOARDING_TABLE = "onboarding"
PERIODS = {"day": "D", "week": "W", "month": "M", "quarter": "Q"}
# "auto" picks the finest period that cuts the history into at most this many batches.
MAX_AUTO_BATCHES = 24
TIMESTAMP_NAMES = ("timestamp", "event_time", "ts", "date", "datetime", "time", "created_at", "event_date")

REQUESTED = "requested"
TRAINING = "training"
SCORING_HISTORY = "scoring history"
READY = "ready"
FAILED = "failed"
OFFBOARDED = "offboarded"
IN_PROGRESS = (REQUESTED, TRAINING, SCORING_HISTORY)


class OnboardingError(ValueError):
    """The history or the request cannot be onboarded; the message says what to change."""


@dataclass
class OnboardingRequest:
    """What the user told `retrain-platform onboard`; everything left as None is inferred from the data."""

    customer: str
    label: str
    timestamp: str | None = None
    id_column: str | None = None
    features: list[str] | None = None
    categorical: list[str] = field(default_factory=list)
    task: Task | None = None
    mode: Mode = APPROVE_MODE
    batch_period: str = "auto"
    reuse: bool = False


@dataclass
class PreparedHistory:
    """A validated spec and the history conformed to it, with a batch id per row."""

    spec: CustomerSpec
    history: pd.DataFrame
    period: str

    @property
    def batch_ids(self) -> list[str]:
        return sorted(self.history[BATCH_COLUMN].unique())

    @property
    def labelled_rows(self) -> int:
        return int(self.history[self.spec.label_column].notna().sum())


@dataclass
class Registration:
    """An onboarding request written down: the prepared history, when, and the earlier landing table kept."""

    prepared: PreparedHistory
    requested_at: datetime
    archived_table: str | None


def landing_table_for(customer: str) -> str:
    return "landing_" + customer.replace("-", "_")


def prepare(frame: pd.DataFrame, request: OnboardingRequest) -> PreparedHistory:
    """Validate the history and build the customer's spec; raise `OnboardingError` naming what is wrong."""
    validate_customer_id(request.customer)
    if frame.empty:
        raise OnboardingError("the file has no rows")
    try:
        check_column_names(frame.columns)
    except IngestError as error:
        raise OnboardingError(str(error)) from None
    columns = list(frame.columns)
    if request.label not in frame.columns:
        raise OnboardingError(f"label column {request.label!r} is not in the file (columns: {columns})")
    if frame[request.label].isna().all():
        raise OnboardingError(f"label column {request.label!r} has no values: onboarding trains on labelled history")
    timestamp = request.timestamp or infer_timestamp_column(frame, exclude={request.label, request.id_column})
    for option, column in (("--timestamp", timestamp), ("--id", request.id_column)):
        if column is not None and column not in frame.columns:
            raise OnboardingError(f"{option}: column {column!r} is not in the file (columns: {columns})")
    reserved = {timestamp, request.label, request.id_column} - {None}
    names = request.features if request.features else [c for c in columns if c not in reserved]
    unknown = [name for name in [*names, *request.categorical] if name not in frame.columns]
    if unknown:
        raise OnboardingError(f"--features/--categorical: column(s) {unknown} are not in the file (columns: {columns})")
    clash = reserved.intersection(names)
    if clash:
        raise OnboardingError(f"--features: {sorted(clash)} is also the timestamp, label or id column")
    _refuse_platform_names([*sorted(reserved), *names])
    _refuse_uninformative(frame, names)
    features = [
        {"name": name, "kind": "categorical" if name in request.categorical else infer_kind(frame[name])}
        for name in names
    ]
    try:
        spec = parse_spec(
            {
                "customer": request.customer,
                "landing_table": landing_table_for(request.customer),
                "timestamp_column": timestamp,
                "label_column": request.label,
                "id_column": request.id_column,
                "features": features,
                "task": request.task,
                "mode": request.mode,
            }
        )
        spec = complete_spec(spec, frame)
        history = conform(frame, spec)
    except (SpecError, IngestError) as error:
        raise OnboardingError(str(error)) from None
    _refuse_infinite(history, spec)
    _refuse_future(history, spec, pd.Timestamp(utc_now()))
    labelled = int(history[spec.label_column].notna().sum())
    if labelled < spec.min_training_rows:
        raise OnboardingError(
            f"label column {spec.label_column!r}: only {labelled:,} labelled row(s); at least "
            f"{spec.min_training_rows:,} are needed to train and hold out"
        )
    kept = [c for c in [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column] if c]
    period = choose_period(history[spec.timestamp_column], request.batch_period)
    history = history[kept].assign(**{BATCH_COLUMN: history_batch_ids(history[spec.timestamp_column], period)})
    return PreparedHistory(spec=spec, history=history.reset_index(drop=True), period=period)


def infer_timestamp_column(frame: pd.DataFrame, exclude: set) -> str:
    """The datetime-typed column, else the one with a usual timestamp name; refuse to guess between several."""
    candidates = [c for c in frame.columns if c not in exclude]
    typed = [c for c in candidates if pd.api.types.is_datetime64_any_dtype(frame[c])]
    if not typed:
        # A CSV has no datetime type: text columns whose values all parse as dates count as typed.
        typed = [c for c in candidates if frame[c].dtype == object and _parses_as_dates(frame[c])]
    if len(typed) == 1:
        return typed[0]
    named = [c for c in candidates if str(c).lower() in TIMESTAMP_NAMES]
    if len(typed) > 1 or len(named) > 1:
        raise OnboardingError(f"several columns could be the timestamp ({typed or named}): pass --timestamp COL")
    if named:
        return named[0]
    raise OnboardingError(
        "no timestamp column found (no datetime column, none named like 'timestamp'): pass --timestamp COL"
    )


def _parses_as_dates(values: pd.Series, sample: int = 200) -> bool:
    head = values.dropna().astype(str).head(sample)
    if head.empty or head.str.fullmatch(r"[-+]?\d+(\.\d+)?").all():
        return False
    parsed = pd.to_datetime(head, errors="coerce", format="mixed", utc=True)
    # Mostly dates is a timestamp column with a few bad values, which the validation then names.
    return bool(parsed.notna().mean() >= 0.9)


def _refuse_platform_names(names: list[str]) -> None:
    """A column named like one the platform adds to the rows (in any case) would be overwritten by it."""
    platform = {**PLATFORM_COLUMNS, PREDICTION: "the model's output while drift is measured"}
    folded = {own.casefold(): own for own in platform}
    for name in names:
        own = folded.get(str(name).casefold())
        if own is not None:
            raise OnboardingError(
                f"column {name!r} collides with the platform's own column {own!r} ({platform[own]}): "
                "rename it in the file"
            )


def _refuse_infinite(history: pd.DataFrame, spec: CustomerSpec) -> None:
    """An infinity is a number to pandas, but no scaler or model takes one: the first training would fail."""
    numeric = spec.numeric_features + ([spec.label_column] if spec.task == "regression" else [])
    for name in numeric:
        values = pd.to_numeric(history[name], errors="coerce")
        infinite = values.isin([np.inf, -np.inf])
        if infinite.any():
            raise OnboardingError(
                f"column {name!r}: {int(infinite.sum()):,} value(s) are infinite (rule: {quality.FINITE_RULE}), "
                f"e.g. {float(values[infinite].iloc[0])}: correct or remove those rows"
            )


def _refuse_future(history: pd.DataFrame, spec: CustomerSpec, now: pd.Timestamp) -> None:
    """A row dated after now would end every training window in the future and fail the training's checks."""
    timestamps = history[spec.timestamp_column]
    future = timestamps > now
    if future.any():
        raise OnboardingError(
            f"column {spec.timestamp_column!r}: {int(future.sum()):,} timestamp(s) are in the future (rule: "
            f"{quality.NOT_IN_FUTURE_RULE}), e.g. {timestamps[future].iloc[0]} after {now:%Y-%m-%d %H:%M} UTC: "
            "correct or remove those rows"
        )


def _refuse_uninformative(frame: pd.DataFrame, names: list[str]) -> None:
    problems = []
    for name in names:
        values = frame[name]
        if values.isna().all():
            problems.append(f"{name!r} (all null)")
        elif values.nunique(dropna=True) < 2:
            problems.append(f"{name!r} (constant: {plain(values.dropna().iloc[0])!r})")
    if problems:
        raise OnboardingError(
            f"column(s) {', '.join(problems)} carry no information for a model: "
            "drop them from the file or list the features to use with --features"
        )


def choose_period(timestamps: pd.Series, requested: str = "auto") -> str:
    """The batch period of the history: as asked, or the finest one giving at most `MAX_AUTO_BATCHES` batches."""
    if requested != "auto":
        if requested not in PERIODS:
            raise OnboardingError(f"--batch-period: {requested!r} is not one of auto, {', '.join(PERIODS)}")
        return requested
    for name in ("week", "month", "quarter"):
        if timestamps.dt.to_period(PERIODS[name]).nunique() <= MAX_AUTO_BATCHES:
            return name
    return "quarter"


def history_batch_ids(timestamps: pd.Series, period: str) -> pd.Series:
    """`history-2024-03` (month), `history-2024-w11` (week), `history-2024-03-05` (day), `history-2024-q1`."""
    if period == "week":
        calendar = timestamps.dt.isocalendar()
        labels = calendar["year"].astype(str) + "-w" + calendar["week"].astype(str).str.zfill(2)
    elif period == "quarter":
        labels = timestamps.dt.year.astype(str) + "-q" + timestamps.dt.quarter.astype(str)
    else:
        labels = timestamps.dt.to_period(PERIODS[period]).astype(str)
    return HISTORY_PREFIX + labels.str.lower()


IN_TRAINING, STRADDLES_HOLDOUT, IN_HOLDOUT = "in training", "train + holdout", "holdout"


def backtest_sample(batch_starts: list, holdout_starts) -> list[str]:
    """Whether each history batch (ordered, each ending where the next starts) was trained on by the first
    model, lies in its holdout, or straddles the cut: realized metrics are out of sample only in the holdout."""
    starts = [pd.Timestamp(start) for start in batch_starts]
    cutoff = pd.Timestamp(holdout_starts)
    ends = [*starts[1:], None]
    return [
        IN_HOLDOUT if start >= cutoff else IN_TRAINING if end is not None and end <= cutoff else STRADDLES_HOLDOUT
        for start, end in zip(starts, ends, strict=True)
    ]


# ------------------------------------------------------------------------------------------------ warehouse


def check_customer_free(warehouse: Warehouse, customer: str, reuse: bool) -> None:
    """A customer id is taken while onboarded; once offboarded it may be taken again with `reuse`."""
    validate_customer_id(customer)
    known = {spec.customer for spec in customer_store.list_specs(warehouse)}
    state = status(warehouse, customer)
    if customer not in known and state is None:
        return
    current = state["status"] if state is not None else READY
    if current in IN_PROGRESS:
        raise OnboardingError(
            f"customer {customer!r} is already being onboarded ({current}): its backfills go on whenever a Dagster "
            "daemon runs for this home (`dagster dev`, or another `onboard --wait`); `retrain-platform status` "
            "follows it"
        )
    if current != OFFBOARDED:
        raise OnboardingError(f"customer {customer!r} is already onboarded ({current}); offboard it first")
    if not reuse:
        raise OnboardingError(
            f"customer {customer!r} was offboarded; its data, models and ledger are kept: pass --reuse to onboard "
            "the same id again"
        )


def load_history(warehouse: Warehouse, prepared: PreparedHistory, now: datetime, save_spec: bool = True) -> str | None:
    """Write the history as the customer's landing table and save its spec (unless `save_spec` is false: the
    caller saves it once the rest of the registration is done). A landing table left by an earlier onboarding
    of the same id is renamed, not dropped; its new name is returned."""
    spec = prepared.spec
    table = spec.landing_table
    for other in customer_store.list_specs(warehouse):
        if other.customer != spec.customer and other.landing_table == table:
            raise OnboardingError(f"landing table {table!r} already belongs to customer {other.customer!r}")
    archived = None
    if warehouse.table_exists(table):
        archived = f"{table}__until_{now:%Y%m%d%H%M%S}"
        warehouse.execute(f"alter table {quote(table)} rename to {quote(archived)}")
    warehouse.write(table, prepared.history)
    if save_spec:
        customer_store.save_spec(warehouse, spec)
    return archived


def record(warehouse: Warehouse, customer: str, state: str, now: datetime, **fields) -> None:
    """Move a customer's onboarding to `state`, keeping what earlier steps recorded."""
    previous = status(warehouse, customer) or {}
    row = {
        "customer": customer,
        "status": state,
        "mode": fields.get("mode", previous.get("mode")),
        "source": fields.get("source", previous.get("source")),
        "rows": fields.get("rows", previous.get("rows")),
        "labelled_rows": fields.get("labelled_rows", previous.get("labelled_rows")),
        "batches": fields.get("batches", previous.get("batches")),
        "batch_period": fields.get("batch_period", previous.get("batch_period")),
        "requested_at": fields.get("requested_at", previous.get("requested_at", now)),
        "updated_at": now,
        "message": fields.get("message", ""),
    }
    frame = pd.DataFrame([row]).astype(
        {
            "customer": "string",
            "status": "string",
            "mode": "string",
            "source": "string",
            "batch_period": "string",
            "message": "string",
            "rows": "Int64",
            "labelled_rows": "Int64",
            "batches": "Int64",
        }
    )
    frame["requested_at"] = pd.to_datetime(frame["requested_at"])
    frame["updated_at"] = pd.to_datetime(frame["updated_at"])
    warehouse.write(ONBOARDING_TABLE, frame, replace_where={"customer": customer})


def status(warehouse: Warehouse, customer: str) -> dict | None:
    if not warehouse.table_exists(ONBOARDING_TABLE):
        return None
    rows = warehouse.query(f'select * from {quote(ONBOARDING_TABLE)} where "customer" = ?', [customer])
    if rows.empty:
        return None
    return {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in rows.iloc[0].to_dict().items()}


def all_statuses(warehouse: Warehouse) -> pd.DataFrame:
    if not warehouse.table_exists(ONBOARDING_TABLE):
        return pd.DataFrame(columns=["customer", "status"])
    return warehouse.query(f"select * from {quote(ONBOARDING_TABLE)} order by customer")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
