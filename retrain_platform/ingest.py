"""Ingest a batch of rows, or of late labels, into a customer's landing table.

A file is checked against the customer's spec before anything is written: a file that does not match is
refused with a message naming the column and the problem, and the landing table is left as it was. Rows
whose id is already stored are never inserted twice; their labels, when the file carries them, are merged
in (the expert-labelling loop: labels people add later are used). A batch id names one file's rows: given
again with the same file it completes an interrupted ingest, given with another file it is refused unless
the batch is replaced.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from retrain_platform import labelling
from retrain_platform.spec import CustomerSpec, case_collision, case_collision_message, class_value, class_values, plain
from retrain_platform.warehouse import Warehouse, quote

BATCH_COLUMN = "batch_id"
HISTORY_BATCH = "history"
# Batch ids of an onboarded history ("history-2024-03"): a backtest of the first model, never a retraining trigger.
HISTORY_PREFIX = f"{HISTORY_BATCH}-"
BATCH_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
BATCH_SEPARATOR = "."
# Columns the platform adds to a customer's rows, and where: a column of the file with such a name would be lost.
PLATFORM_COLUMNS = {
    BATCH_COLUMN: "the batch id of every stored row",
    "customer": "the customer id of the training snapshot",
}
# Numeric timestamps are read by their size: (unit, name, smallest value), each unit's values falling between
# 1973 and 5138. Smaller numbers (a 20240315 date, a row number) are no epoch timestamp in any unit.
EPOCH_UNITS = (
    ("s", "seconds", 1e8),
    ("ms", "milliseconds", 1e11),
    ("us", "microseconds", 1e14),
    ("ns", "nanoseconds", 1e17),
)
# datetime64[ns] ends in 2262: int64 nanoseconds.
LATEST_EPOCH_NANOSECONDS = 2**63 - 1
NUMBER_PATTERN = r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?"
SHOWN_VALUES = 5
# Where a home keeps the lock files that serialise each customer's ingests.
LOCK_FOLDER = "logs"


class IngestError(ValueError):
    """A file that does not match the spec; nothing has been written."""


@dataclass
class IngestSummary:
    customer: str
    batch_id: str
    new_rows: int
    labels_merged: int
    ignored_columns: list[str] = field(default_factory=list)
    batches_with_new_labels: list[str] = field(default_factory=list)
    # Rows the batch held before this file (a re-run completing an interrupted ingest), rows `replace` removed,
    # and rows the batch holds now.
    stored_before: int = 0
    replaced_rows: int = 0
    batch_rows: int = 0


def batch_partition_key(customer: str, batch_id: str) -> str:
    """Customer ids and batch ids never contain a dot, so the key splits back unambiguously."""
    return f"{customer}{BATCH_SEPARATOR}{batch_id}"


def split_batch_partition_key(key: str) -> tuple[str, str]:
    customer, _, batch_id = key.partition(BATCH_SEPARATOR)
    if not batch_id:
        raise ValueError(f"batch partition key {key!r} is not of the form <customer>.<batch>")
    return customer, batch_id


def validate_batch_id(batch_id: str) -> str:
    if not BATCH_ID_PATTERN.match(batch_id or ""):
        raise IngestError(f"invalid batch id {batch_id!r}: use 1 to 63 characters from a-z, 0-9, '_' and '-'")
    return batch_id


def is_history_batch(batch_id: str) -> bool:
    return batch_id == HISTORY_BATCH or batch_id.startswith(HISTORY_PREFIX)


def new_batch_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("b%Y%m%d-%H%M%S-%f")


def read_source(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise IngestError(f"source {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise IngestError(f"source {path}: only .csv and .parquet files are read")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
            repeated = _repeated_header_names(path)
        else:
            frame, repeated = pd.read_parquet(path), []
    except (ValueError, OSError) as error:
        raise IngestError(f"source {path} could not be read: {str(error).splitlines()[0]}") from None
    if repeated:
        raise IngestError(f"column {repeated[0]!r} appears more than once in the header of {path}: rename one of them")
    return frame


def _repeated_header_names(path: Path) -> list[str]:
    # pandas renames a repeated name ("plan", "plan.1") without a word, which hides that two columns collide.
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as file:
        header = next(csv.reader(file), [])
    return sorted({name for name in header if header.count(name) > 1})


def check_column_names(columns) -> None:
    """Refuse columns the warehouse cannot keep apart: two names differing only by case."""
    collision = case_collision(map(str, columns))
    if collision:
        raise IngestError(case_collision_message(*collision))


def parse_timestamps(raw: pd.Series, column: str) -> pd.Series:
    """Timestamps as naive UTC: text and datetimes as they say, numbers as epoch time in the unit their size
    tells (seconds, milliseconds, microseconds or nanoseconds since 1970). Raise `IngestError` naming the
    column when a value is missing or cannot be read."""
    if raw.isna().any():
        raise IngestError(f"column {column!r}: {int(raw.isna().sum())} timestamp(s) missing")
    if pd.api.types.is_bool_dtype(raw):
        raise IngestError(f"column {column!r}: true/false values are not timestamps")
    if raw.dtype == object and raw.astype(str).str.fullmatch(NUMBER_PATTERN).all():
        raw = pd.to_numeric(raw)
    if pd.api.types.is_numeric_dtype(raw):
        parsed = _epoch_timestamps(raw, column)
    elif raw.dtype == object:
        # utc=True folds mixed offsets (a week across a daylight-saving change) into one naive-UTC column.
        parsed = pd.to_datetime(raw, errors="coerce", format="mixed", utc=True)
    else:
        try:
            parsed = pd.to_datetime(raw, errors="coerce", utc=True)
        except (TypeError, ValueError):
            parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    bad = parsed.isna()
    if bad.any():
        raise IngestError(
            f"column {column!r}: {int(bad.sum())} timestamp(s) unparseable, e.g. {plain(raw[bad].iloc[0])!r}"
        )
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed


def _epoch_timestamps(raw: pd.Series, column: str) -> pd.Series:
    names = {unit: name for unit, name, _ in EPOCH_UNITS}
    values = raw.astype("float64")
    size = values.abs()
    if not np.isfinite(size).all():
        example = plain(raw[~np.isfinite(size)].iloc[0])
        raise IngestError(f"column {column!r}: {example!r} is not a timestamp")
    too_small = size < EPOCH_UNITS[0][2]
    if too_small.any():
        example = plain(raw[too_small].iloc[0])
        raise IngestError(
            f"column {column!r}: {example!r} is too small for a timestamp in seconds, milliseconds, microseconds or "
            "nanoseconds since 1970: write dates as text (2024-03-15 08:00) or as epoch time"
        )
    units = pd.Series(EPOCH_UNITS[0][0], index=raw.index)
    for unit, _, low in EPOCH_UNITS[1:]:
        units[size >= low] = unit
    if units.nunique() > 1:
        examples = [f"{plain(raw[units == unit].iloc[0])!r} reads as {names[unit]}" for unit in units.unique()[:2]]
        raise IngestError(
            f"column {column!r}: numeric timestamps in several units ({' and '.join(examples)} since 1970): "
            "give every timestamp in one unit"
        )
    unit = units.iloc[0]
    latest = plain(raw.iloc[int(size.argmax())])
    too_late = IngestError(
        f"column {column!r}: {latest!r} in {names[unit]} since 1970 is after "
        "2262-04-11, the latest timestamp the platform stores"
    )
    if size.max() * pd.Timedelta(1, unit).value >= LATEST_EPOCH_NANOSECONDS:
        raise too_late
    whole = values.round()
    # Whole numbers convert exactly as integers; a float would lose the last digits of nanoseconds.
    numbers = whole.astype("int64") if bool((whole == values).all()) else values
    try:
        return pd.to_datetime(numbers, unit=unit, utc=True)
    except (OverflowError, ValueError):
        raise too_late from None


def known_classes(warehouse: Warehouse, spec: CustomerSpec) -> list | None:
    """The classes a classification customer's labels may take: the spec's, or for a spec saved before the
    spec recorded them, those of the labels already stored. None for regression."""
    if spec.task == "regression":
        return None
    if spec.label_values:
        return list(spec.label_values)
    if not warehouse.table_exists(spec.landing_table) or spec.label_column not in warehouse.columns(spec.landing_table):
        return None
    label = quote(spec.label_column)
    stored = warehouse.query(
        f'select distinct {label} as "label" from {quote(spec.landing_table)} where {label} is not null'
    )
    return class_values(stored["label"]) or None


def check_labels(frame: pd.DataFrame, spec: CustomerSpec, classes: list | None) -> None:
    """Refuse a file whose labels fall outside the customer's classes: a stray class would silently change the
    task of the next training (a binary model becomes a three-class one)."""
    if not classes or spec.label_column not in frame:
        return
    allowed = {class_value(value) for value in classes}
    as_text = all(isinstance(value, str) for value in allowed)
    outside = []
    for value in frame[spec.label_column].dropna().unique():
        plain = class_value(value)
        if as_text:
            plain = str(plain)
        elif isinstance(plain, str):
            number = pd.to_numeric(pd.Series([plain]), errors="coerce").iloc[0]
            plain = plain if pd.isna(number) else class_value(number)
        if plain not in allowed and plain not in outside:
            outside.append(plain)
    if outside:
        shown = ", ".join(repr(value) for value in outside[:SHOWN_VALUES])
        shown += ", ..." if len(outside) > SHOWN_VALUES else ""
        raise IngestError(
            f"column {spec.label_column!r}: label value(s) {shown} are not among {spec.customer}'s classes "
            f"{list(classes)}; nothing from this file was stored"
        )


def conform(frame: pd.DataFrame, spec: CustomerSpec, *, require_features: bool = True) -> pd.DataFrame:
    """Check a frame against the spec and return it with the spec's columns and types; raise `IngestError`."""
    check_column_names(frame.columns)
    required = [spec.timestamp_column, *spec.feature_names] if require_features else []
    if spec.id_column:
        required.insert(0, spec.id_column)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        near = {str(column).casefold(): column for column in frame.columns}.get(missing[0].casefold())
        hint = f"; the file has {near!r}, which differs only by case" if near is not None else ""
        raise IngestError(f"column {missing[0]!r}: missing from the file (the spec needs {missing}){hint}")
    if frame.empty:
        raise IngestError("the file has no rows")
    conformed = frame.copy()
    if spec.id_column:
        ids = conformed[spec.id_column]
        if ids.isna().any():
            raise IngestError(f"column {spec.id_column!r}: {int(ids.isna().sum())} row(s) have no id")
        duplicated = ids[ids.duplicated()]
        if len(duplicated):
            raise IngestError(
                f"column {spec.id_column!r}: id {plain(duplicated.iloc[0])!r} appears more than once in the file"
            )
    if spec.timestamp_column in conformed:
        conformed[spec.timestamp_column] = parse_timestamps(conformed[spec.timestamp_column], spec.timestamp_column)
    for name in spec.numeric_features:
        if name not in conformed:
            continue
        raw = conformed[name]
        numbers = pd.to_numeric(raw, errors="coerce")
        bad = numbers.isna() & raw.notna()
        if bad.any():
            raise IngestError(
                f"column {name!r}: {int(bad.sum())} value(s) are not numbers (rule: numeric feature), "
                f"e.g. {raw[bad].iloc[0]!r}"
            )
        conformed[name] = numbers.astype("float64")
    if spec.label_column in conformed and spec.task == "regression":
        raw = conformed[spec.label_column]
        numbers = pd.to_numeric(raw, errors="coerce")
        bad = numbers.isna() & raw.notna()
        if bad.any():
            raise IngestError(f"column {spec.label_column!r}: {int(bad.sum())} label(s) are not numbers")
        conformed[spec.label_column] = numbers
    return conformed


