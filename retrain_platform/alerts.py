"""Alerts: what a person should look at, kept in the warehouse's `alerts` table and optionally posted to a
webhook (Slack, Teams, an incident tool).

A webhook that is down never stops the platform: the alert is already in the table, and the failure is
reported to the caller's log. A webhook URL is a secret (Slack and Teams keep their token in its path, others
take `https://user:password@host/...`): logs and messages name its host only, and credentials in it travel as
a Basic Authorization header, never in the URL that is requested.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.parse
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
        log.error(f"{_without_secrets(str(error), webhook_url)}; the alert is in the {ALERTS_TABLE} table")
        return False
    return True


class WebhookError(RuntimeError):
    """The webhook did not take an alert; the message names the webhook's host, nothing else of its URL."""


def webhook_host(url: str) -> str:
    """What of a webhook URL may be shown: its host and port."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(unreadable URL)"
    if not host:
        return "(no host)"
    return f"{host}:{port}" if port else host


def webhook_request(url: str, body: bytes) -> urllib.request.Request:
    """A JSON POST to the URL without its credentials; `user:password@` becomes a Basic Authorization header
    (not repeated to wherever a redirect points)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(
            f"alert webhook at {webhook_host(url)}: the URL must start with http:// or https:// and name a host"
        )
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(bare, data=body, headers={"Content-Type": "application/json"}, method="POST")
    if parts.username is not None or parts.password is not None:
        user, password = urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def post(url: str, alert: Alert, timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
    """POST the alert as JSON; raise `WebhookError` on a network error or a non-2xx answer."""
    where = f"alert webhook at {webhook_host(url)}"
    request = webhook_request(url, json.dumps(alert.to_json()).encode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        raise WebhookError(f"{where} failed: HTTP {error.code}") from None
    except urllib.error.URLError as error:
        raise WebhookError(f"{where} failed: {_without_secrets(str(error.reason), url)}") from None
    except Exception as error:  # urllib and http.client raise many kinds; none may carry the URL onwards
        reason = _without_secrets(str(error).splitlines()[0] if str(error) else type(error).__name__, url)
        raise WebhookError(f"{where} failed: {reason}") from None
    if not 200 <= status < 300:
        raise WebhookError(f"{where} failed: HTTP {status}")


def _without_secrets(text: str, url: str) -> str:
    """`text` with the URL and its password, path and query blanked, wherever a library may have put them."""
    secrets = [url]
    try:
        parts = urllib.parse.urlsplit(url)
        secrets += [parts.password, urllib.parse.unquote(parts.password or ""), parts.path, parts.query]
    except ValueError:
        pass
    for secret in sorted({s for s in secrets if s and len(s) > 1}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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
