"""Batch states: which of a customer's batches are quarantined, released or dropped, and why.

A batch whose rows fail the inference batch's blocking checks (an infinity, a future timestamp, a category
never seen) is quarantined: its rows stay in the landing table, where a person can look at them, but the
training snapshot, drift and metrics leave them out, so one bad file cannot stop a customer's retraining.
A person then corrects the batch (`ingest --replace`, after which a passing check clears the quarantine),
releases it once its rows pass the checks, or drops it with its predictions, drift statistics and metrics.

`batch_states` is append-only: every quarantine, release and drop is a row naming the rule and column, when
and by whom; a batch's state is its latest row. Nothing here knows about Dagster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum

import pandas as pd

from retrain_platform import monitoring, quality
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import Warehouse, quote

BATCH_STATES_TABLE = "batch_states"
STATE_COLUMNS = ["recorded_at", "customer", "batch_id", "state", "rule", "column", "detail", "by"]
# Alert kinds for what a person did to a batch (the alerts table keeps them with the other events).
BATCH_DROPPED = "batch_dropped"
BATCH_RELEASED = "batch_released"


class BatchState(StrEnum):
    OK = "ok"
    QUARANTINED = "quarantined"
    DROPPED = "dropped"
    # Stored but never measured: monitoring has not run (`ingest --no-monitor`), or did not finish.
    UNMEASURED = "unmeasured"


class BatchError(ValueError):
    """A batch action that cannot be done; the message says why and what to do instead."""


@dataclass(frozen=True)
class BatchRecord:
    recorded_at: datetime
    customer: str
    batch_id: str
    state: str
    rule: str | None = None
    column: str | None = None
    detail: str | None = None
    by: str | None = None
    rows: int = 0


def quarantine(
    warehouse: Warehouse, customer: str, batch_id: str, result: quality.QualityResult, now: datetime, by: str
) -> BatchRecord:
    """Mark a batch quarantined by the first rule it fails, and forget whatever was measured on it: its
    predictions, drift statistics and metrics would describe rows that training and the sensors leave out."""
    failure = result.failures[0] if result.failures else None
    previous = state_of(warehouse, customer, batch_id)
    record = BatchRecord(
        recorded_at=now,
        customer=customer,
        batch_id=batch_id,
        state=BatchState.QUARANTINED,
        rule=failure.rule if failure else None,
        column=failure.column if failure else None,
        detail=failure.message if failure else result.summary(),
        by=by,
    )
    # Checked again (a re-run, the daily schedule) and failing the same way: one record is enough.
    same = previous is not None and [previous[k] for k in ("state", "rule", "column")] == [
        record.state, record.rule, record.column
    ]
    if not same:
        _append(warehouse, record)
    monitoring.forget_batch(warehouse, customer, batch_id)
    return record


def clear_quarantine(warehouse: Warehouse, customer: str, batch_ids: list[str], now: datetime, by: str) -> list[str]:
    """After the checks passed on these batches (their rows were corrected): those quarantined are ok again."""
    quarantined = set(quarantined_batches(warehouse, customer))
    cleared = [batch_id for batch_id in batch_ids if batch_id in quarantined]
    for batch_id in cleared:
        _append(warehouse, BatchRecord(now, customer, batch_id, BatchState.OK, detail="its rows pass the checks now", by=by))
    return cleared


def release(warehouse: Warehouse, spec: CustomerSpec, batch_id: str, now: datetime, by: str) -> BatchRecord:
    """Mark a quarantined batch ok again, once its rows pass the checks: the rows are checked now, so a batch that
    would poison training again stays quarantined and the error names the rule it still fails."""
    state = state_of(warehouse, spec.customer, batch_id)
    if state is None or state["state"] != BatchState.QUARANTINED:
        current = BatchState.OK if state is None else state["state"]
        raise BatchError(f"batch {batch_id!r} of {spec.customer} is not quarantined (state {current}): nothing to release")
    rows = _batch_rows(warehouse, spec, batch_id)
    if rows.empty:
        raise BatchError(f"batch {batch_id!r} of {spec.customer} has no rows left: nothing to release")
    result = quality.validate_customer_rows(rows, spec, now=pd.Timestamp(now), labels_required=False)
    if not result.success:
        failure = result.failures[0]
        where = f"column {failure.column!r}" if failure.column else "the table"
        raise BatchError(
            f"batch {batch_id!r} of {spec.customer} still fails {failure.rule} on {where} "
            f"({failure.requirement or 'see `batches`'}): correct it with `retrain-platform ingest {spec.customer} "
            f"--source FILE --batch {batch_id} --replace`, or drop it with `--drop {batch_id}`"
        )
    record = BatchRecord(
        now, spec.customer, batch_id, BatchState.OK, state["rule"], state["column"], "released: its rows pass the checks", by, len(rows)
    )
    _append(warehouse, record)
    return record


def drop(warehouse: Warehouse, spec: CustomerSpec, batch_id: str, now: datetime, by: str) -> BatchRecord:
    """Delete a batch's rows from the landing table, with its predictions, drift statistics and metrics."""
    counted = _counts(warehouse, spec)
    known = counted[counted["batch_id"] == batch_id]
    if known.empty:
        raise BatchError(f"batch {batch_id!r} of {spec.customer} has no rows: see `retrain-platform batches {spec.customer}`")
    warehouse.delete_where(spec.landing_table, {BATCH_COLUMN: batch_id})
    monitoring.forget_batch(warehouse, spec.customer, batch_id)
    state = state_of(warehouse, spec.customer, batch_id) or {}
    quarantined = state.get("state") == BatchState.QUARANTINED
    record = BatchRecord(
        now,
        spec.customer,
        batch_id,
        BatchState.DROPPED,
        state.get("rule") if quarantined else None,
        state.get("column") if quarantined else None,
        "dropped: its rows, predictions, drift statistics and metrics were deleted",
        by,
        int(known["rows"].iloc[0]),
    )
    _append(warehouse, record)
    return record


