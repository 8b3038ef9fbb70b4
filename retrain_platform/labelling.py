"""Active learning: the rows of each scored batch the model is least sure of, queued for experts to label.

While a batch is scored, the serving model's class probabilities of its unlabelled rows pass through a
`MostUncertain`, which keeps the customer's `labelling_queue_size` rows with the smallest margin between the two
most probable classes. They land in the `labelling_queue` table (customer, batch, row id, uncertainty, when
queued, when labelled). `export_rows` gives experts the open rows' features with an empty label column; the
filled file comes back as late labels through `ingest`, which calls `mark_labelled`.

A regression model has no class probabilities, and a customer without an id column cannot take late labels:
neither queues anything. Nothing here knows about Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import Warehouse, quote

LABELLING_QUEUE_TABLE = "labelling_queue"
QUEUE_COLUMNS = ["customer", "batch_id", "row_id", "uncertainty", "queued_at", "labelled_at"]


def margins(proba: np.ndarray) -> np.ndarray:
    """Per row, the probability of the most probable class minus that of the second: 0 is a coin toss, 1 is
    certainty."""
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"class probabilities must be rows x at least 2 classes, got shape {proba.shape}")
    top_two = np.partition(proba, proba.shape[1] - 2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


class MostUncertain:
    """The `size` rows of smallest margin among all the rows it was given, in bounded memory, chunk by chunk.

    Uncertainty is 1 - margin. Equal margins are ordered by row id (as text), so the rows chosen do not depend on
    how a batch was cut into chunks. Labelled rows and rows whose probabilities are not finite are never chosen."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"size: {size} rows; give 0 (nothing queued) or more")
        self.size = size
        self._ids = np.array([], dtype=str)
        self._margins = np.array([], dtype=float)

    def add(self, row_ids: Sequence, proba: np.ndarray, labelled: Sequence[bool] | None = None) -> None:
        """Consider these rows: their ids and class probabilities (one row each), and which already have a label."""
        if self.size == 0:
            return
        ids = np.asarray(row_ids).astype(str)
        found = margins(proba)
        if len(ids) != len(found):
            raise ValueError(f"{len(ids)} row ids for {len(found)} rows of probabilities")
        keep = np.isfinite(found)
        if labelled is not None:
            keep &= ~np.asarray(labelled, dtype=bool)
        ids = np.concatenate([self._ids, ids[keep]])
        found = np.concatenate([self._margins, found[keep]])
        if len(found) > self.size:
            # Only rows at or under the size-th smallest margin can be chosen: sort those, not the whole chunk.
            cut = np.partition(found, self.size - 1)[self.size - 1]
            near = found <= cut
            ids, found = ids[near], found[near]
        order = np.lexsort((ids, found))[: self.size]
        self._ids, self._margins = ids[order], found[order]

    def rows(self) -> pd.DataFrame:
        """The rows chosen, most uncertain first: `row_id` and `uncertainty` (1 - margin)."""
        return pd.DataFrame({"row_id": self._ids.astype(object), "uncertainty": 1.0 - self._margins})


def most_uncertain(row_ids: Sequence, proba: np.ndarray, size: int, labelled: Sequence[bool] | None = None) -> pd.DataFrame:
    """The `size` unlabelled rows of smallest margin, most uncertain first (see `MostUncertain`)."""
    chosen = MostUncertain(size)
    chosen.add(row_ids, proba, labelled)
    return chosen.rows()


def not_queued_reason(spec: CustomerSpec) -> str | None:
    """Why the customer's batches queue no rows, in one line, or None when they do."""
    if spec.task == "regression":
        return f"{spec.customer} is a regression task: a predicted value has no class margin to be unsure of"
    if not spec.id_column:
        return f"{spec.customer} has no id column, so labels sent later could not find their rows"
    if spec.labelling_queue_size == 0:
        return f"{spec.customer}'s spec sets labelling_queue_size to 0"
    return None


def picker_for(spec: CustomerSpec) -> MostUncertain | None:
    """What chooses a batch's rows for the queue, or None when the customer queues nothing (`not_queued_reason`)."""
    if not_queued_reason(spec) is not None:
        return None
    return MostUncertain(spec.labelling_queue_size)