def ingest(
    warehouse: Warehouse,
    spec: CustomerSpec,
    frame: pd.DataFrame,
    batch_id: str | None = None,
    *,
    replace: bool = False,
) -> IngestSummary:
    """Append a batch to the landing table and merge any labels for rows already stored.

    A batch id that already holds rows takes only the same file again, which completes an interrupted
    ingest: the rows still missing are stored and the rest are left as they are (their labels merged). A file
    that leaves some of the batch's stored rows out is another file and is refused, unless `replace`: then
    the batch's rows become the file's, in one transaction (rows stored in other batches stay there).

    Whether the batch's stored rows are all in the file is judged by id when the customer has an id column:
    an id names its row, so a re-sent file whose labels changed is still the same file and its labels are
    merged (a corrected feature value is not: that needs `replace`). Without an id column, by content: every
    stored row must match a row of the file on the timestamp, the features and the label (each file row
    matching one stored row, so repeated rows count), since nothing else tells two rows apart; a changed
    label then makes another file, and `replace` is the way to correct one.
    """
    batch_id = validate_batch_id(batch_id or new_batch_id())
    if is_history_batch(batch_id):
        raise IngestError(f"invalid batch id {batch_id!r}: ids starting with 'history' are kept for onboarded history")
    label_only = bool(spec.id_column) and set(frame.columns) <= {spec.id_column, spec.label_column}
    if replace and label_only:
        raise IngestError(
            "--replace: this file has only ids and labels, which are merged into the rows they name; "
            f"replace batch {batch_id!r} with a file of rows"
        )
    if not spec.id_column and spec.label_column in frame.columns and spec.timestamp_column not in frame.columns:
        raise IngestError(
            f"{spec.customer} has no id column, so late labels cannot find their rows: send labels with the rows, "
            "or onboard the customer with --id"
        )
    conformed = conform(frame, spec, require_features=not label_only)
    check_labels(conformed, spec, known_classes(warehouse, spec))
    known = [c for c in [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column] if c]
    ignored = [column for column in conformed.columns if column not in known]
    conformed = conformed[[column for column in known if column in conformed.columns]]
    if spec.label_column not in conformed:
        conformed[spec.label_column] = pd.Series([None] * len(conformed), dtype=object)

    table = spec.landing_table
    exists = warehouse.table_exists(table)
    if exists and BATCH_COLUMN not in warehouse.columns(table):
        warehouse.execute(f"alter table {quote(table)} add column {quote(BATCH_COLUMN)} varchar")
    if spec.id_column:
        seen, stored_before = _stored_by_id(warehouse, spec, conformed, batch_id, exists, replace, label_only)
    else:
        seen, stored_before = _stored_by_content(warehouse, spec, conformed, batch_id, exists, replace)
    if label_only and (~seen).any():
        unknown = conformed.loc[~seen, spec.id_column].iloc[0]
        raise IngestError(f"column {spec.id_column!r}: id {unknown!r} has a label but no stored row")

    late_labels = pd.DataFrame()
    if spec.id_column:
        late_labels = conformed.loc[seen & conformed[spec.label_column].notna(), [spec.id_column, spec.label_column]]
    fresh = conformed.loc[~seen].assign(**{BATCH_COLUMN: batch_id})
    replacing = replace and stored_before > 0
    if replacing and fresh.empty:
        raise IngestError(
            f"--replace: every row of this file is stored in another batch, so batch {batch_id!r} would be left "
            "empty; nothing was changed"
        )
    affected: list[str] = []
    if len(late_labels):
        affected = _merge_labels(warehouse, spec, late_labels)
        labelling.mark_labelled(warehouse, spec)
    if replacing:
        warehouse.write(table, fresh, replace_where={BATCH_COLUMN: batch_id})
    elif len(fresh):
        warehouse.write(table, fresh)
    return IngestSummary(
        customer=spec.customer,
        batch_id=batch_id,
        new_rows=len(fresh),
        labels_merged=len(late_labels),
        ignored_columns=ignored,
        batches_with_new_labels=affected,
        stored_before=0 if replacing else stored_before,
        replaced_rows=stored_before if replacing else 0,
        batch_rows=len(fresh) if replacing else stored_before + len(fresh),
    )