def history(warehouse: Warehouse, customer: str | None = None) -> pd.DataFrame:
    """Every recorded state change, oldest first."""
    if not warehouse.table_exists(BATCH_STATES_TABLE):
        return pd.DataFrame(columns=STATE_COLUMNS)
    sql, params = f"select * from {quote(BATCH_STATES_TABLE)}", []
    if customer is not None:
        sql += ' where "customer" = ?'
        params.append(customer)
    frame = warehouse.query(sql, params)
    return frame.sort_values("recorded_at", kind="stable").reset_index(drop=True)


def current_states(warehouse: Warehouse, customer: str | None = None) -> pd.DataFrame:
    """The latest recorded state of each batch that has one."""
    recorded = history(warehouse, customer)
    return recorded.drop_duplicates(["customer", "batch_id"], keep="last").reset_index(drop=True)


def quarantined_batches(warehouse: Warehouse, customer: str) -> list[str]:
    states = current_states(warehouse, customer)
    return sorted(str(b) for b in states.loc[states["state"] == BatchState.QUARANTINED, "batch_id"])


def quarantined_counts(warehouse: Warehouse) -> dict[str, int]:
    """Per customer with any, how many of its batches are quarantined."""
    states = current_states(warehouse)
    counts = states.loc[states["state"] == BatchState.QUARANTINED, "customer"].value_counts()
    return {str(customer): int(n) for customer, n in counts.items()}


