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

# What a row's `action` says happened. A training writes one of TRAINING_ACTIONS (by its verdict and the
# customer's mode); a person's or the canary's approval and a rollback move the champion too.
PROMOTE = "promote"
AWAIT_APPROVAL = "await_approval"
ALERT_ONLY = "alert"
HOLD = "hold"
REJECT = "reject"
APPROVE = "approve"
ROLLBACK = "rollback"
TRAINING_ACTIONS = (PROMOTE, AWAIT_APPROVAL, HOLD, REJECT, ALERT_ONLY)
CHAMPION_MOVES = (PROMOTE, APPROVE, ROLLBACK)
# The moves that put a new version in place (a rollback goes back to a known one).
PROMOTIONS = (PROMOTE, APPROVE)
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
    action: str  # one of TRAINING_ACTIONS, APPROVE or ROLLBACK
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