def _reused(batch_id: str, customer: str, rows: int) -> IngestError:
    return IngestError(
        f"batch id {batch_id!r} of {customer} already holds {rows:,} row(s) that are not in this file: give a new "
        "batch id, or add --replace to replace that batch's rows with this file's"
    )


def _stored_by_id(
    warehouse: Warehouse,
    spec: CustomerSpec,
    conformed: pd.DataFrame,
    batch_id: str,
    exists: bool,
    replace: bool,
    label_only: bool,
) -> tuple[pd.Series, int]:
    """Which rows of the file are stored already (their ids are), and how many rows the batch holds.
    Under `replace` the batch's own rows do not count as stored: they are about to be replaced."""
    ids = conformed[spec.id_column]
    if not exists:
        return pd.Series(False, index=conformed.index), 0
    table, key, batch = quote(spec.landing_table), quote(spec.id_column), quote(BATCH_COLUMN)
    held = 0
    # A label file adds no rows to its batch id: what that id holds is no concern of it.
    if not label_only:
        in_batch = warehouse.query(f'select {key} as "id" from {table} where {batch} = ?', [batch_id])["id"]
        held = len(in_batch)
        missing = int((~in_batch.isin(ids)).sum())
        if missing and not replace:
            raise _reused(batch_id, spec.customer, missing)
    if replace and held:
        stored = warehouse.query(f'select {key} as "id" from {table} where {batch} is distinct from ?', [batch_id])
    else:
        stored = warehouse.query(f'select {key} as "id" from {table}')
    return ids.isin(stored["id"]), held