def usable_rows(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    """The customer's landing rows without those of quarantined batches: what training may use."""
    from retrain_platform import customers as customer_store

    quarantined = quarantined_batches(warehouse, spec.customer)
    if not quarantined or BATCH_COLUMN not in warehouse.columns(spec.landing_table):
        return customer_store.load_landing(warehouse, spec)
    marks = ", ".join("?" for _ in quarantined)
    batch = quote(BATCH_COLUMN)
    return warehouse.query(
        f"select * from {quote(spec.landing_table)} where {batch} is null or {batch} not in ({marks})", quarantined
    )


def list_batches(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    """One row per batch, oldest first: rows, labelled rows, time range, state and the rule that quarantined it.
    A dropped batch stays listed with no rows."""
    columns = ["batch_id", "rows", "labelled_rows", "first", "last", "state", "rule", "column", "detail", "by"]
    counted = _counts(warehouse, spec)
    states = current_states(warehouse, spec.customer).set_index("batch_id")
    measured = _measured(warehouse, spec.customer)
    rows = []
    for batch in counted.itertuples(index=False):
        state = states.loc[batch.batch_id] if batch.batch_id in states.index else None
        recorded = None if state is None else state["state"]
        if recorded == BatchState.QUARANTINED:
            shown = BatchState.QUARANTINED
        else:
            # A dropped id that holds rows again was ingested anew: it stands as its monitoring left it.
            shown = BatchState.OK if batch.batch_id in measured else BatchState.UNMEASURED
        quarantined = shown == BatchState.QUARANTINED
        rows.append(
            {
                "batch_id": batch.batch_id,
                "rows": int(batch.rows),
                "labelled_rows": int(batch.labelled_rows),
                "first": batch.first,
                "last": batch.last,
                "state": str(shown),
                "rule": _text(state["rule"]) if quarantined else None,
                "column": _text(state["column"]) if quarantined else None,
                "detail": _text(state["detail"]) if quarantined else None,
                "by": _text(state["by"]) if state is not None else None,
            }
        )
    present = set(counted["batch_id"])
    for batch_id, state in states.iterrows():
        if batch_id not in present and state["state"] == BatchState.DROPPED:
            rows.append(
                {
                    "batch_id": batch_id, "rows": 0, "labelled_rows": 0, "first": None, "last": None,
                    "state": str(BatchState.DROPPED), "rule": _text(state["rule"]), "column": _text(state["column"]),
                    "detail": _text(state["detail"]), "by": _text(state["by"]),
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _counts(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    empty = pd.DataFrame(columns=["batch_id", "rows", "labelled_rows", "first", "last"])
    table = spec.landing_table
    if not warehouse.table_exists(table) or BATCH_COLUMN not in warehouse.columns(table):
        return empty
    timestamp = quote(spec.timestamp_column)
    frame = warehouse.query(
        f'select {quote(BATCH_COLUMN)} as "batch_id", count(*) as "rows", count({quote(spec.label_column)}) as '
        f'"labelled_rows", min({timestamp}) as "first", max({timestamp}) as "last" from {quote(table)} '
        f"where {quote(BATCH_COLUMN)} is not null group by 1 order by 4, 1"
    )
    frame["batch_id"] = frame["batch_id"].astype(str)
    return frame


def _measured(warehouse: Warehouse, customer: str) -> set[str]:
    if not warehouse.table_exists(monitoring.DRIFT_BATCHES_TABLE):
        return set()
    frame = warehouse.query(
        f'select "batch_id" from {quote(monitoring.DRIFT_BATCHES_TABLE)} where "customer" = ?', [customer]
    )
    return {str(b) for b in frame["batch_id"]}


def _batch_rows(warehouse: Warehouse, spec: CustomerSpec, batch_id: str) -> pd.DataFrame:
    return warehouse.query(f"select * from {quote(spec.landing_table)} where {quote(BATCH_COLUMN)} = ?", [batch_id])


def state_of(warehouse: Warehouse, customer: str, batch_id: str) -> dict | None:
    """The batch's latest recorded state (state, rule, column, detail, by, ...), or None if none was recorded."""
    states = current_states(warehouse, customer)
    mine = states[states["batch_id"] == batch_id]
    return None if mine.empty else {k: _text(v) for k, v in mine.iloc[-1].to_dict().items()}


def _append(warehouse: Warehouse, record: BatchRecord) -> None:
    row = pd.DataFrame([asdict(record)])[STATE_COLUMNS]
    # Declared types keep an all-None column from being created untyped.
    for column in STATE_COLUMNS[1:]:
        row[column] = row[column].astype("string")
    row["recorded_at"] = pd.to_datetime(row["recorded_at"])
    warehouse.write(BATCH_STATES_TABLE, row)


def _text(value) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)
