"""Warehouse-table sources: new rows that an outside loader appended to a customer's table or view become
a batch, with no file in between.

A customer whose spec names a `source_table` is read by its high-water mark: the largest value of the
`source_watermark_column` (the spec's timestamp column unless another is named) that earlier batches took.
The rows above it, up to the largest value present when the tick counted them, are ingested as one batch
through `ingest.ingest`, the path files take (same checks, same id rules), under a batch id made from the
batch's sequence number (`table-000001`, ...). Each batch made is recorded in `source_batches`: that record
is the high-water mark, kept in the warehouse so a restarted daemon or a reset sensor cursor takes no row
twice. The mark moves only after the ingest succeeded, and the batch id stays the same until it moves, so
a tick interrupted between the two completes the same batch on the next tick.

The column must grow with every load (a load time or a sequence number): a row appended later with a value
at or below the mark is never read. Nothing here knows about Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from retrain_platform.ingest import (
    IngestError,
    IngestSummary,
    ingest,
    validate_batch_id,
)
from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import Warehouse, quote

SOURCE_BATCHES_TABLE = "source_batches"
SOURCE_BATCH_PREFIX = "table-"
SOURCE_TRIGGER = "warehouse_source"
# Alert kind for appended rows the file checks refused.
SOURCE_REFUSED = "source_refused"
# The kinds of value a mark can hold, so the next tick binds it with the column's own type.
TIMESTAMP, NUMBER, TEXT = "timestamp", "number", "text"


class SourceError(ValueError):
    """A source table that cannot be read as the spec says; the message names the table or column."""


@dataclass(frozen=True)
class Watermark:
    """The largest value of the source's watermark column that a batch took, and that batch."""

    value: datetime | float | int | str
    kind: str
    batch_id: str
    sequence: int


@dataclass(frozen=True)
class PendingRows:
    """Rows above the mark, counted in the warehouse: how many, and the watermark up to which the next batch
    takes them (the largest among them, or among the first `source_batch_rows`)."""

    customer: str
    rows: int
    high: datetime | float | int | str | None


@dataclass(frozen=True)
class SourceBatch:
    """A batch made from a source table: the ingest's summary and the new mark."""

    summary: IngestSummary
    low: Watermark | None
    high: datetime | float | int | str
    source_rows: int


def watermark_column(spec: CustomerSpec) -> str:
    return spec.source_watermark_column or spec.timestamp_column


def source_batch_id(sequence: int) -> str:
    return validate_batch_id(f"{SOURCE_BATCH_PREFIX}{sequence:06d}")


def watermarks(warehouse: Warehouse, customers: list[str] | None = None) -> dict[str, Watermark]:
    """Each customer's high-water mark (its latest source batch), in one query; customers without one are absent."""
    if not warehouse.table_exists(SOURCE_BATCHES_TABLE):
        return {}
    table = quote(SOURCE_BATCHES_TABLE)
    frame = warehouse.query(
        f'select "customer", "sequence", "batch_id", "high", "kind" from {table} '
        'qualify row_number() over (partition by "customer" order by "sequence" desc) = 1'
    )
    wanted = None if customers is None else set(customers)
    return {
        str(row.customer): Watermark(_decode(row.high, row.kind), str(row.kind), str(row.batch_id), int(row.sequence))
        for row in frame.itertuples()
        if wanted is None or row.customer in wanted
    }


def pending_rows(warehouse: Warehouse, specs: list[CustomerSpec], marks: dict[str, Watermark]) -> list[PendingRows]:
    """For every customer with a source table, the rows above its mark: one query for all of them, each
    customer's count and maximum computed in the warehouse. When that query fails (a table or column gone),
    each customer is counted on its own and the one that fails raises `SourceError` naming it."""
    specs = [spec for spec in specs if spec.source_table]
    if not specs:
        return []
    parts, params = [], []
    for spec in specs:
        sql, values = _pending_sql(spec, marks.get(spec.customer))
        parts.append(sql)
        params += values
    try:
        frame = warehouse.query(" union all ".join(parts), params)
    except Exception:
        return [_pending_one(warehouse, spec, marks.get(spec.customer)) for spec in specs]
    return [_pending(row) for row in frame.itertuples()]