def enqueue(warehouse: Warehouse, customer: str, batch_id: str, chosen: pd.DataFrame, now: datetime) -> int:
    """Put a scored batch's chosen rows in the queue, replacing the batch's open rows (a batch scored again is
    queued anew; rows already labelled stay, and are not queued twice). Returns the rows queued."""
    forget_batch(warehouse, customer, batch_id)
    if chosen.empty:
        return 0
    if warehouse.table_exists(LABELLING_QUEUE_TABLE):
        held = warehouse.query(
            f'select "row_id" from {quote(LABELLING_QUEUE_TABLE)} where "customer" = ?', [customer]
        )["row_id"]
        chosen = chosen[~chosen["row_id"].isin(set(held.astype(str)))]
    frame = pd.DataFrame(
        {
            "customer": pd.Series([customer] * len(chosen), dtype="string"),
            "batch_id": pd.Series([batch_id] * len(chosen), dtype="string"),
            "row_id": pd.Series(chosen["row_id"].to_numpy(), dtype="string"),
            "uncertainty": chosen["uncertainty"].to_numpy(dtype=float),
            "queued_at": pd.Series([pd.Timestamp(now)] * len(chosen), dtype="datetime64[us]"),
            "labelled_at": pd.Series([pd.NaT] * len(chosen), dtype="datetime64[us]"),
        }
    )
    if frame.empty:
        return 0
    warehouse.write(LABELLING_QUEUE_TABLE, frame)
    return len(frame)


def forget_batch(warehouse: Warehouse, customer: str, batch_id: str) -> None:
    """Remove a batch's open rows from the queue (its rows were replaced, dropped or quarantined); rows experts
    labelled stay as the record of their work."""
    if warehouse.table_exists(LABELLING_QUEUE_TABLE):
        warehouse.execute(
            f'delete from {quote(LABELLING_QUEUE_TABLE)} where "customer" = ? and "batch_id" = ? '
            'and "labelled_at" is null',
            [customer, batch_id],
        )


def mark_labelled(warehouse: Warehouse, spec: CustomerSpec, now: datetime | None = None) -> int:
    """Mark labelled every open queued row of the customer whose stored row has a label now; returns how many."""
    if not spec.id_column or not warehouse.table_exists(LABELLING_QUEUE_TABLE):
        return 0
    queue, landing = quote(LABELLING_QUEUE_TABLE), quote(spec.landing_table)
    labelled_ids = (
        f"select cast({quote(spec.id_column)} as varchar) from {landing} where {quote(spec.label_column)} is not null"
    )
    where = f'"customer" = ? and "labelled_at" is null and "row_id" in ({labelled_ids})'
    counted = warehouse.query(f'select count(*) as "n" from {queue} where {where}', [spec.customer])
    marked = int(counted["n"].iloc[0])
    if marked:
        now = now or datetime.now(timezone.utc).replace(tzinfo=None)
        warehouse.execute(f'update {queue} set "labelled_at" = ? where {where}', [now, spec.customer])
    return marked


def queued_rows(warehouse: Warehouse, customer: str, *, include_labelled: bool = False) -> pd.DataFrame:
    """The customer's queued rows (by default the open ones), most uncertain first."""
    if not warehouse.table_exists(LABELLING_QUEUE_TABLE):
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    still_open = "" if include_labelled else ' and "labelled_at" is null'
    return warehouse.query(
        f'select * from {quote(LABELLING_QUEUE_TABLE)} where "customer" = ?{still_open} '
        'order by "uncertainty" desc, "batch_id", "row_id"',
        [customer],
    )


def export_rows(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    """The open rows as experts fill them in: the id, timestamp and feature columns from the landing table, and
    an empty label column, most uncertain first. `ingest` takes the filled file back as late labels."""
    columns = [spec.id_column, spec.timestamp_column, *spec.feature_names]
    empty = pd.DataFrame(columns=[*columns, spec.label_column])
    if not spec.id_column or not warehouse.table_exists(LABELLING_QUEUE_TABLE):
        return empty
    selected = ", ".join(f"l.{quote(column)}" for column in columns)
    rows = warehouse.query(
        f"select {selected} from {quote(LABELLING_QUEUE_TABLE)} q join {quote(spec.landing_table)} l "
        f"on q.\"row_id\" = cast(l.{quote(spec.id_column)} as varchar) "
        'where q."customer" = ? and q."labelled_at" is null '
        'order by q."uncertainty" desc, q."batch_id", q."row_id"',
        [spec.customer],
    )
    return rows.assign(**{spec.label_column: pd.Series([None] * len(rows), dtype=object)})


def open_counts(warehouse: Warehouse) -> dict[str, int]:
    """Per customer with any, how many queued rows wait for a label."""
    if not warehouse.table_exists(LABELLING_QUEUE_TABLE):
        return {}
    counted = warehouse.query(
        f'select "customer", count(*) as "n" from {quote(LABELLING_QUEUE_TABLE)} where "labelled_at" is null group by 1'
    )
    return {str(customer): int(n) for customer, n in zip(counted["customer"], counted["n"], strict=True)}
