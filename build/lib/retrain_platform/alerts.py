"""Alerts: what a person should look at, kept in the warehouse's `alerts` table and optionally posted to a
webhook (Slack, Teams, an incident tool).

A webhook that is down never stops the platform: the alert is already in the table, and the failure is
reported to the caller's log.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime

import pandas as pd

from retrain_platform.warehouse import Warehouse, quote

ALERTS_TABLE = "alerts"
ALERT_COLUMNS = ["recorded_at", "customer", "kind", "message", "dagster_run_id"]

DRIFT = "drift"
PERFORMANCE = "performance"
NEW_LABELS = "new_labels"
RUN_FAILURE = "run_failure"
REJECTED = "rejected"
AWAITING_APPROVAL = "awaiting_approval"
CHALLENGER_READY = "challenger_ready"
ROLLBACK = "rollback"
ONBOARDED = "onboarded"
ONBOARDING_FAILED = "onboarding_failed"

WEBHOOK_TIMEOUT_SECONDS = 5.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    recorded_at: datetime
    customer: str | None
    kind: str
    message: str
    dagster_run_id: str | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "recorded_at": self.recorded_at.isoformat(), "text": self.text}

    @property
    def text(self) -> str:
        """One line for a chat channel or a log."""
        return f"[retrain-platform] {self.kind}" + (f" {self.customer}" if self.customer else "") + f": {self.message}"


def record(
    warehouse: Warehouse,
    alert: Alert,
    webhook_url: str | None = None,
    timeout: float = WEBHOOK_TIMEOUT_SECONDS,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> bool:
    """Append the alert to the alerts table, log it, and post it to the webhook when one is configured.

    Returns whether the webhook accepted it (False when there is none or it failed)."""
    log = log or logger
    row = pd.DataFrame([asdict(alert)])[ALERT_COLUMNS]
    for column in ALERT_COLUMNS[1:]:
        row[column] = row[column].astype("string")
    row["recorded_at"] = pd.to_datetime(row["recorded_at"])
    warehouse.write(ALERTS_TABLE, row)
    log.warning(alert.text)
    if not webhook_url:
        return False
    try:
        post(webhook_url, alert, timeout)
    except Exception as error:  # the alert is stored; a broken webhook must not fail a run or a sensor
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.error(f"alert webhook {webhook_url} failed: {reason}")
        return False
    return True


def post(url: str, alert: Alert, timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
    """POST the alert as JSON; raises on a network error or a non-2xx answer."""
    body = json.dumps(alert.to_json()).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


def history(warehouse: Warehouse, customer: str | None = None, kind: str | None = None) -> pd.DataFrame:
    """Alerts, oldest first, optionally for one customer and of one kind."""
    if not warehouse.table_exists(ALERTS_TABLE):
        return pd.DataFrame(columns=ALERT_COLUMNS)
    clauses, params = [], []
    for column, value in (("customer", customer), ("kind", kind)):
        if value is not None:
            clauses.append(f"{quote(column)} = ?")
            params.append(value)
    where = f" where {' and '.join(clauses)}" if clauses else ""
    frame = warehouse.query(f"select * from {quote(ALERTS_TABLE)}{where}", params)
    # A stable sort keeps alerts raised at the same (frozen) instant in the order they were raised.
    return frame.sort_values("recorded_at", kind="stable").reset_index(drop=True)