def _pending_sql(spec: CustomerSpec, mark: Watermark | None) -> tuple[str, list]:
    """All the rows above the mark, and the watermark of the `source_batch_rows`-th of them: the next batch
    takes the rows up to it, so a backlog is taken in bounded batches, one a tick. Rows that share that
    watermark all go into the batch: the next one starts strictly above it."""
    column, table = quote(watermark_column(spec)), quote(spec.source_table)
    above, params = ("", []) if mark is None else (f" where {column} > ?", [mark.value])
    first = f'select {column} as "mark" from {table}{above} order by {column} limit {int(spec.source_batch_rows)}'
    # The customer id travels as a literal: it matches [a-z0-9_-], so it cannot close the quote.
    return (
        f"select '{spec.customer}' as \"customer\", (select count(*) from {table}{above}) as \"rows\", "
        f'(select max("mark") from ({first}) first_rows) as "high"',
        params * 2,
    )


def _pending_one(warehouse: Warehouse, spec: CustomerSpec, mark: Watermark | None) -> PendingRows:
    sql, params = _pending_sql(spec, mark)
    try:
        frame = warehouse.query(sql, params)
    except Exception as error:
        raise SourceError(_unreadable(warehouse, spec, error)) from None
    return _pending(next(frame.itertuples()))


def _unreadable(warehouse: Warehouse, spec: CustomerSpec, error: Exception) -> str:
    if not warehouse.table_exists(spec.source_table):
        return f"{spec.customer}: source_table {spec.source_table!r} does not exist in the warehouse (or is not readable)"
    column = watermark_column(spec)
    if column not in warehouse.columns(spec.source_table):
        field = "source_watermark_column" if spec.source_watermark_column else "timestamp_column"
        return f"{spec.customer}: {field} {column!r} is not a column of source_table {spec.source_table!r}"
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{spec.customer}: source_table {spec.source_table!r} could not be read: {first}"


def _pending(row) -> PendingRows:
    # Plain Python values: the Snowflake connector binds a datetime, not a pandas Timestamp or a numpy number.
    high = None if pd.isna(row.high) else _plain(row.high)
    return PendingRows(str(row.customer), int(row.rows), high)


def ingest_pending(
    warehouse: Warehouse, spec: CustomerSpec, pending: PendingRows, mark: Watermark | None, now: datetime
) -> SourceBatch:
    """Read the rows above `mark` up to `pending.high`, ingest them as the customer's next source batch and move
    the mark. Raise `IngestError` (nothing stored, the mark unmoved) when they fail the file checks."""
    column, table = quote(watermark_column(spec)), quote(spec.source_table)
    where, params = f"{column} <= ?", [pending.high]
    if mark is not None:
        where, params = f"{column} > ? and {where}", [mark.value, *params]
    frame = warehouse.query(f"select * from {table} where {where} order by {column}", params)
    if frame.empty:
        raise IngestError(f"source_table {spec.source_table!r}: the rows counted a moment ago are gone")
    sequence = 1 if mark is None else mark.sequence + 1
    batch_id = source_batch_id(sequence)
    summary = ingest(warehouse, spec, frame, batch_id)
    high = pending.high
    _record(warehouse, spec, sequence, batch_id, mark, high, len(frame), summary.new_rows, now)
    return SourceBatch(summary=summary, low=mark, high=high, source_rows=len(frame))


def _record(warehouse, spec, sequence, batch_id, mark, high, source_rows: int, new_rows: int, now: datetime) -> None:
    kind = _kind(high)
    row = pd.DataFrame(
        {
            "customer": [spec.customer],
            "source_table": [spec.source_table],
            "sequence": [sequence],
            "batch_id": [batch_id],
            "low": pd.Series([None if mark is None else _encode(mark.value)], dtype="string"),
            "high": pd.Series([_encode(high)], dtype="string"),
            "kind": [kind],
            "source_rows": [source_rows],
            "new_rows": [new_rows],
            "recorded_at": [pd.Timestamp(now)],
        }
    )
    warehouse.write(SOURCE_BATCHES_TABLE, row)


def history(warehouse: Warehouse, customer: str) -> pd.DataFrame:
    """Every batch made from the customer's source table, oldest first."""
    if not warehouse.table_exists(SOURCE_BATCHES_TABLE):
        return pd.DataFrame()
    return warehouse.query(
        f'select * from {quote(SOURCE_BATCHES_TABLE)} where "customer" = ? order by "sequence"', [customer]
    )


def _plain(value):
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


def _kind(value) -> str:
    if isinstance(value, (datetime, pd.Timestamp)):
        return TIMESTAMP
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return NUMBER
    return TEXT


def _encode(value) -> str:
    if isinstance(value, (datetime, pd.Timestamp)):
        return pd.Timestamp(value).isoformat()
    return repr(value) if isinstance(value, (int, float)) else str(value)


def _decode(text: str, kind: str):
    if kind == TIMESTAMP:
        return pd.Timestamp(text).to_pydatetime()
    if kind == NUMBER:
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    return str(text)
