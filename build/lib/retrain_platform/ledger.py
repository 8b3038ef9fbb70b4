"""The model ledger: an append-only record of every deployment decision.

MLflow keeps no history of where an alias pointed, so this table is how a person answers
"why did this model change?" from SQL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pandas as pd

from retrain_platform.warehouse import Warehouse, quote

LEDGER_TABLE = "model_ledger"
LEDGER_COLUMNS = [
    "recorded_at",
    "customer",
    "model_name",
    "action",
    "verdict",
    "from_version",
    "to_version",
    "champion_after",
    "reasons",
    "trigger",
    "dagster_run_id",
    "data_version",
]


@dataclass(frozen=True)
class LedgerEntry:
    customer: str
    model_name: str
    action: str  # promote | hold | reject | rollback | approve
    verdict: str
    from_version: str | None
    to_version: str | None
    champion_after: str | None
    reasons: str
    trigger: str = "manual"
    dagster_run_id: str | None = None
    data_version: str | None = None
    recorded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None))


def append(warehouse: Warehouse, entry: LedgerEntry) -> None:
    row = pd.DataFrame([asdict(entry)])[LEDGER_COLUMNS]
    # Declared types keep an all-None column from being created as an untyped column.
    for column in LEDGER_COLUMNS:
        if column != "recorded_at":
            row[column] = row[column].astype("string")
    row["recorded_at"] = pd.to_datetime(row["recorded_at"])
    warehouse.write(LEDGER_TABLE, row)


def history(warehouse: Warehouse, customer: str | None = None) -> pd.DataFrame:
    if not warehouse.table_exists(LEDGER_TABLE):
        return pd.DataFrame(columns=LEDGER_COLUMNS)
    sql = f"select * from {quote(LEDGER_TABLE)}"
    params: list[str] = []
    if customer is not None:
        sql += ' where "customer" = ?'
        params.append(customer)
    return warehouse.query(sql + ' order by "recorded_at"', params)