def _stored_by_content(
    warehouse: Warehouse,
    spec: CustomerSpec,
    conformed: pd.DataFrame,
    batch_id: str,
    exists: bool,
    replace: bool,
) -> tuple[pd.Series, int]:
    """For a customer without ids: which rows of the file the batch already holds (row for row, by value), and
    how many rows it holds. Rows are never matched across batches: two batches may hold equal rows."""
    nothing = pd.Series(False, index=conformed.index)
    if not exists:
        return nothing, 0
    table, batch = quote(spec.landing_table), quote(BATCH_COLUMN)
    held = int(warehouse.query(f'select count(*) as "n" from {table} where {batch} = ?', [batch_id])["n"].iloc[0])
    if not held or replace:
        return nothing, held
    columns = [spec.timestamp_column, *spec.feature_names, spec.label_column]
    stored = warehouse.query(
        f"select {', '.join(quote(c) for c in columns)} from {table} where {batch} = ?", [batch_id]
    )
    remaining = Counter(_row_keys(stored, columns))
    seen = []
    for key in _row_keys(conformed, columns):
        found = remaining.get(key, 0) > 0
        if found:
            remaining[key] -= 1
        seen.append(found)
    unmatched = sum(remaining.values())
    if unmatched:
        raise _reused(batch_id, spec.customer, unmatched)
    return pd.Series(seen, index=conformed.index), held


def _row_keys(frame: pd.DataFrame, columns: list[str]) -> Iterator[tuple]:
    return zip(*(_comparable(frame[column]) for column in columns))


def _comparable(values: pd.Series) -> list:
    """Values as the file and the warehouse both give them back: timestamps to the microsecond, numbers and
    classes as plain text (a 1 read back as 1.0 next to a NULL is still 1), missing values as None."""
    if pd.api.types.is_datetime64_any_dtype(values):
        micros = values.astype("datetime64[ns]").astype("int64") // 1_000
        return [None if missing else int(value) for value, missing in zip(micros, values.isna(), strict=True)]
    return [None if pd.isna(value) else str(class_value(value)) for value in values]


@contextmanager
def ingest_lock(home: Path, customer: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the customer's ingest lock for the block: a file lock in the home, so two processes ingesting for
    one customer take turns (between checking which ids are stored and inserting the rest, no other ingest
    can insert the same rows). Re-entrant in a process: the CLI holds it while it reads the customer's spec,
    the runner again around the ingest and its monitoring. A process that dies releases it.
    `on_wait` hears once, with the lock file's path, that another ingest holds the lock."""
    path = Path(home) / LOCK_FOLDER / f"ingest-{customer}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait(str(path))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _merge_labels(warehouse: Warehouse, spec: CustomerSpec, labels: pd.DataFrame) -> list[str]:
    staging = f"staging_labels__{spec.customer}"
    landing, key, label = quote(spec.landing_table), quote(spec.id_column), quote(spec.label_column)
    # A fresh staging table each time: its label column must take this file's type (20.5 stays 20.5).
    warehouse.execute(f"drop table if exists {quote(staging)}")
    warehouse.write(staging, labels.assign(customer=spec.customer))
    affected = warehouse.query(
        f'select distinct l.{quote(BATCH_COLUMN)} as "batch_id" from {landing} l join {quote(staging)} s '
        f'on l.{key} = s.{key} where s."customer" = ?',
        [spec.customer],
    )
    warehouse.execute(
        f"update {landing} set {label} = s.{label} from {quote(staging)} s "
        f'where {landing}.{key} = s.{key} and s."customer" = ?',
        [spec.customer],
    )
    warehouse.delete_where(staging, {"customer": spec.customer})
    return sorted(str(b) for b in affected["batch_id"].dropna())


def batch_ids(warehouse: Warehouse, spec: CustomerSpec) -> list[str]:
    """Every inference batch stored for the customer, oldest first (the training history excluded)."""
    table = spec.landing_table
    if not warehouse.table_exists(table) or BATCH_COLUMN not in warehouse.columns(table):
        return []
    frame = warehouse.query(
        f'select {quote(BATCH_COLUMN)} as "batch_id", min({quote(spec.timestamp_column)}) as "first_seen" '
        f"from {quote(table)} where {quote(BATCH_COLUMN)} is not null and {quote(BATCH_COLUMN)} <> ? "
        f"group by 1 order by 2, 1",
        [HISTORY_BATCH],
    )
    return [str(b) for b in frame["batch_id"]]
